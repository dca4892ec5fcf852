"""Which URLs the service may fetch scenes from: allowed hosts, and no private addresses unless listed.

A :class:`UrlPolicy` is built from ``WAGON_FETCH_ALLOWED_HOSTS``. An entry is a host name, an IP address or an IP
network. A URL is allowed when its scheme is http(s) and its host is listed (by name, or as an address inside a
listed address or network). Every address a host name resolves to must be public; an address in a private,
loopback, link-local, reserved or multicast range is reached only when that address (or its network) is listed
itself. The check is made again on every connection (:meth:`UrlPolicy.resolve`), so a name that resolves
differently later (DNS rebinding) or a redirect to another host is refused too.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from app.core.errors import InvalidInputError

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Schemes a scene may be fetched over.
SCHEMES = ("http", "https")


class UrlRefused(InvalidInputError):
    """A URL the policy does not allow (the message says why)."""


@dataclass(frozen=True)
class UrlPolicy:
    """Allowed host names and address networks (see the module docstring)."""

    names: frozenset[str]
    networks: tuple[IpNetwork, ...]

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> UrlPolicy:
        """Parse ``WAGON_FETCH_ALLOWED_HOSTS`` entries (names are compared case-insensitively)."""
        names: set[str] = set()
        networks: list[IpNetwork] = []
        for raw in entries:
            entry = raw.strip().strip("[]").lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.rstrip("."))
        return cls(frozenset(names), tuple(networks))

    @property
    def enabled(self) -> bool:
        """Whether any host is allowed at all."""
        return bool(self.names or self.networks)

    def _listed_address(self, ip: IpAddress) -> bool:
        return any(ip.version == n.version and ip in n for n in self.networks)

    def check_url(self, url: str) -> tuple[str, int]:
        """``(host, port)`` of an allowed URL; :class:`UrlRefused` naming the reason otherwise. Makes no lookup."""
        if not self.enabled:
            raise UrlRefused("scenes by URL are off: no host is allowed (WAGON_FETCH_ALLOWED_HOSTS is empty)")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise UrlRefused(f"not a valid URL: {exc}") from None
        if parts.scheme.lower() not in SCHEMES:
            raise UrlRefused(f"URL scheme {parts.scheme or '(none)'!r} is not allowed (http or https only)")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise UrlRefused("the URL has no host")
        if parts.username or parts.password:
            raise UrlRefused("URLs with credentials are not accepted")
        try:
            ip: IpAddress | None = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        allowed = self._listed_address(ip) if ip is not None else host in self.names
        if not allowed:
            raise UrlRefused(f"host {host!r} is not allowed (WAGON_FETCH_ALLOWED_HOSTS)")
        return host, port or (443 if parts.scheme.lower() == "https" else 80)

    def check_address(self, host: str, ip: IpAddress) -> None:
        """:class:`UrlRefused` unless ``ip`` (an address of ``host``) may be reached."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self._listed_address(ip):
            return
        if not ip.is_global or ip.is_multicast:
            kind = (
                "loopback"
                if ip.is_loopback
                else "link-local"
                if ip.is_link_local
                else "private"
                if ip.is_private
                else "non-public"
            )
            raise UrlRefused(
                f"host {host!r} resolves to {ip}, a {kind} address; such addresses are reached only when listed "
                "themselves in WAGON_FETCH_ALLOWED_HOSTS"
            )

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host`` that may be connected to (all of them must pass :meth:`check_address`)."""
        try:
            literal: IpAddress | None = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            self.check_address(host, literal)
            return [str(literal)]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise UrlRefused(f"host {host!r} cannot be resolved: {exc}") from None
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not addresses:
            raise UrlRefused(f"host {host!r} has no address")
        for address in addresses:
            self.check_address(host, ipaddress.ip_address(address.split("%")[0]))
        return addresses

    def check(self, url: str) -> None:
        """:meth:`check_url`, then :meth:`resolve` (a DNS lookup)."""
        self.resolve(*self.check_url(url))
