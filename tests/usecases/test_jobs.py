"""Jobs never run twice: a worker claims a job (conditional update) and holds a lease it renews while it works;
start-up requeues only jobs whose lease has expired. Two :class:`JobQueue` instances over one database play two
worker processes (each with its own huey queue file, so neither sees the other's pending tasks)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app import database as db
from app.core.settings import Settings
from app.core.validation import parse_timestamp
from app.database import Store, count_observations
from app.usecases import scenes
from app.usecases.facilities import create_facility
from app.usecases.jobs import JobQueue
from tests.support.fakes import RecordingFakeDetector, SlowFakeDetector

pytestmark = pytest.mark.databases("sqlite", "postgresql")

WHEN = "2024-05-01T10:30:00Z"


@pytest.fixture
def two_workers(settings: Settings, store: Store, tmp_path: Path) -> Iterator[tuple[JobQueue, JobQueue]]:
    create_facility(store, "yard", "Yard", "rail")
    a = JobQueue(settings.model_copy(update={"jobs_sqlite_path": tmp_path / "a.db"}), store, None)
    b = JobQueue(settings.model_copy(update={"jobs_sqlite_path": tmp_path / "b.db"}), store, None)
    yield a, b


def _submit(queue: JobQueue, settings: Settings, png: bytes) -> str:
    sha, _ = scenes.archive_bytes(settings.archive_dir, png)
    job_id = queue.submit("yard", parse_timestamp(WHEN), None, sha)
    queue.huey.flush()  # the task is "taken" by a worker: only the database row tells
    return job_id


@pytest.mark.parametrize(
    "when, gsd_m, words",
    [("0001-01-01T00:00:00Z", None, "before 1960"), ("9999-12-31T00:00:00Z", None, "future"), (WHEN, 0.0, "gsd_m")],
)
def test_submit_refuses_impossible_capture_times_and_gsds(
    two_workers: tuple[JobQueue, JobQueue], store: Store, when: str, gsd_m: float | None, words: str
) -> None:
    from app.core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match=words):
        two_workers[0].submit("yard", parse_timestamp(when), gsd_m, "0" * 64)
    with store.session() as session:
        assert session.query(db.Job).count() == 0


def _job(store: Store, job_id: str) -> db.Job:
    with store.session() as session:
        job = session.get(db.Job, job_id)
        assert job is not None
        return job


def test_second_claim_fails_and_live_jobs_are_not_requeued(
    two_workers: tuple[JobQueue, JobQueue], settings: Settings, store: Store, png_bytes: bytes
) -> None:
    a, b = two_workers
    job_id = _submit(a, settings, png_bytes)
    assert a.claim(job_id)
    job = _job(store, job_id)
    assert job.status == "running" and job.claimed_by == a.worker_id and job.lease_until is not None
    assert not b.claim(job_id)
    assert b.resume() == 0 and len(b.huey) == 0  # a start-up while A works leaves A's job alone
    assert a.renew(job_id) and not b.renew(job_id)


def test_expired_lease_is_requeued_and_claimed(
    two_workers: tuple[JobQueue, JobQueue], settings: Settings, store: Store, png_bytes: bytes
) -> None:
    a, b = two_workers
    b._detector = RecordingFakeDetector()
    job_id = _submit(a, settings, png_bytes)
    assert a.claim(job_id)
    with store.transaction() as session:  # A died: its lease ran out
        session.get(db.Job, job_id).lease_until = db.utcnow() - timedelta(seconds=1)
    assert b.resume() == 1 and len(b.huey) == 1
    b.run(job_id)
    job = _job(store, job_id)
    assert job.status == "done" and job.claimed_by == b.worker_id and job.lease_until is None
    assert not a.renew(job_id)  # A, were it alive, would see that it lost the job
    with store.session() as session:
        assert count_observations(session, "yard") == 1


def test_duplicate_task_is_dropped_while_the_job_runs(
    two_workers: tuple[JobQueue, JobQueue], settings: Settings, store: Store, png_bytes: bytes
) -> None:
    a, b = two_workers
    slow = SlowFakeDetector()
    a._detector = slow
    b._detector = RecordingFakeDetector()
    a.lease_s = 0.3  # short lease: the heartbeat must keep it alive while A waits
    job_id = _submit(a, settings, png_bytes)
    worker = threading.Thread(target=a.run, args=(job_id,))
    worker.start()
    assert slow.started.acquire(timeout=30)
    threading.Event().wait(1.0)  # three lease lengths: only renewals keep the claim
    assert b.resume() == 0
    b.run(job_id)  # a duplicate task (e.g. enqueued by an older process): dropped, no second analysis
    assert b._detector.calls == 0
    slow.release.set()
    worker.join(30)
    assert _job(store, job_id).status == "done" and slow.calls == 1
    b.run(job_id)  # finished: dropped too
    assert b._detector.calls == 0
    with store.session() as session:
        assert count_observations(session, "yard") == 1


def test_unique_index_alone_keeps_a_doubly_run_job_to_one_observation(
    two_workers: tuple[JobQueue, JobQueue], settings: Settings, store: Store, png_bytes: bytes
) -> None:
    """Before leases a job could run twice; the idempotent-upload index already kept it to one observation (the
    lease saves the second analysis). Both workers here run the claimed work directly, past the claim."""
    a, b = two_workers
    a._detector, b._detector = RecordingFakeDetector(), RecordingFakeDetector()
    job_id = _submit(a, settings, png_bytes)
    job = _job(store, job_id)
    args: Any = (job_id, "yard", job.captured_at, None, job.image_sha256, None)
    a._run_claimed(*args)
    b._run_claimed(*args)
    assert a._detector.calls == b._detector.calls == 1
    with store.session() as session:
        assert count_observations(session, "yard") == 1
