"""A file on an HTTP server read by range requests, safely: the one way the service reads a scene by URL.

GDAL never opens the URL itself: :class:`RemoteFile` hands it a Python file object (rasterio's ``opener``) whose
reads become ``Range`` requests made here, with httpx. So every connection goes through :class:`UrlPolicy`
(allowed hosts; private, loopback and link-local addresses refused unless listed; checked again at connect time,
after the name is resolved), redirects are followed only to allowed hosts, timeouts are bounded, requests
answered 5xx or dropped are retried with backoff, and the bytes read are counted and capped. Reads are cached in
aligned blocks (bounded), so GDAL's many small header reads cost one request.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

import httpcore
import httpx

from app.core.errors import ServiceError
from app.core.url_policy import UrlPolicy, UrlRefused

log = logging.getLogger(__name__)

#: Redirects followed (each to an allowed host) before giving up.
MAX_REDIRECTS = 5
#: Size of the aligned blocks read and cached.
BLOCK_BYTES = 256 * 1024
#: Most bytes of blocks kept in the cache.
CACHE_BYTES = 64 * 1024 * 1024
#: First backoff pause between retries, seconds (doubled at each retry).
BACKOFF_S = 0.5


class FetchError(ServiceError):
    """A scene could not be fetched; ``status`` is the HTTP status that best says why (404, 413, 422, 502, 504)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves each host itself and connects only to addresses the policy allows."""

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in self.policy.resolve(host, port):
            try:
                return self._inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None  # resolve returns at least one address
        raise last

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> Any:
        raise httpcore.ConnectError("unix sockets are not used for scenes")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's transport with the guarded network backend (no proxies from the environment)."""

    def __init__(self, policy: UrlPolicy) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=4,
            network_backend=_GuardedBackend(policy),
        )


def guarded_client(policy: UrlPolicy, connect_timeout_s: float, read_timeout_s: float) -> httpx.Client:
    """An httpx client that connects only where ``policy`` allows and never follows redirects by itself."""
    timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
    return httpx.Client(transport=_GuardedTransport(policy), timeout=timeout, follow_redirects=False, trust_env=False)


def send_checked(
    client: httpx.Client, policy: UrlPolicy, url: str, headers: dict[str, str] | None = None
) -> tuple[httpx.Response, str]:
    """GET ``url`` (streamed), following redirects only to allowed hosts; return the response and its final URL."""
    for _ in range(MAX_REDIRECTS + 1):
        policy.check_url(url)
        response = client.send(client.build_request("GET", url, headers=headers), stream=True)
        if not response.is_redirect:
            return response, url
        location = response.headers.get("location", "")
        response.close()
        target = urljoin(url, location)
        try:
            policy.check_url(target)
        except UrlRefused as exc:
            raise UrlRefused(f"{url} redirects to {target}, which is refused: {exc}") from None
        url = target
    raise FetchError(f"more than {MAX_REDIRECTS} redirects from {url}", 422)


def describe(exc: BaseException, url: str, read_timeout_s: float) -> FetchError:
    """A :class:`FetchError` saying what went wrong talking to the server."""
    if isinstance(exc, FetchError):
        return exc
    if isinstance(exc, httpx.ConnectTimeout):
        return FetchError(f"connecting to the server of {url} timed out", 504)
    if isinstance(exc, httpx.TimeoutException):
        return FetchError(f"the server of {url} sent nothing for {read_timeout_s:g} s (read timeout)", 504)
    if isinstance(exc, httpx.ConnectError):
        return FetchError(f"the server of {url} cannot be reached: {exc}", 502)
    return FetchError(f"the connection to the server of {url} failed: {type(exc).__name__}: {exc}", 502)


#: Transport errors worth another try (a dropped connection).
RETRIED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError)


class RemoteFile:
    """A remote file read by ``Range`` requests (see the module docstring); one per scene, shared by its opens.

    :meth:`open` makes the first request (following redirects, learning the size and ``ETag``); :meth:`read`
    reads any byte range. ``bytes_read`` counts the body bytes received; more than ``max_bytes`` (or a file larger)
    is refused. ``failure`` keeps the last error, for GDAL swallows the exceptions of its file objects."""

    def __init__(
        self,
        url: str,
        policy: UrlPolicy,
        *,
        max_bytes: int,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 30.0,
        retries: int = 3,
        block_bytes: int = BLOCK_BYTES,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.url = url
        self.final_url = url
        self.policy = policy
        self.max_bytes = max_bytes
        self.read_timeout_s = read_timeout_s
        self.retries = retries
        self.block = block_bytes
        self.cache_blocks = max(4, cache_bytes // block_bytes)
        self.size = 0
        self.etag: str | None = None
        self.bytes_read = 0
        self.requests = 0
        self.failure: FetchError | UrlRefused | None = None
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._client = guarded_client(policy, connect_timeout_s, read_timeout_s)

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def __enter__(self) -> RemoteFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------------- requests

    def _get(self, start: int, end: int) -> tuple[int, httpx.Headers, bytes]:
        """``GET`` bytes ``start..end`` (inclusive) with retries; (status, headers, body)."""
        headers = {"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"}
        for attempt in range(self.retries + 1):
            try:
                response, final = send_checked(self._client, self.policy, self.final_url, headers)
                try:
                    self.requests += 1
                    if response.status_code >= 500 and attempt < self.retries:
                        log.warning("scene %s: %d, trying again", self.final_url, response.status_code)
                    elif response.status_code >= 400:
                        return response.status_code, response.headers, b""
                    else:
                        body = bytearray()
                        for chunk in response.iter_bytes():
                            body += chunk
                            self._count(len(chunk))
                            if len(body) > end - start + 1:  # a server ignoring Range: enough to tell
                                break
                        self.final_url = final
                        return response.status_code, response.headers, bytes(body)
                finally:
                    response.close()
            except RETRIED as exc:
                if attempt == self.retries:
                    raise describe(exc, self.url, self.read_timeout_s) from None
                log.warning("scene %s: %s, trying again", self.final_url, type(exc).__name__)
            except httpx.HTTPError as exc:
                raise describe(exc, self.url, self.read_timeout_s) from None
            time.sleep(BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")

    def _count(self, n: int) -> None:
        self.bytes_read += n
        if self.bytes_read > self.max_bytes:
            raise FetchError(
                f"reading {self.url} took more than {self.max_bytes / 1048576:.1f} MiB (WAGON_FETCH_MAX_MB)", 413
            )

    def _refuse_status(self, status: int) -> FetchError:
        if status == 404:
            return FetchError(f"the server answered 404 Not Found for {self.url}", 404)
        if status >= 500:
            return FetchError(f"the server answered {status} for {self.url} ({self.retries + 1} tries)", 502)
        return FetchError(f"the server answered {status} for {self.url}", 422)

    def open(self) -> RemoteFile:
        """Make the first request: size, ``ETag`` and the first block (:class:`FetchError` naming the cause)."""
        try:
            status, headers, body = self._get(0, self.block - 1)
            if status == 416:
                raise FetchError(f"{self.url} is empty", 422)
            if status >= 400:
                raise self._refuse_status(status)
            if status == 200:  # the server ignores Range: fine only if the whole file came in the first block
                if len(body) > self.block or int(headers.get("content-length", len(body))) != len(body):
                    raise FetchError(f"the server of {self.url} does not answer HTTP range requests", 422)
                self.size = len(body)
            else:
                total = headers.get("content-range", "").rpartition("/")[2]
                if not total.isdigit():
                    raise FetchError(f"the server of {self.url} does not say the file's size (Content-Range)", 422)
                self.size = int(total)
            if self.size > self.max_bytes:
                raise FetchError(
                    f"{self.url} is {self.size / 1048576:.1f} MiB, more than the {self.max_bytes / 1048576:.1f} MiB "
                    "allowed (WAGON_FETCH_MAX_MB)",
                    413,
                )
            if self.size == 0:
                raise FetchError(f"{self.url} is empty", 422)
            self.etag = headers.get("etag")
            self._store(0, body)
        except (FetchError, UrlRefused) as exc:
            self.failure = exc
            raise
        return self

    def _store(self, start: int, body: bytes) -> None:
        for i in range(0, len(body), self.block):
            self._cache[(start + i) // self.block] = body[i : i + self.block]
        while len(self._cache) > self.cache_blocks:
            self._cache.popitem(last=False)

    def read(self, offset: int, n: int) -> bytes:
        """Bytes ``offset .. offset + n`` (fewer at the end of the file); :class:`FetchError` on failure."""
        if offset >= self.size or n <= 0:
            return b""
        end = min(self.size, offset + n)
        first, last = offset // self.block, (end - 1) // self.block
        with self._lock:
            try:
                missing = [b for b in range(first, last + 1) if b not in self._cache]
                if missing:
                    lo, hi = missing[0] * self.block, min(self.size, (missing[-1] + 1) * self.block) - 1
                    status, headers, body = self._get(lo, hi)
                    if status >= 400:
                        raise self._refuse_status(status)
                    if status != 206 or not headers.get("content-range", "").startswith(f"bytes {lo}-"):
                        raise FetchError(f"the server of {self.url} does not answer HTTP range requests", 422)
                    if len(body) < hi - lo + 1:
                        raise FetchError(
                            f"the server of {self.url} sent {len(body)} of {hi - lo + 1} bytes asked for (truncated)",
                            502,
                        )
                    self._store(lo, body[: hi - lo + 1])
                parts = [self._cache[b] for b in range(first, last + 1)]
                for b in range(first, last + 1):
                    self._cache.move_to_end(b)
            except (FetchError, UrlRefused) as exc:
                self.failure = exc
                raise
        data = b"".join(parts)
        skip = offset - first * self.block
        return data[skip : skip + (end - offset)]

    # ---------------------------------------------------------------------------------------------- GDAL

    def file(self) -> RangeFile:
        """A new seekable file object over this remote file."""
        return RangeFile(self)

    def opener(self, name: str) -> Callable[..., RangeFile]:
        """A rasterio ``opener`` serving ``name`` from this file (and refusing every other name, such as GDAL's
        look-ups of side-car files)."""

        def open_(path: str, mode: str = "rb") -> RangeFile:
            if str(path) != name or "w" in mode or "+" in mode:
                raise FileNotFoundError(path)
            return self.file()

        return open_


class RangeFile(io.RawIOBase):
    """A read-only, seekable file object over a :class:`RemoteFile`."""

    def __init__(self, remote: RemoteFile) -> None:
        super().__init__()
        self.remote = remote
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.remote.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.remote.read(self.pos, len(view))
        view[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.remote.size - self.pos)
        data = self.remote.read(self.pos, size)
        self.pos += len(data)
        return data
