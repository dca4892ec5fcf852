"""The ``wagon-detector`` command line."""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app import __version__, cli
from app.core.settings import get_settings
from app.usecases import images
from tests.support.images import encode_image, gradient_rgb


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("WAGON_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("serve", "detect", "train", "evaluate"):
        assert cmd in out


def test_no_command_is_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2


def test_detect_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["detect", str(tmp_path / "nope.png")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_detect_bad_image_fails_before_loading_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(_settings: Any) -> Any:
        raise AssertionError("model must not be loaded for bad input")

    monkeypatch.setattr(images, "load_configured_detector", boom)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert cli.main(["detect", str(bad)]) == 2
    assert "not a recognised image" in capsys.readouterr().err
    good = tmp_path / "good.png"
    good.write_bytes(encode_image(gradient_rgb(), "PNG"))
    assert cli.main(["detect", str(good), "--gsd-m", "50"]) == 2
    assert "gsd_m" in capsys.readouterr().err


def test_detect_missing_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.png"
    good.write_bytes(encode_image(gradient_rgb(), "PNG"))
    assert cli.main(["detect", str(good), "--model", str(tmp_path / "missing.pt")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("command, module", [("train", "training.train"), ("evaluate", "training.evaluate")])
def test_train_and_evaluate_delegate(command: str, module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType(module)

    def fake_main(argv: list[str]) -> int:
        seen.append(list(argv))
        return 3

    fake.main = fake_main
    monkeypatch.setitem(sys.modules, module, fake)
    assert cli.main([command, "--epochs", "2", "--help"]) == 3
    assert seen == [["--epochs", "2", "--help"]]


def test_serve_runs_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    import os

    monkeypatch.setitem(os.environ, "WAGON_INFERENCE_THREADS", "1")  # restored (removed) after the test
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "8123", "--workers", "2"]) == 0
    (call,) = calls
    assert call["host"] == "0.0.0.0" and call["port"] == 8123 and call["workers"] == 2
    assert call["app"] == "app.api.main:create_app" and call["factory"] is True
    assert int(os.environ["WAGON_INFERENCE_THREADS"]) * 2 <= max(2, len(os.sched_getaffinity(0)))


@pytest.mark.slow
def test_detect_prints_json(
    detector: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "load_configured_detector", lambda _settings: detector)  # reuse the loaded model
    chip = tmp_path / "chip.png"
    chip.write_bytes(encode_image(gradient_rgb(), "PNG"))
    assert cli.main(["detect", str(chip), "--gsd-m", "0.5", "--pretty"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"counts", "detections", "model", "image", "timing_ms"}
    assert set(out["counts"]) >= {"railcar", "container"}
    assert sum(out["counts"].values()) == len(out["detections"])
    assert out["image"]["width"] == 64 and out["image"]["gsd_m"] == 0.5
    assert out["model"] == {"name": detector.name, "version": detector.version}


def test_threads_per_worker_never_oversubscribes() -> None:
    from app.cli import threads_per_worker

    assert threads_per_worker(1, None, cores=2) == 2
    assert threads_per_worker(2, None, cores=2) == 1
    assert threads_per_worker(3, None, cores=2) == 1
    assert threads_per_worker(1, 8, cores=4) == 4
    assert threads_per_worker(2, 1, cores=8) == 1
    for workers in range(1, 5):
        for requested in (None, 1, 2, 16):
            assert workers * threads_per_worker(workers, requested, cores=4) <= max(4, workers)


def test_review_and_export_reviews(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`review` records counts or a JSON body and withdraws; `export-reviews` writes the box reviews."""
    from datetime import UTC, datetime

    from app.database import Store
    from app.usecases import facilities, imports

    store = Store(get_settings().database_url)
    facilities.create_facility(store, "yard", "Yard", "rail")
    rec = imports.import_counts(
        store, "yard", [imports.ImportRow(datetime(2024, 1, 1, tzinfo=UTC), {"railcar": 5})]
    ).observations[0]
    store.dispose()
    assert cli.main(["review", str(rec.id), "--counts", "railcar=7", "container=1", "--reviewer", "ana"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["verified_counts"] == {"railcar": 7, "container": 1} and out["review"]["reviewer"] == "ana"
    assert cli.main(["review", str(rec.id), "--counts", "railcar=x"]) == 2
    assert "CLASS=N" in capsys.readouterr().err
    body = tmp_path / "review.json"
    body.write_text(json.dumps({"objects": []}))
    assert cli.main(["review", str(rec.id), "--file", str(body)]) == 2  # boxes need an image
    assert "no image" in capsys.readouterr().err
    assert cli.main(["review", str(rec.id), "--withdraw"]) == 0
    assert json.loads(capsys.readouterr().out)["review"] is None
    assert cli.main(["review", str(rec.id), "--withdraw"]) == 2
    assert cli.main(["export-reviews", str(tmp_path / "out")]) == 0
    assert "0 reviewed image(s)" in capsys.readouterr().out
    assert (tmp_path / "out" / "manifest.json").exists()
    assert cli.main(["export-reviews", str(tmp_path / "out")]) == 2  # not empty now


def test_subscriptions_add_list_poll_remove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The subscription commands on the configured database: each item of a static catalog is queued once."""
    from app.database import Store
    from app.usecases import facilities
    from tests.support.range_server import RangeServer
    from tests.support.scenes import footprint, make_cog
    from tests.support.stac_catalogs import serve_static_catalog, stac_item

    monkeypatch.setenv("WAGON_FETCH_ALLOWED_HOSTS", '["127.0.0.1"]')
    monkeypatch.setenv("WAGON_ARCHIVE_DIR", str(tmp_path / "originals"))
    monkeypatch.setenv("WAGON_JOBS_SQLITE_PATH", str(tmp_path / "jobs.db"))
    get_settings.cache_clear()
    cog = make_cog(tmp_path / "s.tif", 512, 0.5, centres=((200.0, 200.0),))
    store = Store(get_settings().database_url)
    facilities.create_facility(store, "yard", "Yard", "rail", footprint=footprint(cog, (100.0, 100.0, 400.0, 400.0)))
    store.dispose()
    with RangeServer() as server:
        for name in ("a", "b"):
            server.files[f"/scenes/{name}.tif"] = cog.path
        items = [
            stac_item(f"scene-{n}", f"../../../scenes/{n}.tif", f"2023-10-1{i}T02:30:00Z") for i, n in enumerate("ab")
        ]
        url = serve_static_catalog(server, items)
        assert cli.main(["subscriptions", "add", url, "--interval", "60", "--name", "vendor"]) == 0
        sub_id = json.loads(capsys.readouterr().out)["id"]
        assert cli.main(["subscriptions", "list"]) == 0
        assert sub_id in capsys.readouterr().out
        assert cli.main(["subscriptions", "poll", sub_id]) == 0
        first = json.loads(capsys.readouterr().out)
        assert len(first["submitted"]) == 2 and first["error"] is None
        assert cli.main(["subscriptions", "poll", sub_id]) == 0
        again = json.loads(capsys.readouterr().out)
        assert again["submitted"] == [] and again["already_seen"] == 2
        assert cli.main(["subscriptions", "add", "http://example.invalid/catalog.json", "--interval", "60"]) == 2
        assert "error:" in capsys.readouterr().err
        assert cli.main(["subscriptions", "remove", sub_id]) == 0
        assert sub_id in capsys.readouterr().out
        assert cli.main(["subscriptions", "poll", sub_id]) == 2
