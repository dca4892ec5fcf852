"""Static STAC catalogs read with ``pystac``: the catalog (or collection) at a URL is walked through its ``child``
and ``item`` links, every document fetched through :func:`app.usecases.remote_json.fetch_json` (allowed hosts only,
by a :class:`SafeStacIO` given to pystac). A link to a host not allowed is not followed (a problem is noted); a
document that cannot be read is noted and skipped. Collections not among those asked for are not walked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pystac

from app.core.errors import InvalidInputError
from app.core.url_policy import UrlRefused
from app.usecases.catalog_items import Found, found_item
from app.usecases.remote_json import fetch_json, policy_of, with_self_link

if TYPE_CHECKING:
    from app.core.settings import Settings


class SafeStacIO(pystac.StacIO):
    """pystac's reader, through the service's guarded HTTP client (reads only; counts the documents fetched)."""

    def __init__(self, settings: Settings, found: Found | None = None) -> None:
        super().__init__()
        self.settings = settings
        self.found = found

    def read_json(self, source: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        data = self._fetch(source)
        if not isinstance(data, dict):
            raise InvalidInputError(f"the document at {_href(source)} is not a JSON object")
        return data

    def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
        import json

        return json.dumps(self._fetch(source))

    def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
        raise InvalidInputError("catalogs are only read")

    def _fetch(self, source: Any) -> Any:
        if self.found is not None:
            self.found.documents += 1
        return fetch_json(self.settings, _href(source), "the STAC document")[0]


def _href(source: Any) -> str:
    return str(source.get_absolute_href() if isinstance(source, pystac.Link) else source)


def open_catalog(settings: Settings, url: str, found: Found | None = None) -> pystac.Catalog:
    """The catalog or collection at ``url``; :class:`InvalidInputError` when it is neither (or cannot be read)."""
    try:
        root = pystac.read_file(url, stac_io=SafeStacIO(settings, found))
    except InvalidInputError:
        raise
    except Exception as exc:  # pystac raises many kinds for documents it cannot read
        raise InvalidInputError(f"{url} is not a STAC catalog or collection: {type(exc).__name__}: {exc}") from None
    if not isinstance(root, pystac.Catalog):
        raise InvalidInputError(f"{url} is a STAC {type(root).__name__}, not a catalog or collection")
    return root


def walk(settings: Settings, url: str, collections: list[str] | None) -> Found:
    """Every item under the catalog at ``url`` (of ``collections`` only, when given), breadth first, within the
    bounds of :mod:`app.usecases.catalog_items`; :class:`InvalidInputError` when the root cannot be read."""
    found = Found()
    io = SafeStacIO(settings, found)
    policy = policy_of(settings)
    wanted = None if collections is None else set(collections)
    queue: list[pystac.Catalog] = [open_catalog(settings, url, found)]
    while queue:
        node = queue.pop(0)
        collection = node.id if isinstance(node, pystac.Collection) else None
        for link in node.get_links(pystac.RelType.ITEM):
            href = link.get_absolute_href() or link.href
            if not found.room():
                return found
            try:
                policy.check_url(href)
                data = io.read_json(href)
            except (InvalidInputError, UrlRefused) as exc:
                found.problems.append(f"item {href}: {exc}")
                continue
            item = found_item(with_self_link(data, href) if isinstance(data, dict) else data, collection, href)
            if isinstance(item, str):
                found.problems.append(item)
            elif wanted is None or item.collection in wanted:
                found.items.append(item)
        for link in node.get_links(pystac.RelType.CHILD):
            href = link.get_absolute_href() or link.href
            if not found.room():
                return found
            try:
                policy.check_url(href)
                child = pystac.read_file(href, stac_io=io)
            except (InvalidInputError, UrlRefused) as exc:
                found.problems.append(f"child {href}: {exc}")
                continue
            except Exception as exc:  # pystac's own refusals of a document
                found.problems.append(f"child {href}: not a STAC catalog or collection: {type(exc).__name__}")
                continue
            if not isinstance(child, pystac.Catalog):
                found.problems.append(f"child {href} is not a catalog or collection")
            elif wanted is None or not isinstance(child, pystac.Collection) or child.id in wanted:
                queue.append(child)
    return found
