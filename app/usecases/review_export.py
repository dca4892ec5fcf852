"""Reviews become training data: the exhaustively reviewed images as a YOLO-OBB dataset.

Each image with an exhaustive box review in force is read from the archive (the region the service read), resampled
to the model's working ground sample distance and cut into tiles with overlap. A tile's label file lists the true
objects with at least :data:`MIN_VISIBLE` of their area inside it (clipped to it); the analyst's undecided regions,
and objects cut by the tile's edge below that share, are painted the letterbox grey, so that the network is told
neither that they are objects nor that they are background. Every observation's tiles share a split (train, or val
for every :data:`VAL_EVERY`-th). ``manifest.json`` names each tile's facility, observation, review and reviewer, and
the licence the imagery is under. ``wagon-detector train --data reviews:DIR`` fine-tunes on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from app import database as db
from app.core.offline import CLASS_NAMES
from app.core.validation import iso
from app.detection.geometry import resample, resample_scale, tile_origins
from app.detection.raster import open_scene
from app.usecases.scenes import archive_path

if TYPE_CHECKING:
    from app.core.settings import Settings

log = logging.getLogger(__name__)

#: Share of an object's area that must lie inside a tile for it to be labelled there.
MIN_VISIBLE = 0.6
#: Every n-th observation (by a hash of its id) goes to the validation split.
VAL_EVERY = 5
#: Letterbox grey: what the network sees outside an image.
GREY = 114
LICENCE_NOTE = (
    "The images are the service's archived uploads, under whatever licence their vendor granted the operator; the "
    "labels are the reviews of the named analysts. Check the imagery licence before sharing this dataset or "
    "training a model that leaves the organisation."
)


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_reviews` wrote."""

    images: int
    tiles: int
    objects: int
    skipped: list[str]
    data_yaml: Path


def _clipped(corners: np.ndarray, x0: int, y0: int, size: int) -> tuple[float, np.ndarray | None]:
    """Visible share of a box inside a tile, and its label corners there (the min-area box of the clipped part)."""
    import shapely

    poly = shapely.Polygon(corners)
    if poly.area <= 0:
        return 0.0, None
    inter = poly.intersection(shapely.box(x0, y0, x0 + size, y0 + size))
    share = inter.area / poly.area
    if inter.is_empty or inter.geom_type != "Polygon":
        return share, None
    if share >= 0.999:
        return share, corners - [x0, y0]
    rect = cv2.minAreaRect(np.asarray(inter.exterior.coords, np.float32))
    return share, cv2.boxPoints(rect).astype(np.float64) - [x0, y0]


def _paint(image: np.ndarray, polygon: np.ndarray) -> None:
    cv2.fillPoly(image, [np.rint(polygon).astype(np.int32)], (GREY, GREY, GREY))


def export_reviews(
    store: db.Store,
    settings: Settings,
    out: Path,
    working_gsd_m: float,
    tile_px: int = 640,
    overlap_px: int = 128,
    facility_id: str | None = None,
) -> ExportSummary:
    """Write the exhaustively reviewed images (of one facility, or all) as a YOLO-OBB dataset under ``out``."""
    if not (tile_px >= 64 and 0 <= overlap_px < tile_px // 2):
        raise ValueError(f"tiles of {tile_px} px with {overlap_px} px overlap: need at least 64 px and under half")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new folder")
    for split in ("train", "val"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    skipped: list[str] = []
    n_images = n_objects = 0
    with store.session() as session:
        todo = []
        facilities = [facility_id] if facility_id else [f.id for f, _ in db.list_facilities(session)]
        for fid in facilities:
            for review in db.facility_reviews(session, fid):
                if review.objects is None or not review.exhaustive:
                    continue
                obs = db.get_observation(session, review.observation_id)
                if obs is None or obs.image_sha256 is None:
                    continue
                todo.append((fid, obs.id, obs.image_sha256, obs.gsd_m, obs.geo or {}, obs.captured_at, review))
        rows = [
            (fid, oid, sha, gsd, geo, iso(at), r.id, r.reviewer, iso(r.reviewed_at), list(r.objects or []), r.ignore)
            for fid, oid, sha, gsd, geo, at, r in todo
        ]
    for fid, oid, sha, gsd, geo, captured, review_id, reviewer, reviewed_at, objects, ignore in rows:
        path = archive_path(settings.archive_dir, sha)
        if not path.exists():
            skipped.append(f"observation {oid}: original not in the archive")
            continue
        with open_scene(
            path, sha256=sha, max_pixels=settings.max_pixels, max_scene_pixels=settings.max_scene_pixels
        ) as scene:
            c0, r0, w, h = (int(v) for v in (geo.get("window") or (0, 0, scene.width, scene.height)))
            if w * h > settings.max_pixels:
                skipped.append(f"observation {oid}: region of {w} x {h} px is larger than WAGON_MAX_PIXELS")
                continue
            scene.prepare((c0, r0, w, h))
            rgb, valid = scene.read((c0, r0, w, h))
        scale = resample_scale(gsd, working_gsd_m)
        image = np.ascontiguousarray(resample(rgb, scale))
        image[~cv2.resize(valid.astype(np.uint8), image.shape[1::-1], interpolation=cv2.INTER_NEAREST).astype(bool)] = (
            GREY
        )

        def to_work(points: Any, s: float = scale, dx: int = c0, dy: int = r0) -> np.ndarray:
            return (np.asarray(points, np.float64) - [dx, dy]) * s

        boxes = [(CLASS_NAMES.index(o["class"]), to_work(o["obb"])) for o in objects]
        for region in ignore or []:
            _paint(image, to_work(region))
        split = "val" if int(hashlib.sha256(str(oid).encode()).hexdigest(), 16) % VAL_EVERY == 0 else "train"
        H, W = image.shape[:2]
        tiles = 0
        for y0 in tile_origins(H, tile_px, overlap_px):
            for x0 in tile_origins(W, tile_px, overlap_px):
                tile = np.full((tile_px, tile_px, 3), GREY, np.uint8)
                crop = image[y0 : y0 + tile_px, x0 : x0 + tile_px]
                tile[: crop.shape[0], : crop.shape[1]] = crop
                lines = []
                for cls, corners in boxes:
                    share, label = _clipped(corners, x0, y0, tile_px)
                    if share >= MIN_VISIBLE and label is not None:
                        norm = np.clip(label / tile_px, 0.0, 1.0)
                        lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in norm.ravel()))
                    elif share > 0:
                        _paint(tile, corners - [x0, y0])
                name = f"{fid}-obs{oid}-{y0}-{x0}"
                cv2.imwrite(str(out / "images" / split / f"{name}.png"), tile[..., ::-1])
                (out / "labels" / split / f"{name}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
                entries.append(
                    {
                        "tile": f"images/{split}/{name}.png",
                        "facility": fid,
                        "observation": oid,
                        "captured_at": captured,
                        "review": review_id,
                        "reviewer": reviewer,
                        "reviewed_at": reviewed_at,
                        "image_sha256": sha,
                        "gsd_m": gsd,
                        "objects": len(lines),
                    }
                )
                tiles += 1
        n_images += 1
        n_objects += len(boxes)
        log.info("exported observation %d of %s: %d tiles (%s)", oid, fid, tiles, split)
    val = "images/val" if any((out / "images" / "val").iterdir()) else "images/train"
    data_yaml = out / "data.yaml"
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASS_NAMES))
    data_yaml.write_text(f"path: {out.resolve()}\ntrain: images/train\nval: {val}\nnames:\n{names}")
    manifest = {
        "kind": "reviews",
        "working_gsd_m": working_gsd_m,
        "tile_px": tile_px,
        "overlap_px": overlap_px,
        "licence": LICENCE_NOTE,
        "tiles": entries,
        "skipped": skipped,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return ExportSummary(images=n_images, tiles=len(entries), objects=n_objects, skipped=skipped, data_yaml=data_yaml)
