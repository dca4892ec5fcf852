"""JSON documents fetched by URL (STAC items, catalogs, collections, API search pages): only from
``WAGON_FETCH_ALLOWED_HOSTS``, through the guarded client of :mod:`app.core.remote_file` (redirects followed only to
allowed hosts, bounded timeouts), at most :data:`MAX_JSON_BYTES`. Every failure is an :class:`InvalidInputError`
saying what went wrong."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from app.core.errors import InvalidInputError
from app.core.remote_file import FetchError, guarded_client, send_checked
from app.core.url_policy import UrlPolicy

if TYPE_CHECKING:
    from app.core.settings import Settings

#: Largest JSON document fetched, bytes.
MAX_JSON_BYTES = 4 * 1024 * 1024


def policy_of(settings: Settings) -> UrlPolicy:
    """The URL policy of ``WAGON_FETCH_ALLOWED_HOSTS``."""
    return UrlPolicy.from_entries(settings.fetch_allowed_hosts)


def fetch_json(
    settings: Settings, url: str, what: str = "the document", post: dict[str, Any] | None = None
) -> tuple[Any, str]:
    """The JSON at ``url`` (``GET``, or ``POST`` of the JSON ``post``, whose redirects are refused) and the URL it
    was finally read from."""
    policy = policy_of(settings)
    try:
        policy.check(url)
        with guarded_client(policy, settings.fetch_connect_timeout_s, settings.fetch_read_timeout_s) as client:
            if post is None:
                response, final = send_checked(client, policy, url, {"Accept": "application/json"})
            else:
                response = client.send(client.build_request("POST", url, json=post), stream=True)
                final = url
                if response.is_redirect:
                    response.close()
                    raise InvalidInputError(f"{what} at {url} answered a POST with a redirect (not followed)")
            try:
                if response.status_code != 200:
                    raise InvalidInputError(f"{what} at {url} cannot be fetched: HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_JSON_BYTES:
                        raise InvalidInputError(f"{what} at {url} is larger than {MAX_JSON_BYTES} bytes")
            finally:
                response.close()
    except (InvalidInputError, FetchError) as exc:
        raise InvalidInputError(str(exc)) from None
    except Exception as exc:  # httpx's transport errors: a refusal, not a crash
        raise InvalidInputError(f"{what} at {url} cannot be fetched: {type(exc).__name__}: {exc}") from None
    try:
        return json.loads(bytes(body)), final
    except (ValueError, UnicodeDecodeError):
        raise InvalidInputError(f"the document at {url} is not JSON") from None


def with_self_link(item: dict[str, Any], href: str) -> dict[str, Any]:
    """``item`` with a ``self`` link to ``href`` unless it has one (so that relative asset hrefs resolve)."""
    links = item.get("links")
    if isinstance(links, list) and any(isinstance(x, dict) and x.get("rel") == "self" for x in links):
        return item
    kept = links if isinstance(links, list) else []
    return {**item, "links": [*kept, {"rel": "self", "href": href, "type": "application/geo+json"}]}
