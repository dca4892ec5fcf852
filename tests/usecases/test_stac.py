"""STAC items as vendors write them: asset by role, time, GSD, projection and band names."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.errors import InvalidInputError
from app.usecases.stac import parse_item


def _item(**assets: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "X1",
        "geometry": None,
        "bbox": [130.0, 42.0, 130.1, 42.1],
        "properties": {"datetime": "2023-10-15T02:30:00Z", "gsd": 0.6, "proj:code": "EPSG:32652"},
        "assets": assets,
        "links": [{"rel": "self", "href": "https://data.vendor.example/items/X1.json"}],
    }


def test_visual_asset_relative_href_time_gsd_projection_and_bands() -> None:
    item = _item(
        analytic={"href": "ms.tif", "type": "image/tiff; application=geotiff", "roles": ["data"]},
        visual={
            "href": "pan.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["visual"],
            "gsd": 0.5,
            "proj:transform": [0.5, 0, 620000, 0, -0.5, 4700000, 0, 0, 1],
            "bands": [
                {"name": "b1", "eo:common_name": "blue"},
                {"name": "b2", "eo:common_name": "green"},
                {"name": "b3", "eo:common_name": "red"},
            ],
        },
    )
    scene = parse_item(item)
    assert scene.asset_key == "visual" and scene.href == "https://data.vendor.example/items/pan.tif"
    assert scene.captured_at is not None and scene.captured_at.isoformat() == "2023-10-15T02:30:00+00:00"
    assert scene.gsd_m == 0.5 and scene.band_names == ("blue", "green", "red")
    assert scene.georef is not None and scene.georef.crs == "EPSG:32652" and scene.georef.transform[2] == 620000
    assert scene.geometry is not None and scene.geometry["type"] == "Polygon"


def test_data_role_and_eo_bands_when_there_is_no_visual_asset() -> None:
    item = _item(
        thumb={"href": "t.png", "type": "image/png", "roles": ["thumbnail"]},
        ortho={"href": "https://h/o.tif", "roles": ["data"], "eo:bands": [{"common_name": "pan"}]},
    )
    scene = parse_item(item)
    assert scene.asset_key == "ortho" and scene.band_names == ("pan",) and scene.gsd_m == 0.6


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        (_item(thumb={"href": "t.png", "type": "image/png", "roles": ["thumbnail"]}), "no usable image asset"),
        ({"type": "Feature"}, "not a valid STAC item"),
        ([], "not a STAC item"),
    ],
)
def test_unusable_items_are_refused(item: Any, needle: str) -> None:
    with pytest.raises(InvalidInputError, match=needle):
        parse_item(item)


def test_an_item_without_a_time_gives_none() -> None:
    item = _item(visual={"href": "https://h/v.tif", "roles": ["visual"]})
    item["properties"]["datetime"] = None
    assert parse_item(item).captured_at is None
