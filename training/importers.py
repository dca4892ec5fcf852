"""Import real labelled overhead imagery (xView, DOTA, YOLO / YOLO-OBB folders) into one YOLO-OBB training set.

Every importer reads one source in its own format, maps its classes onto ours (``railcar``, ``container``), drops
everything else, cuts large images into ``tile``-pixel chips with overlap (an object is kept in a chip when at least
``min_visible`` of its area lies inside, clipped to the chip) and writes the chips into one dataset laid out like
:func:`training.synth.write_dataset`: ``images/{train,val}/*.jpg``, ``labels/{train,val}/*.txt`` with lines
``class x1 y1 x2 y2 x3 y3 x4 y4`` normalised to [0, 1], ``data.yaml`` and ``manifest.json``.

* Split: each *original* image goes to val when a hash of ``"<kind>:<image path inside the source>"`` falls below
  ``val_share``, so all chips of one image share a split, the split does not depend on where the source sits on disk,
  and re-importing gives the same split. A YOLO source's own train/val folders are not kept.
* Negatives: a chip with no mapped object is written only when ``keep_negatives`` is set.
* Ground sample distance: xView is 0.3 m; DOTA gives ``gsd:`` per image (sometimes ``null``); YOLO folders take
  ``gsd_m`` from the caller. With ``target_gsd_m`` set, images of known GSD are resampled to it before tiling.

Several importers may write into the same ``out``; each call rewrites ``data.yaml`` and merges its own entries into
``manifest.json`` (replacing earlier entries of the same source). :func:`build_dataset` runs several sources at once
from ``kind:path`` strings, the form ``wagon-detector train --data`` accepts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from PIL import Image
from shapely.geometry import Polygon, box

from app.core.offline import CLASS_NAMES
from app.detection.geometry import resample, resample_scale, tile_origins

RAILCAR, CONTAINER = 0, 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
XVIEW_GSD_M = 0.3

#: xView ``type_id`` -> our class. The railway classes are 33 Railway Vehicle, 34 Passenger Car, 35 Cargo Car,
#: 36 Flat Car, 37 Tank car, 38 Locomotive; 91 is Shipping Container. Not mapped on purpose: 89 Shipping container
#: lot (a whole stack area, not one box), 55 Container Crane, 51 Container Ship, 17-29 road vehicles.
XVIEW_CLASS_MAP: dict[int, int] = {
    33: RAILCAR,
    34: RAILCAR,
    35: RAILCAR,
    36: RAILCAR,
    37: RAILCAR,
    38: RAILCAR,
    91: CONTAINER,
}

#: Class names (lower case, spaces and hyphens as ``_``) of YOLO sources that mean one of ours.
YOLO_SYNONYMS: dict[str, int] = {
    **{
        n: RAILCAR
        for n in (
            "railcar",
            "railcars",
            "rail_car",
            "rail_cars",
            "wagon",
            "wagons",
            "train",
            "trains",
            "locomotive",
            "locomotives",
            "freight_car",
            "freight_cars",
            "freight_wagon",
            "railway_vehicle",
            "railway_wagon",
        )
    },
    **{
        n: CONTAINER
        for n in ("container", "containers", "shipping_container", "shipping_containers", "intermodal_container")
    },
}

#: DOTA (v1.0 / v1.5 / v2.0) has neither a railcar nor a shipping-container category, so nothing is mapped unless
#: the caller passes ``class_map`` (e.g. from a re-labelled DOTA-format set).
DOTA_DEFAULT_CLASS_MAP: dict[str, str] = {}

SOURCE_KINDS = ("xview", "dota", "yolo", "reviews")
#: Synthetic chips mixed in per exported review tile (a ``reviews:`` source), so nothing else is forgotten.
SYNTHETIC_PER_REVIEW_TILE = 3


@dataclass(frozen=True)
class ImportOptions:
    """How sources are cut and split (shared by all importers)."""

    tile: int = 640
    overlap: int = 128
    min_visible: float = 0.6
    val_share: float = 0.1
    keep_negatives: bool = False
    target_gsd_m: float | None = None
    min_side_px: float = 2.0
    jpeg_quality: int = 95


# ------------------------------------------------------------------------------------------------ geometry


def _norm_name(name: str) -> str:
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """An axis-aligned rectangle as 4 corners, clockwise in image coordinates from the top left."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def _is_axis_aligned(corners: np.ndarray, tol: float = 1e-6) -> bool:
    xs, ys = np.unique(np.round(corners[:, 0], 6)), np.unique(np.round(corners[:, 1], 6))
    return len(xs) <= 2 and len(ys) <= 2 and bool(np.ptp(corners[:, 0]) > tol)


def clip_to_window(
    corners: np.ndarray, x0: float, y0: float, x1: float, y1: float, min_visible: float = 0.6
) -> np.ndarray | None:
    """Corners of an object clipped to the window ``[x0, x1] x [y0, y1]``, in window pixels; None if too little shows.

    Axis-aligned boxes stay exact rectangles; a rotated box cut by the window becomes the minimum-area rectangle of
    the visible part, clamped to the window.
    """
    poly = Polygon(corners)
    if not poly.is_valid:
        poly = poly.buffer(0)
    area = poly.area
    if area <= 0:
        return None
    visible = poly.intersection(box(x0, y0, x1, y1))
    if visible.is_empty or visible.area / area < min_visible:
        return None
    offset = np.array([x0, y0], float)
    if visible.area / area > 0.999:
        out = corners - offset
    elif _is_axis_aligned(corners):
        bx0, by0, bx1, by1 = visible.bounds
        out = _rect(bx0, by0, bx1, by1) - offset
    else:
        pts = np.asarray(visible.convex_hull.exterior.coords, np.float32)
        out = cv2.boxPoints(cv2.minAreaRect(pts)).astype(float) - offset
    out[:, 0] = np.clip(out[:, 0], 0, x1 - x0)
    out[:, 1] = np.clip(out[:, 1], 0, y1 - y0)
    return out


def _sides(corners: np.ndarray) -> tuple[float, float]:
    d = np.diff(np.vstack([corners, corners[:1]]), axis=0)
    lengths = np.hypot(d[:, 0], d[:, 1])
    return float(lengths[0]), float(lengths[1])


# ------------------------------------------------------------------------------------------------ writing


@dataclass
class _Image:
    """One original image of a source, its objects in pixels, and bookkeeping."""

    key: str  # path inside the source, used for the split and in chip names
    path: Path
    objects: list[tuple[int, np.ndarray]]
    gsd_m: float | None = None
    dropped: Counter[str] = field(default_factory=Counter)


def split_of(kind: str, key: str, val_share: float) -> str:
    """``"val"`` or ``"train"`` for an original image, from a hash of its source kind and path inside the source."""
    digest = hashlib.sha256(f"{kind}:{key}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_share else "train"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)  # BGR uint8; grey and 16-bit images are converted
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return image


class DatasetWriter:
    """Writes chips of one source into an output dataset and keeps its part of the manifest."""

    def __init__(self, out: Path, source: str, kind: str, opts: ImportOptions) -> None:
        self.out, self.source, self.kind, self.opts = Path(out), source, kind, opts
        self.prefix = f"{kind}-{hashlib.sha256(source.encode()).hexdigest()[:6]}"
        for split in ("train", "val"):
            (self.out / "images" / split).mkdir(parents=True, exist_ok=True)
            (self.out / "labels" / split).mkdir(parents=True, exist_ok=True)
        self.chips: list[dict[str, Any]] = []
        self.dropped: Counter[str] = Counter()
        self.images = 0
        self.skipped: list[str] = []

    def add(self, item: _Image) -> None:
        """Tile one original image and write its chips."""
        opts = self.opts
        self.images += 1
        self.dropped.update(item.dropped)
        split = split_of(self.kind, item.key, opts.val_share)
        if not item.objects and not opts.keep_negatives:
            return
        try:
            image = _read_image(item.path)
        except ValueError as exc:
            self.skipped.append(str(exc))
            return
        scale = resample_scale(item.gsd_m, opts.target_gsd_m)
        image = resample(image, scale)
        h, w = image.shape[:2]
        objects = [(c, corners * scale) for c, corners in item.objects]
        whole = h <= opts.tile and w <= opts.tile
        stem = _safe(item.key.replace(".", "_"))  # the suffix stays in the name: a.png and a.jpg both survive
        for y0 in tile_origins(h, opts.tile, opts.overlap):
            for x0 in tile_origins(w, opts.tile, opts.overlap):
                x1, y1 = min(x0 + opts.tile, w), min(y0 + opts.tile, h)
                lines, counts = [], Counter[str]()
                for cls, corners in objects:
                    clipped = clip_to_window(corners, x0, y0, x1, y1, opts.min_visible)
                    if clipped is None or min(_sides(clipped)) < opts.min_side_px:
                        continue
                    norm = clipped / np.array([x1 - x0, y1 - y0], float)
                    lines.append(f"{cls} " + " ".join(f"{v:.6f}" for v in np.clip(norm, 0, 1).reshape(-1)))
                    counts[CLASS_NAMES[cls]] += 1
                if not lines and not opts.keep_negatives:
                    continue
                name = f"{self.prefix}_{stem}" if whole else f"{self.prefix}_{stem}_{x0}_{y0}"
                copy_bytes = whole and scale == 1.0 and item.path.suffix.lower() in (".jpg", ".jpeg", ".png")
                suffix = item.path.suffix.lower() if copy_bytes else ".jpg"
                image_file = self.out / "images" / split / f"{name}{suffix}"
                if copy_bytes:
                    shutil.copyfile(item.path, image_file)
                else:
                    cv2.imwrite(str(image_file), image[y0:y1, x0:x1], [cv2.IMWRITE_JPEG_QUALITY, opts.jpeg_quality])
                (self.out / "labels" / split / f"{name}.txt").write_text("".join(f"{ln}\n" for ln in lines))
                self.chips.append(
                    {
                        "file": image_file.relative_to(self.out).as_posix(),
                        "split": split,
                        "source": self.source,
                        "original": item.key,
                        "window": [x0, y0, x1 - x0, y1 - y0],
                        "scale": round(scale, 6),
                        "gsd_m": (item.gsd_m / scale) if item.gsd_m else None,
                        **{n: counts[n] for n in CLASS_NAMES},
                    }
                )

    def close(self) -> Path:
        """Merge this source's entries into ``manifest.json``, write ``data.yaml`` and return its path."""
        manifest_path = self.out / "manifest.json"
        manifest: dict[str, Any] = {"classes": list(CLASS_NAMES), "sources": [], "chips": []}
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
        old_files = {c["file"] for c in manifest["chips"] if c["source"] == self.source}
        new_files = {c["file"] for c in self.chips}
        for stale in old_files - new_files:  # a re-import that now writes fewer chips
            (self.out / stale).unlink(missing_ok=True)
            (self.out / "labels" / Path(stale).parent.name / f"{Path(stale).stem}.txt").unlink(missing_ok=True)
        totals: dict[str, dict[str, int]] = {s: {n: 0 for n in (*CLASS_NAMES, "chips")} for s in ("train", "val")}
        originals: dict[str, set[str]] = {"train": set(), "val": set()}
        for c in self.chips:
            s = str(c["split"])
            totals[s]["chips"] += 1
            originals[s].add(str(c["original"]))
            for n in CLASS_NAMES:
                totals[s][n] += int(c[n])
        summary = {
            "source": self.source,
            "kind": self.kind,
            "images_seen": self.images,
            "images_written": {s: len(v) for s, v in originals.items()},
            "totals": totals,
            "dropped_categories": dict(sorted(self.dropped.items())),
            "unreadable": self.skipped,
            "options": {k: getattr(self.opts, k) for k in ImportOptions.__dataclass_fields__},
        }
        manifest["sources"] = [s for s in manifest["sources"] if s["source"] != self.source] + [summary]
        manifest["chips"] = [c for c in manifest["chips"] if c["source"] != self.source] + self.chips
        manifest_path.write_text(json.dumps(manifest, indent=1))
        return write_data_yaml(self.out)


def write_data_yaml(out: Path) -> Path:
    """Write the Ultralytics ``data.yaml`` of a dataset rooted at ``out``.

    When no image landed in val (a tiny set), ``val`` points at the train images so that training can run; the
    file says so in a comment and validation scores then measure fit, not generalisation.
    """
    data_yaml = Path(out) / "data.yaml"
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASS_NAMES))
    val_dir = Path(out) / "images" / "val"
    has_val = val_dir.is_dir() and any(p.is_file() for p in val_dir.iterdir())
    val = "images/val" if has_val else "images/train  # no image fell in val: validating on train"
    data_yaml.write_text(f"path: {Path(out).resolve()}\ntrain: images/train\nval: {val}\nnames:\n{names}")
    return data_yaml


def _run(out: Path, source: str, kind: str, items: Iterable[_Image], opts: ImportOptions) -> Path:
    writer = DatasetWriter(out, source, kind, opts)
    for item in items:
        writer.add(item)
    return writer.close()


# ------------------------------------------------------------------------------------------------ xView


def _xview_items(geojson: Path, image_dir: Path, class_map: Mapping[int, int]) -> Iterator[_Image]:
    features = json.loads(Path(geojson).read_text())["features"]
    per_image: dict[str, list[dict[str, Any]]] = {}
    for f in features:
        props = f.get("properties") or {}
        per_image.setdefault(str(props.get("image_id")), []).append(props)
    for image_id in sorted(per_image):
        path = Path(image_dir) / image_id
        if not path.exists():
            continue  # the geojson covers all of xView train; a download may hold only some images
        objects, dropped = [], Counter[str]()
        for props in per_image[image_id]:
            try:
                type_id = int(props.get("type_id", -1))
            except (TypeError, ValueError):
                type_id = -1
            if type_id not in class_map:
                dropped[str(type_id)] += 1
                continue
            try:
                x0, y0, x1, y1 = (float(v) for v in str(props["bounds_imcoords"]).split(","))
            except (KeyError, ValueError):
                dropped["bad_bounds"] += 1
                continue
            if x1 <= x0 or y1 <= y0:
                dropped["bad_bounds"] += 1
                continue
            objects.append((class_map[type_id], _rect(x0, y0, x1, y1)))  # xView boxes are axis-aligned
        yield _Image(key=image_id, path=path, objects=objects, gsd_m=XVIEW_GSD_M, dropped=dropped)


def import_xview(
    geojson: Path,
    image_dir: Path,
    out: Path,
    class_map: Mapping[int, int] | None = None,
    opts: ImportOptions | None = None,
) -> Path:
    """Import xView (one GeoJSON for all images, pixel boxes in ``properties.bounds_imcoords``); return data.yaml.

    Only images named by the GeoJSON's ``image_id`` and present in ``image_dir`` are read (xView's unlabelled
    validation images are never taken as negatives). xView boxes are axis-aligned, so their labels are axis-aligned
    4-corner rectangles: looser than the true oriented outline of a rotated railcar. GSD is 0.3 m.
    """
    geojson = Path(geojson)
    source = f"xview:{geojson.resolve()}"
    items = _xview_items(geojson, Path(image_dir), XVIEW_CLASS_MAP if class_map is None else class_map)
    return _run(Path(out), source, "xview", items, opts or ImportOptions())


# ------------------------------------------------------------------------------------------------ DOTA


def parse_class_map(text: str | Mapping[str, str] | None) -> dict[str, int]:
    """``"category=railcar,other=container"`` (or a dict of the same) -> ``{"category": 0, "other": 1}``."""
    if not text:
        return {}
    pairs = text.items() if isinstance(text, Mapping) else (p.split("=", 1) for p in text.split(",") if p.strip())
    out = {}
    for pair in pairs:
        if len(pair) != 2:
            raise ValueError(f"class map entries look like category=railcar, got {pair!r}")
        src, dst = pair
        if dst.strip() not in CLASS_NAMES:
            raise ValueError(f"class map target must be one of {CLASS_NAMES}, got {dst!r}")
        out[_norm_name(src)] = CLASS_NAMES.index(dst.strip())
    return out


def read_dota_labels(path: Path) -> tuple[list[tuple[np.ndarray, str, int]], float | None]:
    """DOTA ``labelTxt`` lines -> [(corners, category, difficult)], and the ``gsd:`` header (None when absent/null)."""
    objects, gsd = [], None
    for line in Path(path).read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("imagesource:"):
            continue
        if line.startswith("gsd:"):
            try:
                gsd = float(line.split(":", 1)[1])
            except ValueError:
                gsd = None  # "gsd:null" / "gsd:None"
            continue
        parts = line.split()
        if len(parts) < 9:
            continue
        try:
            corners = np.array([float(v) for v in parts[:8]], float).reshape(4, 2)
        except ValueError:
            continue
        difficult = int(parts[9]) if len(parts) > 9 and parts[9].isdigit() else 0
        objects.append((corners, parts[8], difficult))
    return objects, (gsd if gsd and gsd > 0 else None)


def _dota_dirs(root: Path) -> list[tuple[Path, Path]]:
    """(images, labelTxt) folder pairs: ``root`` itself or its split folders (``train/``, ``val/``)."""
    pairs = []
    for d in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        labels = [p for p in sorted(d.glob("labelTxt*")) if p.is_dir()]
        if (d / "images").is_dir() and labels:
            pairs.append((d / "images", labels[0]))
    if not pairs:
        raise FileNotFoundError(f"no images/ + labelTxt/ folders under {root}")
    return pairs


def _dota_items(root: Path, class_map: Mapping[str, int], skip_difficult: bool) -> Iterator[_Image]:
    for image_dir, label_dir in _dota_dirs(root):
        for label_file in sorted(label_dir.glob("*.txt")):
            image = next(
                (
                    image_dir / f"{label_file.stem}{s}"
                    for s in (".png", *IMAGE_SUFFIXES)
                    if (image_dir / f"{label_file.stem}{s}").exists()
                ),
                None,
            )
            if image is None:
                continue
            raw, gsd = read_dota_labels(label_file)
            objects, dropped = [], Counter[str]()
            for corners, category, difficult in raw:
                cls = class_map.get(_norm_name(category))
                if cls is None or (skip_difficult and difficult):
                    dropped[category if cls is None else f"{category} (difficult)"] += 1
                    continue
                objects.append((cls, corners))
            yield _Image(
                key=image.relative_to(root).as_posix(), path=image, objects=objects, gsd_m=gsd, dropped=dropped
            )


def import_dota(
    root: Path,
    out: Path,
    class_map: str | Mapping[str, str] | None = None,
    skip_difficult: bool = False,
    opts: ImportOptions | None = None,
) -> Path:
    """Import a DOTA-format folder (``images/*.png``, ``labelTxt/*.txt``, optionally in ``train/``/``val/``).

    Label lines are ``x1 y1 x2 y2 x3 y3 x4 y4 category difficult`` in pixels, after optional ``imagesource:`` and
    ``gsd:`` headers. DOTA's own categories include neither railcars nor shipping containers, so the default map is
    empty and every object is dropped: pass ``class_map`` (``"category=railcar,..."``) to map categories of a
    DOTA-format set that has them. Returns data.yaml.
    """
    root = Path(root)
    cmap = parse_class_map(class_map if class_map is not None else DOTA_DEFAULT_CLASS_MAP)
    items = _dota_items(root, cmap, skip_difficult)
    return _run(Path(out), f"dota:{root.resolve()}", "dota", items, opts or ImportOptions())


# ------------------------------------------------------------------------------------------------ YOLO


def _yolo_names(root: Path, data_yaml: Path | None) -> dict[int, str]:
    candidates = [data_yaml] if data_yaml else [root / "data.yaml", root / "dataset.yaml", *sorted(root.glob("*.yaml"))]
    for y in candidates:
        if y and y.exists():
            names = (yaml.safe_load(y.read_text()) or {}).get("names")
            if isinstance(names, dict):
                return {int(k): str(v) for k, v in names.items()}
            if isinstance(names, list):
                return dict(enumerate(map(str, names)))
    for txt in (root / "classes.txt", root / "labels" / "classes.txt"):
        if txt.exists():
            return {i: n.strip() for i, n in enumerate(txt.read_text().splitlines()) if n.strip()}
    raise FileNotFoundError(f"no class names for {root}: add a data.yaml with names: or a classes.txt")


def _yolo_image_dirs(root: Path, data_yaml: Path | None) -> list[Path]:
    if data_yaml is None:
        return [root / "images"]
    cfg = yaml.safe_load(data_yaml.read_text()) or {}
    base = Path(cfg.get("path") or data_yaml.parent)
    if not base.is_absolute():
        base = (data_yaml.parent / base).resolve()
    dirs = []
    for key in ("train", "val", "test"):
        entries = cfg.get(key) or []
        for e in entries if isinstance(entries, list) else [entries]:
            p = Path(e) if Path(e).is_absolute() else base / e
            if p.is_dir() and p not in dirs:
                dirs.append(p)
    return dirs


def _label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder in the path becomes ``labels``, the suffix ``.txt``."""
    parts = list(image.parts)
    i = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:i], "labels", *parts[i + 1 :]).with_suffix(".txt")


def read_yolo_labels(path: Path, width: int, height: int) -> list[tuple[int, np.ndarray]]:
    """YOLO label lines -> [(class, corners in pixels)]: ``c cx cy w h`` (axis-aligned), ``c x1 y1 .. x4 y4`` (OBB)
    or a longer polygon (its minimum-area rectangle), all normalised to [0, 1]."""
    out: list[tuple[int, np.ndarray]] = []
    if not path.exists():
        return out
    wh = np.array([width, height], float)
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            cls, vals = int(float(parts[0])), np.array([float(v) for v in parts[1:]], float)
        except ValueError:
            continue
        if len(vals) == 4:
            cx, cy, w, h = vals
            corners = _rect(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2) * wh
        elif len(vals) == 8:
            corners = vals.reshape(4, 2) * wh
        elif len(vals) >= 6 and len(vals) % 2 == 0:
            corners = cv2.boxPoints(cv2.minAreaRect((vals.reshape(-1, 2) * wh).astype(np.float32))).astype(float)
        else:
            continue
        out.append((cls, corners))
    return out


def _yolo_items(
    root: Path, data_yaml: Path | None, class_map: Mapping[str, int], gsd_m: float | None
) -> Iterator[_Image]:
    names = _yolo_names(root, data_yaml)
    mapping = {i: class_map.get(_norm_name(n), YOLO_SYNONYMS.get(_norm_name(n))) for i, n in names.items()}
    for image_dir in _yolo_image_dirs(root, data_yaml):
        for image in sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            w, h = (1, 1)
            if _label_path(image).exists():
                with Image.open(image) as im:  # reads the header only
                    w, h = im.size
            objects, dropped = [], Counter[str]()
            for cls, corners in read_yolo_labels(_label_path(image), w, h):
                ours = mapping.get(cls)
                if ours is None:
                    dropped[names.get(cls, str(cls))] += 1
                    continue
                objects.append((ours, corners))
            try:
                key = image.relative_to(root).as_posix()
            except ValueError:
                key = image.name
            yield _Image(key=key, path=image, objects=objects, gsd_m=gsd_m, dropped=dropped)


def import_yolo(
    root: Path,
    out: Path,
    class_map: str | Mapping[str, str] | None = None,
    gsd_m: float | None = None,
    opts: ImportOptions | None = None,
) -> Path:
    """Import a YOLO or YOLO-OBB folder (``images/`` + ``labels/``, optionally with split subfolders) or data.yaml.

    Class names come from its ``data.yaml`` (``names:``) or ``classes.txt`` and are mapped by name
    (:data:`YOLO_SYNONYMS`, then ``class_map`` on top); other classes are dropped. Returns data.yaml.
    """
    root = Path(root)
    data_yaml = root if root.is_file() else None
    base = root.parent if data_yaml else root
    cmap = parse_class_map(class_map)
    items = _yolo_items(base, data_yaml, cmap, gsd_m)
    return _run(Path(out), f"yolo:{root.resolve()}", "yolo", items, opts or ImportOptions())


# ------------------------------------------------------------------------------------------------ combined


@dataclass(frozen=True)
class SourceSpec:
    """One ``kind:path[,path]`` source as given on the command line."""

    kind: str
    paths: tuple[Path, ...]


def parse_source(text: str) -> SourceSpec:
    """``xview:GEOJSON,IMAGES`` | ``dota:ROOT`` | ``yolo:ROOT_OR_YAML`` | ``reviews:DIR`` (``wagon-detector
    export-reviews``) | a bare data.yaml or folder (YOLO)."""
    kind, sep, rest = text.partition(":")
    if sep and kind.lower() in SOURCE_KINDS:
        kind = kind.lower()
        paths = tuple(Path(p) for p in rest.split(",") if p)
    else:
        kind, paths = "yolo", (Path(text),)
    expected = 2 if kind == "xview" else 1
    if len(paths) != expected:
        raise ValueError(f"{kind} source needs {expected} path(s): {text!r}")
    return SourceSpec(kind, paths)


def build_dataset(
    sources: Sequence[str],
    out: Path,
    val_share: float = 0.1,
    class_map: str | Mapping[str, str] | None = None,
    keep_negatives: bool = False,
    target_gsd_m: float | None = None,
    opts: ImportOptions | None = None,
    synthetic_mix: int | None = None,
) -> Path:
    """Import every source (see :func:`parse_source`) into one dataset under ``out``; return its data.yaml.

    ``class_map`` applies to DOTA sources and adds to the YOLO name synonyms. An earlier dataset in ``out`` is
    removed first; a folder holding anything else is refused. A ``reviews:`` source (already at the working GSD;
    its tiles without objects are kept: the analyst marked every object) brings ``synthetic_mix`` synthetic chips
    with it (default :data:`SYNTHETIC_PER_REVIEW_TILE` per review tile; 0: none).
    """
    out = Path(out)
    if out.exists():
        ours = {"images", "labels", "data.yaml", "manifest.json", ".complete"}
        if not {p.name for p in out.iterdir()} <= ours:
            raise FileExistsError(f"{out} holds files that are not an imported dataset; choose an empty folder")
        shutil.rmtree(out)
    base = opts or ImportOptions()
    opts = ImportOptions(
        **{
            **{k: getattr(base, k) for k in ImportOptions.__dataclass_fields__},
            "val_share": val_share,
            "keep_negatives": keep_negatives,
            "target_gsd_m": target_gsd_m,
        }
    )
    data_yaml = _skeleton(out)
    review_tiles = 0
    for text in sources:
        spec = parse_source(text)
        if spec.kind == "reviews":
            manifest = json.loads((spec.paths[0] / "manifest.json").read_text())
            review_tiles += len(manifest.get("tiles", []))
            reviewed = ImportOptions(
                **{
                    **{k: getattr(opts, k) for k in ImportOptions.__dataclass_fields__},
                    "keep_negatives": True,
                    "target_gsd_m": None,
                }
            )
            data_yaml = import_yolo(spec.paths[0] / "data.yaml", out, opts=reviewed)
        elif spec.kind == "xview":
            data_yaml = import_xview(spec.paths[0], spec.paths[1], out, opts=opts)
        elif spec.kind == "dota":
            data_yaml = import_dota(spec.paths[0], out, class_map=class_map, opts=opts)
        else:
            data_yaml = import_yolo(spec.paths[0], out, class_map=class_map, opts=opts)
    n_synth = SYNTHETIC_PER_REVIEW_TILE * review_tiles if synthetic_mix is None else synthetic_mix
    if review_tiles and n_synth > 0:
        data_yaml = _mix_synthetic(out, n_synth, opts)
    return data_yaml


def _mix_synthetic(out: Path, n: int, opts: ImportOptions) -> Path:
    """Add ``n`` synthetic chips (seeds from 8,000,000: neither the usual training seeds nor the held-out ones)."""
    from training.synth import write_dataset

    tmp = out / "_synthetic"
    try:
        write_dataset(tmp, n, max(1, n // 10), seed=8_000_000, workers=1)
        mixed = ImportOptions(
            **{
                **{k: getattr(opts, k) for k in ImportOptions.__dataclass_fields__},
                "keep_negatives": True,
                "target_gsd_m": None,
            }
        )
        return import_yolo(tmp / "data.yaml", out, opts=mixed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _skeleton(out: Path) -> Path:
    """Create an empty dataset skeleton under ``out`` and return its data.yaml."""
    for split in ("train", "val"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    return write_data_yaml(out)
