"""STAC items as imagery vendors write them: which asset is the image, when it was taken, its GSD, bands,
projection and where on Earth it lies (read with ``pystac``).

- **Asset**: the first with role ``visual``, else with role ``data`` or ``analytic``, else one whose key says
  ``visual`` or ``analytic``; only image media types (GeoTIFF/COG, JPEG 2000, NITF, or none given). Its href is made
  absolute against the item's own link (or the URL it was fetched from).
- **Time**: ``datetime``, else ``start_datetime`` (an item with neither is read, but then needs
  ``captured_at``). **GSD**: the asset's ``gsd``, else the item's.
- **Projection**: ``proj:code`` (or ``proj:epsg``) and ``proj:transform``, from the asset or the item: used only
  when the file itself carries no georeference.
- **Bands**: the asset's ``bands`` (STAC 1.1, ``eo:common_name``) or ``eo:bands`` (``common_name``), else the
  item's: names in file order, used when the file does not say which band is red, green and blue.
- **Where**: the item's ``geometry`` (else ``bbox``), WGS84: facilities whose footprints miss it are skipped
  before any pixel is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urljoin

from app.core.errors import InvalidInputError
from app.detection.raster import Georef, SceneHints, make_georef

#: Media types of image assets (a prefix or a fragment of ``type``).
IMAGE_TYPES = ("image/tiff", "image/jp2", "application/vnd.nitf", "image/x-nitf", "image/nitf")
#: Asset roles, best first.
ROLE_ORDER = (("visual",), ("data", "analytic"))


@dataclass(frozen=True)
class StacScene:
    """What the service uses of a STAC item."""

    item_id: str
    asset_key: str
    href: str
    captured_at: datetime | None
    gsd_m: float | None
    band_names: tuple[str, ...]
    georef: Georef | None
    geometry: dict[str, Any] | None  # GeoJSON, WGS84
    item: dict[str, Any]  # the item as given (JSON)

    @property
    def hints(self) -> SceneHints:
        """Band names and georeference for :func:`app.detection.raster.open_scene`."""
        return SceneHints(band_names=self.band_names, georef=self.georef)


def parse_item(data: Any, base_url: str | None = None) -> StacScene:
    """Read a STAC item (a JSON object); :class:`InvalidInputError` naming what is missing or wrong."""
    import pystac

    if not isinstance(data, dict) or data.get("type") != "Feature":
        raise InvalidInputError('not a STAC item: a JSON object with "type": "Feature" is expected')
    raw_props = data.get("properties")
    props_in: dict[str, Any] = raw_props if isinstance(raw_props, dict) else {}
    timeless = props_in.get("datetime") is None and props_in.get("start_datetime") is None
    parsed = data if not timeless else {**data, "properties": {**props_in, "datetime": "1970-01-01T00:00:00Z"}}
    try:
        item = pystac.Item.from_dict(parsed, preserve_dict=True, migrate=False)
    except Exception as exc:  # pystac raises many kinds (KeyError, ValueError, STACError) for bad items
        raise InvalidInputError(f"not a valid STAC item: {type(exc).__name__}: {exc}") from None
    key, asset = _pick_asset(item)
    href = _absolute(asset.href, base_url or item.get_self_href())
    props = item.properties
    fields = {**props, **asset.extra_fields}
    when = None if timeless else item.datetime or item.common_metadata.start_datetime
    gsd = asset.extra_fields.get("gsd", props.get("gsd"))
    return StacScene(
        item_id=str(item.id),
        asset_key=key,
        href=href,
        captured_at=when,
        gsd_m=None if gsd is None else _number(gsd, "gsd"),
        band_names=_band_names(asset.extra_fields) or _band_names(props),
        georef=_georef(fields),
        geometry=data.get("geometry") or _bbox_polygon(data.get("bbox")),
        item=data,
    )


def _pick_asset(item: Any) -> tuple[str, Any]:
    images = {k: a for k, a in item.assets.items() if _is_image(a.media_type)}
    for roles in ROLE_ORDER:
        for key, asset in images.items():
            if set(asset.roles or ()) & set(roles):
                return key, asset
    for word in ("visual", "analytic"):
        for key, asset in images.items():
            if word in key.lower():
                return key, asset
    raise InvalidInputError(
        f"STAC item {item.id!r} has no usable image asset (an asset of role visual, data or analytic, of type "
        f"GeoTIFF/COG, JPEG 2000 or NITF); its assets: {sorted(item.assets) or 'none'}"
    )


def _is_image(media_type: str | None) -> bool:
    return media_type is None or any(t in media_type.lower() for t in IMAGE_TYPES)


def _absolute(href: str, base: str | None) -> str:
    if "://" in href or href.startswith("/"):
        return href
    if base is None:
        raise InvalidInputError(f"the asset href {href!r} is relative and the item says not where it is (no self link)")
    return urljoin(base, href)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"the STAC item's {name} must be a number, not {value!r}")
    return float(value)


def _band_names(fields: dict[str, Any]) -> tuple[str, ...]:
    for key, name_key in (("bands", "eo:common_name"), ("eo:bands", "common_name")):
        bands = fields.get(key)
        if isinstance(bands, list) and bands and all(isinstance(b, dict) for b in bands):
            return tuple(str(b.get(name_key) or b.get("common_name") or b.get("name") or "") for b in bands)
    return ()


def _georef(fields: dict[str, Any]) -> Georef | None:
    transform = fields.get("proj:transform")
    code = fields.get("proj:code") or (f"EPSG:{fields['proj:epsg']}" if fields.get("proj:epsg") else None)
    if not code or not isinstance(transform, list) or len(transform) not in (6, 9):
        return None
    values = tuple(_number(v, "proj:transform") for v in transform)
    try:
        return make_georef(str(code), values)
    except ValueError as exc:
        raise InvalidInputError(f"the STAC item's projection cannot be used: {exc}") from None


def _bbox_polygon(bbox: Any) -> dict[str, Any] | None:
    if not isinstance(bbox, list) or len(bbox) not in (4, 6):
        return None
    w, s, e, n = (bbox[0], bbox[1], bbox[3], bbox[4]) if len(bbox) == 6 else bbox
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
