"""Anomaly fits prepared in the background (``app.scoring.fit_cache``): same stored scores with and without, never
stale."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.database import Store
from app.detection.imaging import decode_image
from app.detection.results import Detection, DetectionResult
from app.scoring import anomaly
from app.scoring.anomaly import fit_predictor
from app.scoring.fit_cache import CACHE, FitCache, Prefitter, prefit_facility
from app.usecases import facilities, images, imports, observations
from tests.support.fakes import RecordingFakeDetector

T0 = datetime(2019, 1, 1, tzinfo=UTC)
IMAGE = decode_image(
    (lambda b: (Image.new("RGB", (16, 16), (90, 90, 90)).save(b, "PNG"), b.getvalue())[1])(io.BytesIO())
)


@pytest.fixture(autouse=True)
def _empty_cache() -> Iterator[None]:
    CACHE.clear()
    yield
    CACHE.clear()


def _analysis(railcars: int, containers: int) -> images.Analysis:
    box = ((1.0, 1.0), (5.0, 1.0), (5.0, 3.0), (1.0, 3.0))
    dets = [Detection("railcar", 0.9, box)] * railcars + [Detection("container", 0.7, box)] * containers
    return images.Analysis(
        image=IMAGE,
        result=DetectionResult(dets, 16, 16, 0.5, 1.0),
        model_name="m",
        model_version="1",
        class_names=("railcar", "container"),
        gsd_m=0.5,
        decode_ms=0.0,
        detect_ms=0.0,
    )


def _history_rows(n: int = 90, seed: int = 1) -> list[imports.ImportRow]:
    """Five years of roughly fortnightly counts with a season and a trend (trend and season designs get fitted)."""
    rng = np.random.default_rng(seed)
    days = np.sort(rng.uniform(0, 5 * 365.25, n))
    t = days / 365.25
    rail = rng.poisson(np.exp(2.5 + 0.5 * np.sin(2 * np.pi * t) + 0.35 * t))
    cont = rng.poisson(np.exp(1.5 + 0.1 * t))
    return [
        imports.ImportRow(T0 + timedelta(days=float(d)), {"railcar": int(r), "container": int(c)})
        for d, r, c in zip(days, rail, cont, strict=True)
    ]


def _scores(store: Store, facility_id: str = "yard") -> list[Any]:
    return [
        (o.captured_at, o.counts, {c: (None if a is None else a.to_dict()) for c, a in o.anomaly.items()})
        for o in observations.list_observations(store, facility_id)
    ]


def _run(store: Store, steps: list[Callable[[Store], object]], prefit: bool) -> list[Any]:
    facilities.create_facility(store, "yard", "Yard", "rail")
    for step in steps:
        if not prefit:
            CACHE.clear()
        step(store)
        if prefit:
            prefit_facility(store, "yard")
    return _scores(store)


def _upload(when: datetime, railcars: int, containers: int) -> Callable[[Store], object]:
    return lambda store: images.record_upload(store, "yard", when, _analysis(railcars, containers))


def _import(rows: list[imports.ImportRow]) -> Callable[[Store], object]:
    return lambda store: imports.import_counts(store, "yard", rows)


def _stores(tmp_path: Any) -> Iterator[Store]:
    for name in ("cached", "uncached"):
        yield Store(f"sqlite:///{tmp_path}/{name}.db")


def test_cached_and_uncached_fits_store_identical_scores(tmp_path: Any) -> None:
    history = _history_rows()
    end = max(r.captured_at for r in history)
    steps: list[Callable[[Store], object]] = [_import(history)]
    steps += [_upload(end + timedelta(days=14 * (k + 1)), 20 + 3 * k, 5 + k % 3) for k in range(6)]  # newest each
    steps += [_upload(end + timedelta(days=14 * 7, hours=h + 1), 30 + h, 4) for h in range(4)]  # hourly
    cached_store, uncached_store = _stores(tmp_path)
    cached = _run(cached_store, steps, prefit=True)
    hits = CACHE.hits
    uncached = _run(uncached_store, steps, prefit=False)
    assert CACHE.hits == 0 and CACHE.misses > 0
    assert hits >= 2 * 9  # both classes of (nearly) every newest upload came from the cache
    assert cached == uncached  # bit for bit: every stored score, expectation, band and model description
    models = {a["railcar"]["model"].split(" on ")[0] for _, _, a in cached[-10:]}
    assert any("trend" in m or "season" in m for m in models)  # the designs whose time axis moved were cached
    cached_store.dispose()
    uncached_store.dispose()


def test_a_changed_history_is_never_served_a_stale_fit(tmp_path: Any) -> None:
    history = _history_rows(40)
    end = max(r.captured_at for r in history)
    steps: list[Callable[[Store], object]] = [
        _import(history),
        _upload(end + timedelta(days=10), 25, 5),
        _upload(end - timedelta(days=3), 99, 0),  # an older observation: later points rescored
        _upload(end + timedelta(days=20), 26, 6),
        _import([imports.ImportRow(end + timedelta(days=21), {"railcar": 7})]),  # railcar history only
        _upload(end + timedelta(days=30), 27, 7),
    ]
    cached_store, uncached_store = _stores(tmp_path)
    cached = _run(cached_store, steps, prefit=True)
    uncached = _run(uncached_store, steps, prefit=False)
    assert cached == uncached


def test_lookups_hit_only_for_the_fitted_points_prior_and_covered_times(tmp_path: Any) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    facilities.create_facility(store, "yard", "Yard", "rail")
    imports.import_counts(store, "yard", _history_rows(30))
    cache = FitCache()  # not the process's: a thread of an earlier test may still be rescoring with that one
    assert prefit_facility(store, "yard", cache) == 2
    assert prefit_facility(store, "yard", cache) == 0  # kept already
    hist = observations.list_observations(store, "yard")
    days = np.asarray([o.captured_at.timestamp() / 86_400 for o in hist])
    counts = np.asarray([o.counts["railcar"] for o in hist], dtype=np.int64)
    fit = cache.fitter("yard", "railcar")
    misses = cache.misses
    assert fit(days, counts, days[-1] + 1, None) is cache.get("yard", "railcar", days, counts, None)
    assert cache.hits == 1
    changed = counts.copy()
    changed[3] += 1
    assert cache.get("yard", "railcar", days, changed, None) is None  # same length and newest day, other counts
    assert cache.get("yard", "container", days, counts, None) is None
    prior = anomaly.pooled_prior([(10, 5.0, 9.0)], "rail")
    assert cache.get("yard", "railcar", days, counts, prior) is None
    far = days[-1] + 6 * 365.25  # the fit window has moved on: fitted afresh
    assert fit(days, counts, far, None).covers(far)
    assert cache.misses == misses + 1
    store.dispose()


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = FitCache(max_entries=2)
    days, counts = np.arange(10.0), np.arange(10, dtype=np.int64)
    fit = fit_predictor(days, counts, 10.0)
    for cls in ("a", "b"):
        cache.put("f", cls, days, counts, None, fit)
    assert cache.get("f", "a", days, counts, None) is fit  # "a" is now the most recently used
    cache.put("f", "c", days, counts, None, fit)
    assert len(cache) == 2
    assert cache.get("f", "b", days, counts, None) is None
    assert cache.get("f", "a", days, counts, None) is fit and cache.get("f", "c", days, counts, None) is fit


def test_prefitter_thread_fills_the_cache_and_drops_beyond_its_queue(tmp_path: Any) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    facilities.create_facility(store, "yard", "Yard", "rail")
    imports.import_counts(store, "yard", _history_rows(20))
    prefitter = Prefitter(store, max_pending=1)
    assert prefitter.request("yard") and prefitter.request("yard")  # the same facility is queued once
    assert not prefitter.request("other")  # the queue is full (the thread has not started)
    prefitter.start()
    assert prefitter.idle()
    assert len(CACHE) == 2
    assert prefitter.request("missing") and prefitter.idle()  # an unknown facility fits nothing, harmlessly
    prefitter.stop()
    assert not prefitter.request("yard")
    store.dispose()


def test_prefitter_waits_while_requests_are_served(tmp_path: Any) -> None:
    """Background fits fill idle time: while the server is busy a requested fit waits, then runs."""
    store = Store(f"sqlite:///{tmp_path}/s.db")
    facilities.create_facility(store, "yard", "Yard", "rail")
    imports.import_counts(store, "yard", _history_rows(20))
    busy = threading.Event()
    busy.set()
    prefitter = Prefitter(store, busy=busy.is_set)
    prefitter.start()
    assert prefitter.request("yard")
    assert not prefitter.idle(timeout_s=0.3)  # still waiting for the server to be idle
    assert len(CACHE) == 0
    busy.clear()
    assert prefitter.idle()
    assert len(CACHE) == 2
    prefitter.stop()
    store.dispose()


def test_the_service_prefits_after_an_import_and_an_upload(make_client: Callable[..., Any], png_bytes: bytes) -> None:
    client = make_client(RecordingFakeDetector())
    client.post("/v1/facilities", json={"id": "yard", "name": "Yard", "kind": "rail"}).raise_for_status()
    rows = [{"captured_at": (T0 + timedelta(days=k)).isoformat(), "counts": {"railcar": 1 + k % 3}} for k in range(12)]
    client.post("/v1/facilities/yard/observations", json={"observations": rows}).raise_for_status()
    prefitter = client.app.state.runtime.prefitter
    assert prefitter.idle()
    assert len(CACHE) == 1  # railcar only: no container history
    r = client.post(
        "/v1/facilities/yard/images",
        files={"file": ("a.png", png_bytes, "image/png")},
        data={"captured_at": (T0 + timedelta(days=12)).isoformat()},
    )
    assert r.status_code == 201, r.text
    assert CACHE.hits == 1
    assert prefitter.idle() and len(CACHE) == 2  # and the railcar history with the upload, for the next one
