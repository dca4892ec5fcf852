"""STAC documents for subscriptions, served by a :class:`tests.support.range_server.RangeServer`: a static catalog
(a root catalog, one collection, its items with relative asset hrefs) and a paged fake STAC API search."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from tests.support.range_server import RangeServer

COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def stac_item(item_id: str, href: str, when: str, collection: str | None = "scenes", **asset: Any) -> dict[str, Any]:
    """A STAC item whose visual asset is at ``href`` (``asset`` overrides the asset's fields)."""
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": item_id,
        "geometry": None,
        "properties": {"datetime": when, "gsd": 0.5},
        "assets": {"visual": {"href": href, "type": COG_TYPE, "roles": ["visual"], **asset}},
        "links": [],
    }
    if collection is not None:
        item["collection"] = collection
    return item


def serve_static_catalog(server: RangeServer, items: list[dict[str, Any]], collection: str = "scenes") -> str:
    """Serve ``/stac/catalog.json`` -> ``/stac/<collection>/collection.json`` -> ``/stac/<collection>/items/<id>.json``
    (relative links, as pystac writes them); the root's URL."""
    base = f"/stac/{collection}"
    root = {
        "type": "Catalog",
        "stac_version": "1.0.0",
        "id": "vendor",
        "description": "a vendor's scenes",
        "links": [{"rel": "child", "href": f"./{collection}/collection.json", "type": "application/json"}],
    }
    coll = {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": collection,
        "description": "scenes",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": [["2020-01-01T00:00:00Z", None]]},
        },
        "links": [{"rel": "root", "href": "../catalog.json"}, {"rel": "parent", "href": "../catalog.json"}]
        + [{"rel": "item", "href": f"./items/{i['id']}.json", "type": "application/geo+json"} for i in items],
    }
    server.files["/stac/catalog.json"] = json.dumps(root).encode()
    server.files[f"{base}/collection.json"] = json.dumps(coll).encode()
    for item in items:
        server.files[f"{base}/items/{item['id']}.json"] = json.dumps(item).encode()
    return server.url("/stac/catalog.json")


class FakeSearch:
    """``/search``: ``items`` in pages of ``page_size``; page 2 is reached by a ``GET`` next link, later pages by
    ``POST`` next links with a body (merged), as STAC APIs do. Records each request's query and body."""

    def __init__(self, server: RangeServer, items: list[dict[str, Any]], page_size: int = 2) -> None:
        self.items = items
        self.page_size = page_size
        self.requests: list[tuple[str, dict[str, list[str]], dict[str, Any]]] = []
        self.url = server.url("/search")
        server.handlers["/search"] = self

    def __call__(self, method: str, query: str, body: bytes) -> tuple[int, Any]:
        params = parse_qs(query)
        posted = json.loads(body) if body else {}
        self.requests.append((method, params, posted))
        page = int(posted.get("page") or (params.get("page") or ["1"])[0])
        chunk = self.items[(page - 1) * self.page_size : page * self.page_size]
        links: list[dict[str, Any]] = []
        if page * self.page_size < len(self.items):
            if page == 1:
                links.append({"rel": "next", "href": f"{self.url}?{query}&page=2", "method": "GET"})
            else:
                links.append(
                    {"rel": "next", "href": self.url, "method": "POST", "body": {"page": page + 1}, "merge": True}
                )
        return 200, {"type": "FeatureCollection", "features": chunk, "links": links}
