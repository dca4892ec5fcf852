"""Reviews become training data: export as a YOLO-OBB dataset, and import it for training with synthetic chips."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.database import Store
from app.usecases.review_export import GREY, export_reviews
from tests.support.fakes import ScriptedCandidateDetector, railcar_box
from tests.support.images import encode_image, gradient_rgb

BOXES = [("railcar", 0.9, railcar_box(10 + 40 * i, 20)) for i in range(4)]
IGNORE = [[150.0, 150.0], [190.0, 150.0], [190.0, 190.0], [150.0, 190.0]]


@pytest.fixture
def reviewed(make_client: Callable[..., Any]) -> Any:
    client = make_client(detector=ScriptedCandidateDetector(BOXES))
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"})
    ids = []
    for day in range(3):
        img = gradient_rgb(200, 200)
        img[0, 0] = day
        r = client.post(
            "/v1/facilities/yard/images",
            files={"file": ("chip.png", encode_image(img), "image/png")},
            data={"captured_at": f"2024-01-0{day + 1}T10:00:00Z", "gsd_m": "0.4"},
        )
        ids.append(r.json()["id"])
    objects = [{"class": "railcar", "obb": [list(p) for p in b]} for _, _, b in BOXES]
    client.put(f"/v1/observations/{ids[0]}/review", json={"objects": objects, "ignore": [IGNORE], "exhaustive": True})
    client.put(f"/v1/observations/{ids[1]}/review", json={"objects": objects[:1], "exhaustive": False})
    client.put(f"/v1/observations/{ids[2]}/review", json={"counts": {"railcar": 4}})
    return client


def test_export_writes_only_exhaustive_box_reviews_with_labels_and_a_manifest(reviewed: Any, tmp_path: Path) -> None:
    runtime = reviewed.app.state.runtime
    out = tmp_path / "reviews"
    summary = export_reviews(runtime.store, runtime.settings, out, working_gsd_m=0.4, tile_px=128, overlap_px=32)
    assert summary.images == 1 and summary.objects == 4 and summary.skipped == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tiles"] and {t["facility"] for t in manifest["tiles"]} == {"yard"}
    assert all(t["reviewer"] and t["review"] for t in manifest["tiles"]) and "licence" in manifest
    labels = [line for p in out.glob("labels/*/*.txt") for line in p.read_text().splitlines()]
    assert len(labels) >= 4  # every railcar in at least one tile (some twice, in overlaps)
    assert all(line.split()[0] == "0" and len(line.split()) == 9 for line in labels)
    assert all(0.0 <= float(v) <= 1.0 for line in labels for v in line.split()[1:])
    tile = next(p for p in out.glob("images/*/*.png") if p.name.endswith("-128-128.png") or "-72-72" in p.name)
    pixels = np.asarray(Image.open(tile))
    assert (pixels == GREY).all(axis=2).any()  # the undecided region is painted out
    data_yaml = (out / "data.yaml").read_text()
    assert "train: images/train" in data_yaml and "railcar" in data_yaml
    with pytest.raises(FileExistsError):
        export_reviews(runtime.store, runtime.settings, out, working_gsd_m=0.4)


def test_training_data_from_reviews_mixes_in_synthetic_chips(reviewed: Any, tmp_path: Path) -> None:
    from training.importers import build_dataset

    runtime = reviewed.app.state.runtime
    export_reviews(runtime.store, runtime.settings, tmp_path / "reviews", working_gsd_m=0.4, tile_px=128, overlap_px=32)
    data_yaml = build_dataset([f"reviews:{tmp_path / 'reviews'}"], tmp_path / "ds", synthetic_mix=2)
    manifest = json.loads((data_yaml.parent / "manifest.json").read_text())
    sources = {s for s in json.dumps(manifest).split('"') if s.startswith("yolo:")}
    assert any("reviews" in s for s in sources) and any("_synthetic" in s for s in sources)
    assert len(list((tmp_path / "ds" / "images").glob("*/*"))) >= 3
    assert not (tmp_path / "ds" / "_synthetic").exists()


def test_export_of_a_store_without_reviews_is_empty(tmp_path: Path, store: Store, settings: Any) -> None:
    summary = export_reviews(store, settings, tmp_path / "none", working_gsd_m=0.4)
    assert (summary.images, summary.tiles) == (0, 0)


def test_export_refuses_tiles_that_cannot_step(reviewed: Any, tmp_path: Path) -> None:
    runtime = reviewed.app.state.runtime
    with pytest.raises(ValueError, match="overlap"):
        export_reviews(runtime.store, runtime.settings, tmp_path / "x", working_gsd_m=0.4, tile_px=128, overlap_px=128)
