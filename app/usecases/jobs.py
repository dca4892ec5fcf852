"""Background jobs on huey (SQLite queue by default, no server; Redis for several machines): analysis of large
uploads, and large imports of counts (:mod:`app.usecases.import_jobs`).

A job is a row in the service database (``jobs``: kind, inputs, status, progress, result) plus a huey task carrying
its id. The original upload is already in the content-addressed archive, and an import's validated rows are kept
beside it, so a job needs nothing else.

Never run twice: before a worker runs a job it claims it with one conditional ``UPDATE`` (``queued``, or
``running`` with an expired lease, becomes ``running`` with ``claimed_by`` = this worker and ``lease_until`` = now +
:data:`LEASE_S`); a task whose claim fails (another worker holds the job, or it is finished) is dropped. The worker
renews the lease while it works (a heartbeat thread, every third of the lease). Jobs survive a restart: queued tasks
stay in huey's storage, and on start-up every ``queued`` job whose task is no longer pending, and every ``running``
job whose lease has expired (its worker died), is enqueued again; a job another live worker is running is left to it.
A job that had started is rerun from the start; its result is stored once.

Workers: a thread inside the API process (``WAGON_JOBS_WORKER=true``, the default), or ``wagon-detector worker``
processes on any machine that sees the same database, archive and queue.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, and_, or_, update

from app import database as db
from app.core.errors import IdempotencyConflictError, NotFoundError, ServiceError
from app.core.validation import check_gsd, iso
from app.detection.imaging import ImageError
from app.usecases import import_jobs
from app.usecases.facilities import require_facility
from app.usecases.images import DetectorProtocol, record_upload
from app.usecases.imports import ImportRow
from app.usecases.observations import Idempotency

if TYPE_CHECKING:
    from huey import Huey
    from typing_extensions import TypeIs

    from app.core.settings import Settings

log = logging.getLogger(__name__)

TASK_NAME = "wagon.analyse_upload"
#: Least seconds between two progress writes of one job.
PROGRESS_INTERVAL_S = 1.0
#: Seconds a worker's claim on a job holds without renewal (renewed every third of it while the job runs).
LEASE_S = 60.0


#: A detector, a loader that returns one (called on first use), or None (no model).
DetectorSource = DetectorProtocol | Callable[[], DetectorProtocol | None] | None


def _is_loader(detector: DetectorSource) -> TypeIs[Callable[[], DetectorProtocol | None]]:
    """Whether ``detector`` is a loader still to call rather than a detector."""
    return callable(detector) and not hasattr(detector, "detect")


def make_huey(settings: Settings) -> Huey:
    """The huey instance the settings choose (``jobs_backend``)."""
    if settings.jobs_backend == "redis":
        from huey import RedisHuey

        return RedisHuey(settings.jobs_queue_name, url=settings.redis_url, results=False)
    from huey import SqliteHuey

    path = Path(settings.jobs_sqlite_path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteHuey(settings.jobs_queue_name, filename=str(path), results=False)


class JobQueue:
    """Submit, run, report and resume background jobs."""

    def __init__(
        self,
        settings: Settings,
        store: db.Store,
        detector: DetectorSource,
        lease_s: float = LEASE_S,
    ) -> None:
        self.settings = settings
        self.store = store
        self._detector = detector
        self.lease_s = lease_s
        #: Who this process is in ``jobs.claimed_by``.
        self.worker_id = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.huey = make_huey(settings)
        self.task = self.huey.task(name=TASK_NAME)(self.run)
        self._consumer: Any = None

    # ---------------------------------------------------------------------------------------------- submit

    def submit(
        self,
        facility_id: str,
        captured_at: datetime,
        gsd_m: float | None,
        sha256: str,
        idempotency: Idempotency | None = None,
    ) -> str:
        """Record a job and enqueue it; return its id. A repeat of an unfinished job (same ``Idempotency-Key``, or
        same image, facility and time) returns that job's id instead (:class:`IdempotencyConflictError` when the
        key came with another image or time). The capture time and GSD are checked first
        (:class:`InvalidInputError`)."""
        captured_at = self.settings.capture_window.check(captured_at)
        check_gsd(gsd_m)
        with self.store.transaction() as session:
            existing = _unfinished_job(session, facility_id, captured_at, sha256, idempotency)
            if existing is not None:
                log.info("job %s repeated; not queued again", existing)
                return existing
            job_id = str(uuid.uuid4())
            session.add(
                db.Job(
                    id=job_id,
                    facility_id=facility_id,
                    captured_at=captured_at,
                    gsd_m=gsd_m,
                    image_sha256=sha256,
                    status="queued",
                    progress=0.0,
                    created_at=db.utcnow(),
                    updated_at=db.utcnow(),
                    idempotency_scope=None if idempotency is None else idempotency[0],
                    idempotency_key=None if idempotency is None else idempotency[1],
                )
            )
        self.task(job_id)
        log.info("job %s queued (facility %s, image %s)", job_id, facility_id, sha256[:12])
        return job_id

    def submit_import(
        self, facility_id: str, rows: Sequence[ImportRow], digest: str, idempotency: Idempotency | None = None
    ) -> tuple[str, str] | None:
        """Queue a large import of validated ``rows`` (:mod:`app.usecases.import_jobs`); return the job's id and
        status. A repeat returns the first job's (:func:`import_jobs.existing_job`). None: an import already stored
        with this ``Idempotency-Key`` directly (not as a job), whose answer
        :func:`app.usecases.imports.import_counts` gives."""
        import_jobs.save_rows(self.settings.archive_dir, digest, rows)
        with self.store.transaction() as session:
            require_facility(session, facility_id, lock=True)  # one submission of a key at a time
            existing = import_jobs.existing_job(session, facility_id, digest, idempotency)
            if existing is not None:
                log.info("import job %s repeated; not queued again", existing.id)
                return existing.id, existing.status
            if idempotency is not None and session.get(db.ImportRequest, (facility_id, *idempotency)) is not None:
                return None
            job_id = str(uuid.uuid4())
            session.add(
                db.Job(
                    id=job_id,
                    facility_id=facility_id,
                    kind=import_jobs.KIND,
                    payload_sha256=digest,
                    status="queued",
                    progress=0.0,
                    created_at=db.utcnow(),
                    updated_at=db.utcnow(),
                    idempotency_scope=None if idempotency is None else idempotency[0],
                    idempotency_key=None if idempotency is None else idempotency[1],
                )
            )
        self.task(job_id)
        log.info("import job %s queued (facility %s, %d rows)", job_id, facility_id, len(rows))
        return job_id, "queued"

    def resume(self) -> int:
        """Enqueue again every job left behind (after a restart): ``queued`` ones whose task is not pending, and
        ``running`` ones whose lease has expired; return how many. A job with a live lease is left to its worker."""
        now = db.utcnow()
        with self.store.session() as session:
            left = [
                j.id
                for j in session.query(db.Job).filter(
                    or_(
                        db.Job.status == "queued",
                        and_(db.Job.status == "running", or_(db.Job.lease_until.is_(None), db.Job.lease_until < now)),
                    )
                )
            ]
        if not left:
            return 0
        pending = {t.args[0] for t in self.huey.pending() if t.args}
        again = [j for j in left if j not in pending]
        for job_id in again:
            self.task(job_id)
        if again:
            log.info("resumed %d unfinished job(s)", len(again))
        return len(again)

    # ---------------------------------------------------------------------------------------------- lease

    def claim(self, job_id: str) -> bool:
        """Claim a job for this worker (``queued``, or ``running`` under an expired lease, becomes ``running``
        under this worker's lease) with one conditional update; False when another worker holds it or it is
        finished (or unknown)."""
        now = db.utcnow()
        with self.store.transaction() as session:
            result = session.execute(
                update(db.Job)
                .where(
                    db.Job.id == job_id,
                    or_(
                        db.Job.status == "queued",
                        and_(db.Job.status == "running", or_(db.Job.lease_until.is_(None), db.Job.lease_until < now)),
                    ),
                )
                .values(
                    status="running",
                    progress=0.0,
                    claimed_by=self.worker_id,
                    lease_until=now + timedelta(seconds=self.lease_s),
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            return cast(CursorResult, result).rowcount == 1  # an UPDATE's result is a CursorResult

    def renew(self, job_id: str) -> bool:
        """Extend this worker's lease on a running job; False when the job is no longer this worker's."""
        now = db.utcnow()
        with self.store.transaction() as session:
            result = session.execute(
                update(db.Job)
                .where(db.Job.id == job_id, db.Job.status == "running", db.Job.claimed_by == self.worker_id)
                .values(lease_until=now + timedelta(seconds=self.lease_s))
                .execution_options(synchronize_session=False)
            )
            return cast(CursorResult, result).rowcount == 1  # an UPDATE's result is a CursorResult

    def _heartbeat(self, job_id: str, stop: threading.Event) -> None:
        """Renew the lease every third of it until ``stop`` is set (or the lease is lost)."""
        while not stop.wait(self.lease_s / 3):
            try:
                if not self.renew(job_id):
                    log.warning("job %s: lease lost (another worker claimed it)", job_id)
                    return
            except Exception:
                # a database hiccup: try again at the next beat
                log.exception("job %s: lease renewal failed", job_id)

    # ---------------------------------------------------------------------------------------------- run

    def detector(self) -> DetectorProtocol | None:
        """The detector (loaded on first use when given as a loader)."""
        if _is_loader(self._detector):
            self._detector = self._detector()
        return self._detector

    def run(self, job_id: str) -> None:
        """Claim the job, analyse its image and store the observation (the huey task body); a task of a job that
        another worker holds or that is finished does nothing."""
        if not self.claim(job_id):
            log.info("job %s is finished or another worker holds it; duplicate task dropped", job_id)
            return
        with self.store.session() as session:
            job = session.get(db.Job, job_id)
            assert job is not None  # just claimed
            kind, facility_id, when, gsd = job.kind, job.facility_id, job.captured_at, job.gsd_m
            sha = job.payload_sha256 if kind == import_jobs.KIND else job.image_sha256
            idempotency = None if job.idempotency_key is None else (job.idempotency_scope or "-", job.idempotency_key)
        assert sha is not None  # every job has its upload's image or its import's payload
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job_id, stop), name=f"lease-{job_id[:8]}", daemon=True)
        beat.start()
        try:
            if kind == import_jobs.KIND:
                self._run_import(job_id, facility_id, sha, idempotency)
            else:
                assert when is not None  # an upload's capture time
                self._run_claimed(job_id, facility_id, when, gsd, sha, idempotency)
        finally:
            stop.set()
            beat.join()

    def _run_claimed(
        self,
        job_id: str,
        facility_id: str,
        when: datetime,
        gsd: float | None,
        sha: str,
        idempotency: Idempotency | None,
    ) -> None:
        """Analyse and store a job this worker holds; record its outcome and release the lease."""
        from app.usecases.scenes import analyse_with_settings, archive_path, facility_footprint, facility_gsd

        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL_S or done == total:
                last[0] = now
                self._update(job_id, progress=round(done / max(total, 1), 4))

        t0 = time.perf_counter()
        try:
            footprint = facility_footprint(self.store, facility_id)
            analysis = analyse_with_settings(
                self.detector(),
                archive_path(self.settings.archive_dir, sha),
                self.settings,
                gsd_m=gsd,
                footprint=footprint,
                sha256=sha,
                progress=progress,
                facility_gsd_m=None if gsd is not None else facility_gsd(self.store, facility_id),
            )
            t1 = time.perf_counter()
            record, _created = record_upload(
                self.store, facility_id, when, analysis, idempotency, count_rel_error=self.settings.count_rel_error
            )
            t2 = time.perf_counter()
        except (ImageError, ServiceError, FileNotFoundError) as exc:
            log.warning("job %s failed: %s", job_id, exc)
            self._update(job_id, status="failed", error=str(exc)[:2000], error_status=_status_of(exc), lease_until=None)
            return
        except Exception as exc:
            # report, never lose a job silently
            log.exception("job %s failed", job_id)
            self._update(
                job_id, status="failed", error=f"internal error: {exc}"[:2000], error_status=500, lease_until=None
            )
            return
        timing = {
            "decode": round(analysis.decode_ms, 1),
            "detect": round(analysis.detect_ms, 1),
            "store": round((t2 - t1) * 1000.0, 1),
            "total": round((t2 - t0) * 1000.0, 1),
        }
        self._update(job_id, status="done", progress=1.0, observation_id=record.id, timing_ms=timing, lease_until=None)
        log.info("job %s done: observation %d", job_id, record.id)

    def _run_import(self, job_id: str, facility_id: str, digest: str, idempotency: Idempotency | None) -> None:
        """Import a job's rows this worker holds; record the result (or the error) and release the lease."""
        last = [0.0]

        def progress(share: float) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL_S:
                last[0] = now
                self._update(job_id, progress=round(min(share, 0.99), 4))

        t0 = time.perf_counter()
        try:
            result = import_jobs.run_import(
                self.store, self.settings.archive_dir, facility_id, digest, idempotency, progress
            )
        except (ServiceError, FileNotFoundError) as exc:
            log.warning("import job %s failed: %s", job_id, exc)
            self._update(job_id, status="failed", error=str(exc)[:2000], error_status=_status_of(exc), lease_until=None)
            return
        except Exception as exc:
            # report, never lose a job silently
            log.exception("import job %s failed", job_id)
            self._update(
                job_id, status="failed", error=f"internal error: {exc}"[:2000], error_status=500, lease_until=None
            )
            return
        timing = {"total": round((time.perf_counter() - t0) * 1000.0, 1)}
        self._update(job_id, status="done", progress=1.0, result=result, timing_ms=timing, lease_until=None)
        log.info("import job %s done: %d imported, %d duplicates", job_id, result["imported"], result["duplicates"])

    def _update(self, job_id: str, **fields: Any) -> None:
        with self.store.transaction() as session:
            job = session.get(db.Job, job_id)
            if job is None:
                return
            for k, v in fields.items():
                setattr(job, k, v)
            job.updated_at = db.utcnow()

    # ---------------------------------------------------------------------------------------------- report

    def get(self, job_id: str) -> dict[str, Any]:
        """The job as shown to users (with the observation when done); :class:`NotFoundError` if unknown."""
        from app.usecases.observations import get_observation

        with self.store.session() as session:
            job = session.get(db.Job, job_id)
            if job is None:
                raise NotFoundError(f"job {job_id!r} not found")
            out: dict[str, Any] = {
                "id": job.id,
                "kind": job.kind,
                "status": job.status,
                "progress": job.progress,
                "facility_id": job.facility_id,
                "captured_at": None if job.captured_at is None else iso(job.captured_at),
                "image_sha256": job.image_sha256,
                "created_at": iso(job.created_at),
                "updated_at": iso(job.updated_at),
                "error": job.error,
                "error_status": job.error_status,
                "observation_id": job.observation_id,
                "result": None,
                "import_result": job.result,
            }
            timing = job.timing_ms
        if out["observation_id"] is not None:
            result = get_observation(self.store, out["observation_id"]).to_dict(with_detections=True)
            result["timing_ms"] = timing
            out["result"] = result
        return out

    # ---------------------------------------------------------------------------------------------- worker

    def start_worker(self) -> None:
        """Start an embedded consumer (one worker thread, no signal handlers; the periodic tasks when
        ``WAGON_JOBS_PERIODIC``) in this process."""
        from huey.consumer import Consumer

        class _EmbeddedConsumer(Consumer):
            def _set_signal_handlers(self) -> None:  # signals belong to the host process (uvicorn)
                pass

        self._consumer = _EmbeddedConsumer(
            self.huey,
            workers=1,
            worker_type="thread",
            periodic=self.settings.jobs_periodic,
            initial_delay=0.1,
            backoff=1.15,
            max_delay=1.0,
        )
        self._consumer.start()
        log.info("embedded job worker started (%s queue)", self.settings.jobs_backend)

    def stop_worker(self) -> None:
        """Stop the embedded consumer after the task it is running (if any)."""
        if self._consumer is not None:
            self._consumer.stop(graceful=True)
            self._consumer = None

    def run_worker(self, workers: int = 1) -> None:
        """Run a consumer in the foreground (``wagon-detector worker``); returns on SIGINT/SIGTERM."""
        from huey.consumer import Consumer

        self.resume()
        Consumer(
            self.huey, workers=workers, worker_type="thread", periodic=self.settings.jobs_periodic, max_delay=2.0
        ).run()


def _unfinished_job(
    session: Any, facility_id: str, captured_at: datetime, sha256: str, idempotency: Idempotency | None
) -> str | None:
    """Id of a queued or running job this submission repeats (see :meth:`JobQueue.submit`)."""
    unfinished = session.query(db.Job).filter(
        db.Job.facility_id == facility_id, db.Job.status.in_(("queued", "running"))
    )
    if idempotency is not None:
        job = unfinished.filter(
            db.Job.idempotency_scope == idempotency[0], db.Job.idempotency_key == idempotency[1]
        ).first()
        if job is not None:
            if job.image_sha256 != sha256 or job.captured_at != captured_at:
                raise IdempotencyConflictError(
                    f"Idempotency-Key {idempotency[1]!r} was used for job {job.id}, "
                    "a different upload (a new upload needs a new key)"
                )
            return str(job.id)
    job = unfinished.filter(db.Job.captured_at == captured_at, db.Job.image_sha256 == sha256).first()
    return None if job is None else str(job.id)


def facility_of_job(store: db.Store, job_id: str) -> str | None:
    """The facility a job uploads to (None for an unknown job)."""
    with store.session() as session:
        job = session.get(db.Job, job_id)
        return None if job is None else job.facility_id


def _status_of(exc: Exception) -> int:
    from app.core.errors import ConflictError, DatabaseBusyError, InvalidInputError, ModelUnavailableError
    from app.detection.imaging import CorruptImageError, EmptyImageError, ImageTooLargeError, UnsupportedImageError

    for cls, status in (
        (NotFoundError, 404),
        (ConflictError, 409),
        (InvalidInputError, 422),
        (ModelUnavailableError, 503),
        (DatabaseBusyError, 503),
        (EmptyImageError, 422),
        (CorruptImageError, 422),
        (UnsupportedImageError, 415),
        (ImageTooLargeError, 413),
        (FileNotFoundError, 404),
    ):
        if isinstance(exc, cls):
            return status
    return 400


#: The HTTP status that an analysis error would have had in a direct upload (shared with scene jobs).
status_of = _status_of
