"""CLI for scenes: detect a GeoTIFF with a footprint and a progress bar, reprocess a facility's archive."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app import cli
from app.core import validation
from app.core.settings import get_settings
from app.database import Store
from app.detection import pipeline
from app.usecases import facilities, images, observations, scenes
from tests.support.geodata import BlobDetector, blob_scene, make_geotiff

CENTRES = ((100.0, 80.0), (250.0, 200.0), (330.0, 60.0))


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("WAGON_DATABASE_URL", f"sqlite:///{tmp_path / 'wagon.db'}")
    monkeypatch.setenv("WAGON_ARCHIVE_DIR", str(tmp_path / "originals"))
    monkeypatch.setattr(images, "load_configured_detector", lambda _s: BlobDetector("cli"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_detect_geotiff_with_footprint_and_progress(
    env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gs = make_geotiff(env / "s.tif", blob_scene(centres=CENTRES), 0.5)
    ring = gs.pixel_to_lonlat(np.array([[50, 20], [280, 20], [280, 250], [50, 250], [50, 20]]))
    fp = env / "fp.geojson"
    fp.write_text(
        json.dumps(
            {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring.tolist()]}}
        )
    )
    monkeypatch.setattr(pipeline, "WINDOW_WORK_PX", 100)  # several windows: the bar shows
    assert cli.main(["detect", str(gs.path), "--footprint", str(fp)]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["counts"]["railcar"] == 2 and out["coverage"]["share"] > 0.99
    assert out["detections"][0]["obb_lonlat"] and out["geo"]["crs"] == "EPSG:32652"
    assert "windows" in captured.err and "#" in captured.err


def test_reprocess_command(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = get_settings()
    store = Store(settings.database_url)
    facilities.create_facility(store, "yard", "Yard", "rail")
    gs = make_geotiff(env / "s.tif", blob_scene(centres=CENTRES), 0.5)
    sha, path = scenes.archive_bytes(settings.archive_dir, gs.path.read_bytes())
    analysis = scenes.analyse_with_settings(BlobDetector("old"), path, settings)
    rec = images.record_analysis(store, "yard", validation.parse_timestamp("2024-01-01T00:00:00Z"), analysis)
    store.dispose()
    assert cli.main(["reprocess", "yard"]) == 0
    out = capsys.readouterr().out
    assert f"observation {rec.id}:" in out and "1 of 1" in out
    store = Store(settings.database_url)
    assert observations.get_observation(store, rec.id).model == {"name": "blob-detector", "version": "cli"}
    store.dispose()
    assert cli.main(["reprocess", "nope"]) == 2


def test_scene_command_counts_every_covered_facility_once(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``wagon-detector scene PATH``: one observation per covered facility; the same scene again adds none."""
    settings = get_settings()
    store = Store(settings.database_url)
    gs = make_geotiff(env / "s.tif", blob_scene(centres=CENTRES), 0.5)

    def fp(x0: float, y0: float, x1: float, y1: float) -> dict:
        ring = gs.pixel_to_lonlat(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]))
        return {"type": "Polygon", "coordinates": [ring.tolist()]}

    facilities.create_facility(store, "west", "West", "rail", footprint=fp(50, 20, 280, 250))
    facilities.create_facility(store, "east", "East", "rail", footprint=fp(300, 30, 380, 100))
    facilities.create_facility(store, "away", "Away", "rail", footprint=fp(5000, 5000, 5100, 5100))
    store.dispose()
    args = ["scene", str(gs.path), "--captured-at", "2024-01-01T00:00:00Z"]
    assert cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    made = {o["facility_id"]: o["created"] for o in out["observations"]}
    assert made == {"west": True, "east": True}
    assert out["skipped"] == [{"facility_id": "away", "reason": "outside the scene"}]
    assert cli.main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert {o["facility_id"]: o["created"] for o in again["observations"]} == {"west": False, "east": False}
    store = Store(settings.database_url)
    try:
        counts = [o.counts["railcar"] for f in ("west", "east") for o in observations.list_observations(store, f)]
    finally:
        store.dispose()
    assert counts == [2, 1]
    assert cli.main(["scene", str(gs.path)]) == 2
    assert "captured_at is required" in capsys.readouterr().err
