"""Large imports as background jobs: the rows kept for the worker, the job's result equal to a direct import's,
repeats (with and without an ``Idempotency-Key``) getting the first job, and failures recorded with their status."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app import database as db
from app.core.errors import IdempotencyConflictError
from app.core.settings import Settings
from app.database import Store
from app.usecases import import_jobs, imports, observations
from app.usecases.facilities import create_facility
from app.usecases.jobs import JobQueue
from tests.support.fakes import RecordingFakeDetector

pytestmark = pytest.mark.databases("sqlite", "postgresql")

START = datetime(2021, 1, 1, tzinfo=UTC)


def _rows(n: int, offset: int = 0, source: str = "import") -> list[imports.ImportRow]:
    return [
        imports.ImportRow(START + timedelta(days=i + offset), {"railcar": 10 + (i * 7) % 5, "container": i % 3}, source)
        for i in range(n)
    ]


def _digest(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()


@pytest.fixture
def queue(settings: Settings, store: Store) -> Iterator[JobQueue]:
    create_facility(store, "yard", "Yard", "rail")
    create_facility(store, "twin", "Twin", "port")  # another kind: no prior pooled from the yard
    yield JobQueue(settings, store, None)


def _job(store: Store, job_id: str) -> db.Job:
    with store.session() as session:
        job = session.get(db.Job, job_id)
        assert job is not None
        return job


def test_rows_survive_the_round_trip(tmp_path: Path) -> None:
    rows = _rows(5) + [imports.ImportRow(START + timedelta(hours=3, microseconds=7), {"railcar": 0}, "analyst")]
    import_jobs.save_rows(tmp_path, _digest("a"), rows)
    assert import_jobs.load_rows(tmp_path, _digest("a")) == rows


def test_import_job_stores_what_a_direct_import_would(queue: JobQueue, store: Store) -> None:
    rows = _rows(30)
    queued = queue.submit_import("yard", rows, _digest("body"))
    assert queued is not None and queued[1] == "queued"
    queue.run(queued[0])
    job = queue.get(queued[0])
    assert job["kind"] == "import" and job["status"] == "done" and job["progress"] == 1.0
    assert job["captured_at"] is None and job["image_sha256"] is None
    direct = imports.import_counts(store, "twin", rows)
    stored = observations.list_observations(store, "yard")
    assert job["import_result"] == {"imported": 30, "duplicates": 0, "observation_ids": [o.id for o in stored]}
    assert [o.anomaly for o in stored] == [o.anomaly for o in direct.observations]  # the same scores
    queue.run(queued[0])  # a second task of a finished job does nothing
    assert len(observations.list_observations(store, "yard")) == 30


def test_repeated_key_gets_the_same_job_and_another_body_is_refused(queue: JobQueue, store: Store) -> None:
    key = ("admin", "k1")
    first = queue.submit_import("yard", _rows(10), _digest("one"), key)
    assert first is not None
    assert queue.submit_import("yard", _rows(10), _digest("one"), key) == first
    with pytest.raises(IdempotencyConflictError, match="k1"):
        queue.submit_import("yard", _rows(11), _digest("two"), key)
    queue.run(first[0])
    assert queue.submit_import("yard", _rows(10), _digest("one"), key) == (first[0], "done")
    # the key is recorded with the rows: a direct import repeating it is answered with the job's result
    replay = imports.import_counts(store, "yard", _rows(10), key, _digest("one"))
    assert (
        replay.replayed
        and [o.id for o in replay.observations] == queue.get(first[0])["import_result"]["observation_ids"]
    )
    with store.session() as session:
        assert session.query(db.Job).count() == 1


def test_same_body_without_key_joins_the_unfinished_job_only(queue: JobQueue) -> None:
    first = queue.submit_import("yard", _rows(10), _digest("one"))
    assert first is not None
    assert queue.submit_import("yard", _rows(10), _digest("one")) == first
    queue.run(first[0])
    again = queue.submit_import("yard", _rows(10), _digest("one"))
    assert again is not None and again[0] != first[0]  # a new job, whose rows are all duplicates
    queue.run(again[0])
    assert queue.get(again[0])["import_result"] == {"imported": 0, "duplicates": 10, "observation_ids": []}


def test_key_of_a_direct_import_is_replayed_not_queued(queue: JobQueue, store: Store) -> None:
    key = ("admin", "k2")
    imports.import_counts(store, "yard", _rows(3), key, _digest("small"))
    assert queue.submit_import("yard", _rows(3), _digest("small"), key) is None
    with store.session() as session:
        assert session.query(db.Job).count() == 0


def test_conflicting_rows_fail_the_job_with_409_and_store_nothing(queue: JobQueue, store: Store) -> None:
    imports.import_counts(store, "yard", _rows(1))
    clash = [imports.ImportRow(START, {"railcar": 99, "container": 0})] + _rows(5, offset=1)
    queued = queue.submit_import("yard", clash, _digest("clash"))
    assert queued is not None
    queue.run(queued[0])
    job = _job(store, queued[0])
    assert (job.status, job.error_status, job.result) == ("failed", 409, None)
    assert job.error is not None and "other counts" in job.error
    assert len(observations.list_observations(store, "yard")) == 1


def test_lost_payload_fails_the_job_with_404(queue: JobQueue, store: Store, settings: Settings) -> None:
    queued = queue.submit_import("yard", _rows(3), _digest("gone"))
    assert queued is not None
    import_jobs.payload_path(settings.archive_dir, _digest("gone")).unlink()
    queue.run(queued[0])
    job = _job(store, queued[0])
    assert (job.status, job.error_status) == ("failed", 404)


# ------------------------------------------------------------------------ other writers during a large import

#: The large import's first row (100,000 rows two hours apart end in 2012).
BIG_START = datetime(1990, 1, 1, tzinfo=UTC)


def _csv_body(n: int) -> str:
    return "captured_at,railcar\n" + "".join(
        f"{(BIG_START + timedelta(hours=2 * i)).strftime('%Y-%m-%dT%H:%M:%SZ')},{10 + i % 7}\n" for i in range(n)
    )


def _writers_during_import(make_client: Any, rows: int, png: bytes) -> None:
    """While an import of ``rows`` rows runs as a job, uploads, small imports and key creation go to another
    facility: each succeeds or is refused with 503 and ``Retry-After``, never 500, and nothing is lost."""
    client = make_client(detector=RecordingFakeDetector(), async_import_rows=rows - 1)
    for fid in ("big", "side"):
        assert client.post("/v1/facilities", json={"id": fid, "name": fid, "kind": "rail"}).status_code == 201
    r = client.post("/v1/facilities/big/observations", content=_csv_body(rows), headers={"Content-Type": "text/csv"})
    assert r.status_code == 202, r.text
    url = r.json()["status_url"]
    answers: list[tuple[str, int, str | None]] = []
    stored = {"uploads": 0, "rows": 0}
    done = threading.Event()

    def writer(kind: str) -> None:
        i = 0
        while not done.is_set() or i < 3:
            i += 1
            when = (START + timedelta(minutes=10 * i + len(kind))).strftime("%Y-%m-%dT%H:%M:%SZ")
            if kind == "upload":
                resp = client.post(
                    "/v1/facilities/side/images",
                    data={"captured_at": when},
                    files={"file": (f"{i}.png", png, "image/png")},
                )
            elif kind == "import":
                resp = client.post(
                    "/v1/facilities/side/observations",
                    json={"observations": [{"captured_at": when, "counts": {"railcar": i % 9}, "source": "thread"}]},
                )
            else:
                resp = client.post("/v1/keys", json={"role": "reader", "name": f"k{i}"})
            answers.append((kind, resp.status_code, resp.headers.get("Retry-After")))
            if resp.status_code == 201 and kind == "upload":
                stored["uploads"] += 1
            elif resp.status_code == 201 and kind == "import":
                stored["rows"] += resp.json()["imported"]

    threads = [threading.Thread(target=writer, args=(k,)) for k in ("upload", "import", "key")]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 1800
    while (job := client.get(url).json())["status"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
    done.set()
    for t in threads:
        t.join(120)
    assert job["status"] == "done", job
    assert job["import_result"]["imported"] == rows
    assert all(s in (200, 201) or (s == 503 and after) for _, s, after in answers), answers
    assert {k for k, s, _ in answers if s == 201} == {"upload", "import", "key"}
    store = client.app.state.runtime.store
    with store.session() as session:
        assert db.count_observations(session, "big") == rows
        assert db.count_observations(session, "side") == stored["uploads"] + stored["rows"]


def test_other_writers_during_a_background_import(make_client: Any, png_bytes: bytes) -> None:
    _writers_during_import(make_client, 400, png_bytes)


@pytest.mark.slow
@pytest.mark.databases("sqlite")  # SQLite's single write lock is the contended case; the 400-row test runs on both
def test_other_writers_during_a_background_import_of_100000_rows(
    make_client: Any, png_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scores are left out (computed before the write lock, they cost minutes of CPU and no lock): what the
    other writers meet is the write of 100,000 rows."""
    from app.usecases import import_store

    monkeypatch.setattr(import_store, "compute_scores", lambda snapshot, progress=None: {})
    _writers_during_import(make_client, 100_000, png_bytes)
