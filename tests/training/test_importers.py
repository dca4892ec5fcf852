"""Tests of training.importers (xView, DOTA, YOLO folders -> one YOLO-OBB set) and train.py's ``--data`` sources.

Fixtures live in tests/data/importers/ (labels hand-written in each real format; images made by make_images.py).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from shapely.geometry import Polygon

from tests.support import DATA_DIR
from training import importers
from training.importers import (
    XVIEW_CLASS_MAP,
    ImportOptions,
    build_dataset,
    import_dota,
    import_xview,
    import_yolo,
    parse_class_map,
    parse_source,
    read_dota_labels,
    split_of,
)

FIXTURES = DATA_DIR / "importers"
SMALL = ImportOptions(tile=100, overlap=20)  # xView fixture image is 200 x 150: 3 x 2 chips at x 0/50/100, y 0/50


def _load_make_images() -> Callable[[Path], None]:
    spec = importlib.util.spec_from_file_location("make_images", FIXTURES / "make_images.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_images


@pytest.fixture
def fx(tmp_path: Path) -> Path:
    """A copy of the fixture folder with its images written."""
    root = tmp_path / "fixtures"
    shutil.copytree(FIXTURES, root, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    _load_make_images()(root)
    return root


def _manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())


def _labels(out: Path, chip: dict[str, Any]) -> np.ndarray:
    """Label rows (class + 8 coordinates) of one chip of the manifest."""
    f = out / "labels" / chip["split"] / f"{Path(chip['file']).stem}.txt"
    rows = [ln.split() for ln in f.read_text().splitlines() if ln.strip()]
    assert all(len(r) == 9 for r in rows)
    return np.array(rows, float).reshape(-1, 9)


def _chip(m: dict[str, Any], original: str, x0: int, y0: int) -> dict[str, Any] | None:
    return next((c for c in m["chips"] if c["original"] == original and c["window"][:2] == [x0, y0]), None)


def _check_dataset(out: Path) -> None:
    """Every chip has an image and a label file with coordinates in [0, 1]; no original image is in both splits."""
    m = _manifest(out)
    split_of_original: dict[tuple[str, str], str] = {}
    for c in m["chips"]:
        assert (out / c["file"]).is_file()
        rows = _labels(out, c)
        assert ((rows[:, 1:] >= 0) & (rows[:, 1:] <= 1)).all()
        assert [int((rows[:, 0] == i).sum()) for i in (0, 1)] == [c["railcar"], c["container"]]
        key = (c["source"], c["original"])
        assert split_of_original.setdefault(key, c["split"]) == c["split"]
    written = {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}
    assert written == {c["file"] for c in m["chips"]}
    cfg = yaml.safe_load((out / "data.yaml").read_text())
    assert cfg["names"] == {0: "railcar", 1: "container"} and Path(cfg["path"]) == out.resolve()


# ------------------------------------------------------------------------------------------------ xView


def test_xview_class_ids_are_the_railway_and_container_classes() -> None:
    # 33 Railway Vehicle, 34 Passenger Car, 35 Cargo Car, 36 Flat Car, 37 Tank car, 38 Locomotive; 91 container.
    assert XVIEW_CLASS_MAP == {33: 0, 34: 0, 35: 0, 36: 0, 37: 0, 38: 0, 91: 1}
    for not_ours in (17, 18, 19, 20, 21, 23, 32, 51, 55, 89):  # road vehicles, cranes, container ship / lot
        assert not_ours not in XVIEW_CLASS_MAP


def test_xview_maps_classes_and_tiles_with_clipping(fx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    data_yaml = import_xview(fx / "xview" / "xView_train.geojson", fx / "xview" / "train_images", out, opts=SMALL)
    assert data_yaml == out / "data.yaml"
    _check_dataset(out)
    m = _manifest(out)
    src = m["sources"][0]
    # 2001.tif is named by the GeoJSON but absent; 105.tif holds only a building (negative, not written)
    assert src["images_seen"] == 2 and {c["original"] for c in m["chips"]} == {"104.tif"}
    assert src["dropped_categories"] == {"17": 1, "18": 1, "55": 1, "73": 1, "89": 1}
    assert all(c["gsd_m"] == pytest.approx(0.3) for c in m["chips"])
    by_window = {tuple(c["window"][:2]): (c["railcar"], c["container"]) for c in m["chips"]}
    # railcar A (60-100 x 10-25) fits chips x0=0 and 50; railcar C (85-125 x 40-48) fits chip 50 and shows 62.5%
    # in chip 100 (kept, clipped) but 37.5% in chip 0 (dropped); the container sits in the lower row at x 130-142
    assert by_window == {(0, 0): (1, 0), (50, 0): (2, 0), (100, 0): (1, 0), (50, 50): (0, 1), (100, 50): (0, 1)}
    clipped = _labels(out, _chip(m, "104.tif", 100, 0))[0]
    np.testing.assert_allclose(clipped, [0, 0, 0.40, 0.25, 0.40, 0.25, 0.48, 0, 0.48], atol=1e-6)
    full = _labels(out, _chip(m, "104.tif", 50, 0))
    np.testing.assert_allclose(full[0], [0, 0.10, 0.10, 0.50, 0.10, 0.50, 0.25, 0.10, 0.25], atol=1e-6)
    for c in m["chips"]:  # xView boxes stay axis-aligned rectangles
        for row in _labels(out, c):
            assert len(set(row[1::2].round(6))) == 2 and len(set(row[2::2].round(6))) == 2


def test_xview_negatives_only_with_flag(fx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    opts = ImportOptions(tile=100, overlap=20, keep_negatives=True)
    import_xview(fx / "xview" / "xView_train.geojson", fx / "xview" / "train_images", out, opts=opts)
    _check_dataset(out)
    m = _manifest(out)
    assert sum(c["original"] == "104.tif" for c in m["chips"]) == 6  # every chip, empty ones too
    negative = [c for c in m["chips"] if c["original"] == "105.tif"]
    assert len(negative) == 1 and negative[0]["window"] == [0, 0, 100, 80]  # small enough: one whole chip
    assert negative[0]["file"].endswith(".jpg")  # GeoTIFF re-encoded
    assert (out / "labels" / negative[0]["split"] / f"{Path(negative[0]['file']).stem}.txt").read_text() == ""


def test_split_is_deterministic_and_per_original_image(fx: Path, tmp_path: Path) -> None:
    assert split_of("xview", "104.tif", 0.1) == split_of("xview", "104.tif", 0.1)
    assert {split_of("x", str(i), 0.0) for i in range(200)} == {"train"}
    assert {split_of("x", str(i), 1.0) for i in range(200)} == {"val"}
    share = sum(split_of("dota", f"images/P{i:04d}.png", 0.1) == "val" for i in range(2000)) / 2000
    assert 0.07 < share < 0.13
    geo, imgs = fx / "xview" / "xView_train.geojson", fx / "xview" / "train_images"
    runs = []
    for name in ("a", "b"):
        import_xview(geo, imgs, tmp_path / name, opts=SMALL)
        runs.append(sorted((Path(c["file"]).name, c["split"]) for c in _manifest(tmp_path / name)["chips"]))
    assert runs[0] == runs[1]
    assert {s for _, s in runs[0]} == {split_of("xview", "104.tif", SMALL.val_share)}
    # the split follows the image, not where the source lies on disk
    moved = tmp_path / "elsewhere"
    shutil.copytree(fx / "xview", moved)
    import_xview(moved / "xView_train.geojson", moved / "train_images", tmp_path / "c", opts=SMALL)
    assert {c["split"] for c in _manifest(tmp_path / "c")["chips"]} == {s for _, s in runs[0]}


# ------------------------------------------------------------------------------------------------ DOTA


def test_read_dota_labels_headers_and_difficult(fx: Path) -> None:
    objects, gsd = read_dota_labels(fx / "dota" / "labelTxt" / "P0001.txt")
    assert gsd == pytest.approx(0.5) and len(objects) == 5
    assert [(o[1], o[2]) for o in objects][:3] == [("large-vehicle", 0), ("large-vehicle", 0), ("large-vehicle", 1)]
    np.testing.assert_allclose(objects[0][0], [[39.7, 55.2], [45.7, 44.8], [80.3, 64.8], [74.3, 75.2]])
    assert read_dota_labels(fx / "dota" / "labelTxt" / "P0002.txt")[1] is None  # "gsd:null"


def test_dota_default_class_map_is_empty(fx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    import_dota(fx / "dota", out, opts=ImportOptions(tile=128, overlap=32))
    m = _manifest(out)
    assert m["chips"] == [] and m["sources"][0]["images_seen"] == 2
    assert m["sources"][0]["dropped_categories"] == {
        "container-crane": 1,
        "large-vehicle": 3,
        "ship": 1,
        "small-vehicle": 1,
        "storage-tank": 1,
    }


def test_dota_class_map_and_rotated_clipping(fx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    opts = ImportOptions(tile=128, overlap=32)  # P0001 is 300 x 200: chips at x 0/86/172, y 0/72
    import_dota(fx / "dota", out, class_map="large-vehicle=railcar,container-crane=container", opts=opts)
    _check_dataset(out)
    m = _manifest(out)
    assert {c["original"]: c["gsd_m"] for c in m["chips"]} == {"images/P0001.png": 0.5, "images/P0002.png": None}
    rows = _labels(out, _chip(m, "images/P0001.png", 0, 0))
    assert rows[:, 0].tolist() == [0, 0]
    # the first vehicle lies wholly inside: its rotated corners come through unchanged
    np.testing.assert_allclose(
        rows[0, 1:].reshape(4, 2) * 128, [[39.7, 55.2], [45.7, 44.8], [80.3, 64.8], [74.3, 75.2]], atol=1e-3
    )
    # the second (centre 120,100, rotated -20 deg) is cut at x = 128: a rotated rectangle of the visible part
    original = Polygon([[107.6, 109.8], [104.2, 100.4], [132.4, 90.2], [135.8, 99.6]])
    clipped = Polygon(rows[1, 1:].reshape(4, 2) * 128)
    assert rows[1, 1::2].max() == pytest.approx(1.0)
    assert 0.6 * original.area <= clipped.area < original.area
    assert clipped.intersection(original).area / clipped.area > 0.9
    assert _chip(m, "images/P0001.png", 172, 72)["railcar"] == 1  # the difficult one
    assert _chip(m, "images/P0001.png", 172, 0) is None  # only the unmapped ship there
    assert m["sources"][0]["dropped_categories"] == {"ship": 1, "small-vehicle": 1, "storage-tank": 1}

    out2 = tmp_path / "nodifficult"
    import_dota(fx / "dota", out2, class_map={"large-vehicle": "railcar"}, skip_difficult=True, opts=opts)
    assert _chip(_manifest(out2), "images/P0001.png", 172, 72) is None
    assert _manifest(out2)["sources"][0]["dropped_categories"]["large-vehicle (difficult)"] == 1


def test_dota_resamples_to_target_gsd(fx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    opts = ImportOptions(tile=160, overlap=32, target_gsd_m=1.0)
    import_dota(fx / "dota", out, class_map="large-vehicle=railcar,container-crane=container", opts=opts)
    _check_dataset(out)
    m = _manifest(out)
    p1 = [c for c in m["chips"] if c["original"] == "images/P0001.png"]
    assert len(p1) == 1 and p1[0]["window"] == [0, 0, 150, 100] and p1[0]["scale"] == 0.5  # 0.5 m -> 1 m
    assert p1[0]["gsd_m"] == pytest.approx(1.0) and p1[0]["railcar"] == 3
    np.testing.assert_allclose(_labels(out, p1[0])[0, 1:3], [39.7 / 2 / 150, 55.2 / 2 / 100], atol=1e-5)
    p2 = [c for c in m["chips"] if c["original"] == "images/P0002.png"]
    assert [c["scale"] for c in p2] == [1.0]  # unknown GSD: left as it is


def test_class_map_parsing() -> None:
    assert parse_class_map("large-vehicle=railcar, Container Crane=container") == {
        "large_vehicle": 0,
        "container_crane": 1,
    }
    assert parse_class_map(None) == {}
    with pytest.raises(ValueError):
        parse_class_map("ship=boat")
    with pytest.raises(ValueError):
        parse_class_map("ship")


# ------------------------------------------------------------------------------------------------ YOLO


def test_yolo_maps_names_converts_boxes_and_copies_small_images(fx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    import_yolo(fx / "yolo", out)
    _check_dataset(out)
    m = _manifest(out)
    assert m["sources"][0]["dropped_categories"] == {"car": 2}
    chips = {c["original"]: c for c in m["chips"]}
    assert set(chips) == {"images/train/a.png", "images/val/b.jpg"}  # empty.png has no label: negative
    # the source's own split is not kept: both images hash into train, so data.yaml validates on train
    assert {c["split"] for c in chips.values()} == {"train"}
    assert yaml.safe_load((out / "data.yaml").read_text())["val"] == "images/train"
    a = _labels(out, chips["images/train/a.png"])
    # "Wagon" -> railcar: cx cy w h = .25 .5 .25 .125 becomes 4 corners; "shipping container" -> container
    np.testing.assert_allclose(a[0], [0, 0.125, 0.4375, 0.375, 0.4375, 0.375, 0.5625, 0.125, 0.5625], atol=1e-6)
    assert a[1, 0] == 1
    np.testing.assert_allclose(
        _labels(out, chips["images/val/b.jpg"])[0], [0, 0.1, 0.1, 0.4, 0.1, 0.4, 0.25, 0.1, 0.25], atol=1e-6
    )  # OBB kept
    # images no larger than a chip are copied byte for byte
    assert (out / chips["images/val/b.jpg"]["file"]).read_bytes() == (fx / "yolo/images/val/b.jpg").read_bytes()

    neg = tmp_path / "neg"
    import_yolo(fx / "yolo", neg, opts=ImportOptions(keep_negatives=True))
    assert "images/train/empty.png" in {c["original"] for c in _manifest(neg)["chips"]}


def test_yolo_classes_txt_data_yaml_and_extra_names(fx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    import_yolo(fx / "yolo_classes_txt", out)
    (chip,) = _manifest(out)["chips"]
    assert (chip["railcar"], chip["container"]) == (1, 0)  # Locomotive -> railcar, Truck dropped
    out2 = tmp_path / "out2"
    import_yolo(fx / "yolo_classes_txt", out2, class_map="truck=container")
    (chip,) = _manifest(out2)["chips"]
    assert (chip["railcar"], chip["container"]) == (1, 1)
    out3 = tmp_path / "out3"
    import_yolo(fx / "yolo" / "data.yaml", out3)  # a data.yaml names its folders and classes
    assert {c["original"] for c in _manifest(out3)["chips"]} == {"images/train/a.png", "images/val/b.jpg"}
    (fx / "yolo_classes_txt" / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="class names"):
        import_yolo(fx / "yolo_classes_txt", tmp_path / "out4")


def test_yolo_large_images_are_tiled(fx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    import_yolo(fx / "yolo", out, opts=ImportOptions(tile=32, overlap=8))
    _check_dataset(out)
    windows = {tuple(c["window"]) for c in _manifest(out)["chips"] if c["original"] == "images/train/a.png"}
    assert windows and all(w[2] <= 32 and w[3] <= 32 for w in windows)


# ------------------------------------------------------------------------------------------------ combined


def test_parse_source() -> None:
    assert parse_source("xview:a.geojson,imgs") == importers.SourceSpec("xview", (Path("a.geojson"), Path("imgs")))
    assert parse_source("DOTA:root").kind == "dota"
    assert parse_source("data/synth/data.yaml") == importers.SourceSpec("yolo", (Path("data/synth/data.yaml"),))
    with pytest.raises(ValueError):
        parse_source("xview:only.geojson")


def test_build_dataset_combines_sources(fx: Path, tmp_path: Path) -> None:
    out = tmp_path / "combined"
    (out / "images" / "train").mkdir(parents=True)
    (out / "images" / "train" / "stale.jpg").write_bytes(b"")  # an earlier import's leftover is cleared
    sources = [
        f"xview:{fx / 'xview' / 'xView_train.geojson'},{fx / 'xview' / 'train_images'}",
        f"yolo:{fx / 'yolo'}",
        str(fx / "yolo_classes_txt"),
    ]
    data_yaml = build_dataset(sources, out, val_share=0.5, opts=SMALL)
    assert data_yaml == out / "data.yaml" and not (out / "images" / "train" / "stale.jpg").exists()
    _check_dataset(out)
    m = _manifest(out)
    assert [s["kind"] for s in m["sources"]] == ["xview", "yolo", "yolo"]
    assert {c["source"].split(":")[0] for c in m["chips"]} == {"xview", "yolo"}
    totals = {s["source"]: s["totals"] for s in m["sources"]}
    assert sum(t[sp]["railcar"] for t in totals.values() for sp in ("train", "val")) == 4 + 2 + 1
    assert sum(t[sp]["container"] for t in totals.values() for sp in ("train", "val")) == 2 + 1
    for c in m["chips"]:
        assert c["split"] == split_of(c["source"].split(":")[0], c["original"], 0.5)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError):
        build_dataset(sources, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").exists()


# ------------------------------------------------------------------------------------------------ train.py


def test_train_data_argument_builds_and_caches(fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from training import train as train_module

    calls: list[Path] = []

    def fake_train(data: Path, *args: Any, **kwargs: Any) -> Path:
        calls.append(Path(data))
        return tmp_path / "best.pt"

    monkeypatch.setattr(train_module, "train", fake_train)
    project = tmp_path / "runs"
    # a single data.yaml goes straight to training, as before
    train_module.main(["--data", "some/data.yaml", "--project", str(project)])
    assert calls[-1] == Path("some/data.yaml") and not (project / "datasets").exists()

    argv = [
        "--data",
        f"xview:{fx / 'xview' / 'xView_train.geojson'},{fx / 'xview' / 'train_images'}",
        "--data",
        f"dota:{fx / 'dota'}",
        "--data",
        str(fx / "yolo" / "data.yaml"),
        "--class-map",
        "container-crane=container",
        "--project",
        str(project),
        "--epochs",
        "1",
    ]
    train_module.main(argv)
    data_yaml = calls[-1]
    assert data_yaml.parent.parent == project / "datasets" and data_yaml.is_file()
    m = _manifest(data_yaml.parent)
    assert [s["kind"] for s in m["sources"]] == ["xview", "dota", "yolo"]
    assert sum(c["container"] for c in m["chips"] if c["source"].startswith("dota:")) == 1
    stamp = (data_yaml.parent / ".complete").stat().st_mtime_ns
    train_module.main(argv)  # unchanged sources and options: the cached dataset is reused
    assert calls[-1] == data_yaml and (data_yaml.parent / ".complete").stat().st_mtime_ns == stamp
    train_module.main([*argv, "--val-share", "0.5"])  # other options: another dataset
    assert calls[-1] != data_yaml


@pytest.mark.slow
def test_one_epoch_on_imported_data(fx: Path, tmp_path: Path) -> None:
    """One CPU epoch at imgsz 64 on the imported YOLO fixture: Ultralytics reads what the importers write."""
    from training.train import prepare_data, train

    data = prepare_data([f"yolo:{fx / 'yolo'}"], tmp_path / "datasets", val_share=0.5)
    best = train(data, None, epochs=1, imgsz=64, batch=2, device="cpu", project=tmp_path / "runs", name="t", workers=0)
    assert best.exists()
