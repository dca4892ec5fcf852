"""STAC API item search: ``GET {search}?collections=…&datetime=…/..&limit=…``, then every ``next`` link (``GET``, or
``POST`` with its ``body``, merged into the previous one when ``merge`` is true), through
:func:`app.usecases.remote_json.fetch_json` (allowed hosts only), within the bounds of
:mod:`app.usecases.catalog_items`."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from app.core.errors import InvalidInputError
from app.core.validation import iso
from app.usecases.catalog_items import Found, found_item
from app.usecases.remote_json import fetch_json

if TYPE_CHECKING:
    from app.core.settings import Settings

#: Items asked for per page.
PAGE_LIMIT = 100


def first_page_url(url: str, collections: list[str] | None, since: datetime | None) -> str:
    """The first page's URL: the search endpoint with the collections, the time window and the page size."""
    params: dict[str, str] = {"limit": str(PAGE_LIMIT)}
    if collections:
        params["collections"] = ",".join(collections)
    if since is not None:
        params["datetime"] = f"{iso(since)}/.."
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


def search(settings: Settings, url: str, collections: list[str] | None, since: datetime | None) -> Found:
    """The items the search endpoint at ``url`` finds (of ``collections``, acquired since ``since``), across its
    pages; :class:`InvalidInputError` when the first page cannot be read."""
    found = Found()
    page_url: str | None = first_page_url(url, collections, since)
    body: dict[str, Any] | None = None
    seen: set[tuple[str, str | None]] = set()
    while page_url is not None:
        if not found.room():
            return found
        key = (page_url, None if body is None else repr(sorted(body.items())))
        if key in seen:
            found.problems.append(f"the search pages loop back to {page_url}")
            return found
        seen.add(key)
        found.documents += 1
        try:
            page, _final = fetch_json(settings, page_url, "the STAC search page", post=body)
        except InvalidInputError as exc:
            if found.documents == 1:
                raise
            found.problems.append(str(exc))
            found.truncated = True
            return found
        if not isinstance(page, dict) or page.get("type") != "FeatureCollection":
            message = f"{page_url} is not a STAC API search page (a GeoJSON FeatureCollection)"
            if found.documents == 1:
                raise InvalidInputError(message)
            found.problems.append(message)
            return found
        for feature in page.get("features") or []:
            item = found_item(feature, None, f"a feature of {page_url}")
            if isinstance(item, str):
                found.problems.append(item)
            elif not collections or item.collection in collections:
                found.items.append(item)
        page_url, body = _next(page, body)
    return found


def _next(page: dict[str, Any], body: dict[str, Any] | None) -> tuple[str | None, dict[str, Any] | None]:
    for link in page.get("links") or []:
        if isinstance(link, dict) and link.get("rel") == "next" and isinstance(link.get("href"), str):
            if str(link.get("method", "GET")).upper() != "POST":
                return link["href"], None
            raw = link.get("body")
            given: dict[str, Any] = raw if isinstance(raw, dict) else {}
            return link["href"], {**(body or {}), **given} if link.get("merge") else dict(given)
    return None, None
