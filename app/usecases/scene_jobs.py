"""Scene jobs: a scene submitted to ``POST /v1/scenes`` analysed in the background by the job workers (the same
huey queue and workers as large uploads, :mod:`app.usecases.jobs`, under its own task name).

A job is a ``scene_jobs`` row (request, submitter, status, progress, result). Like upload jobs it is claimed with
one conditional update under a lease renewed while it runs, so it never runs twice at once, and unfinished jobs are
enqueued again at start-up. A repeated ``Idempotency-Key`` (same key, same submitter) returns the first job.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, and_, or_, update
from sqlalchemy.exc import IntegrityError

from app import database as db
from app.core.errors import IdempotencyConflictError, NotFoundError, ServiceError
from app.core.remote_file import FetchError
from app.core.validation import iso
from app.detection.imaging import ImageError
from app.usecases.jobs import JobQueue, status_of
from app.usecases.observations import get_observation
from app.usecases.scene_runs import SceneRequest, analyse_scene

if TYPE_CHECKING:
    from app.usecases.observations import Idempotency

log = logging.getLogger(__name__)

TASK_NAME = "wagon.analyse_scene"


class SceneJobs:
    """Submit, run, report and resume scene jobs on a :class:`JobQueue`'s huey (register before its worker
    starts)."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.store = queue.store
        self.settings = queue.settings
        self.task = queue.huey.task(name=TASK_NAME)(self.run)

    # ---------------------------------------------------------------------------------------------- submit

    def submit(self, request: SceneRequest, submitted_by: str, idempotency_key: str | None = None) -> tuple[str, bool]:
        """Record and enqueue a job; ``(job id, True)``, or ``(the first job's id, False)`` for a repeated
        ``Idempotency-Key`` (:class:`IdempotencyConflictError` when it came with another request)."""
        wanted = request.to_dict()
        if idempotency_key is not None:
            existing = self._by_key(submitted_by, idempotency_key, wanted)
            if existing is not None:
                return existing, False
        job_id = str(uuid.uuid4())
        now = db.utcnow()
        try:
            with self.store.transaction() as session:
                session.add(
                    db.SceneJob(
                        id=job_id,
                        status="queued",
                        progress=0.0,
                        request=wanted,
                        submitted_by=submitted_by,
                        idempotency_key=idempotency_key,
                        created_at=now,
                        updated_at=now,
                    )
                )
        except IntegrityError:  # a concurrent submission with the same key won
            assert idempotency_key is not None
            existing = self._by_key(submitted_by, idempotency_key, wanted)
            if existing is None:
                raise
            return existing, False
        self.task(job_id)
        log.info("scene job %s queued (%d facilities)", job_id, len(request.facilities))
        return job_id, True

    def _by_key(self, submitted_by: str, key: str, wanted: dict[str, Any]) -> str | None:
        with self.store.session() as session:
            job = (
                session.query(db.SceneJob)
                .filter(db.SceneJob.submitted_by == submitted_by, db.SceneJob.idempotency_key == key)
                .first()
            )
            if job is None:
                return None
            if job.request != wanted:
                raise IdempotencyConflictError(
                    f"Idempotency-Key {key!r} was used for scene job {job.id}, a different scene or request "
                    "(a new request needs a new key)"
                )
            return str(job.id)

    def resume(self) -> int:
        """Enqueue again queued jobs whose task is not pending and running jobs whose lease has expired."""
        now = db.utcnow()
        with self.store.session() as session:
            left = [
                j.id
                for j in session.query(db.SceneJob).filter(
                    or_(
                        db.SceneJob.status == "queued",
                        and_(
                            db.SceneJob.status == "running",
                            or_(db.SceneJob.lease_until.is_(None), db.SceneJob.lease_until < now),
                        ),
                    )
                )
            ]
        pending = {t.args[0] for t in self.queue.huey.pending() if t.args} if left else set()
        again = [j for j in left if j not in pending]
        for job_id in again:
            self.task(job_id)
        return len(again)

    # ---------------------------------------------------------------------------------------------- run

    def _claim(self, job_id: str) -> bool:
        now = db.utcnow()
        with self.store.transaction() as session:
            result = session.execute(
                update(db.SceneJob)
                .where(
                    db.SceneJob.id == job_id,
                    or_(
                        db.SceneJob.status == "queued",
                        and_(
                            db.SceneJob.status == "running",
                            or_(db.SceneJob.lease_until.is_(None), db.SceneJob.lease_until < now),
                        ),
                    ),
                )
                .values(
                    status="running",
                    progress=0.0,
                    claimed_by=self.queue.worker_id,
                    lease_until=now + timedelta(seconds=self.queue.lease_s),
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            return cast(CursorResult, result).rowcount == 1  # an UPDATE's result is a CursorResult

    def _renew_until(self, job_id: str, stop: threading.Event) -> None:
        while not stop.wait(self.queue.lease_s / 3):
            try:
                with self.store.transaction() as session:
                    session.execute(
                        update(db.SceneJob)
                        .where(db.SceneJob.id == job_id, db.SceneJob.claimed_by == self.queue.worker_id)
                        .values(lease_until=db.utcnow() + timedelta(seconds=self.queue.lease_s))
                        .execution_options(synchronize_session=False)
                    )
            except Exception:
                log.exception("scene job %s: lease renewal failed", job_id)

    def run(self, job_id: str) -> None:
        """Claim the job, analyse the scene and record the outcome (the huey task body)."""
        if not self._claim(job_id):
            log.info("scene job %s is finished or another worker holds it; duplicate task dropped", job_id)
            return
        with self.store.session() as session:
            job = session.get(db.SceneJob, job_id)
            assert job is not None  # just claimed
            request = SceneRequest.from_dict(job.request)
            idempotency: Idempotency | None = (
                None if job.idempotency_key is None else (job.submitted_by, job.idempotency_key)
            )
        stop = threading.Event()
        beat = threading.Thread(target=self._renew_until, args=(job_id, stop), daemon=True)
        beat.start()
        try:
            outcome = analyse_scene(
                self.store,
                self.settings,
                self.queue.detector(),
                request,
                idempotency,
                progress=lambda share: self._update(job_id, progress=round(share, 4)),
            )
        except (ImageError, ServiceError, FileNotFoundError) as exc:
            log.warning("scene job %s failed: %s", job_id, exc)
            status = exc.status if isinstance(exc, FetchError) else status_of(exc)
            self._update(job_id, status="failed", error=str(exc)[:2000], error_status=status, lease_until=None)
            return
        except Exception as exc:
            log.exception("scene job %s failed", job_id)
            self._update(
                job_id, status="failed", error=f"internal error: {exc}"[:2000], error_status=500, lease_until=None
            )
            return
        finally:
            stop.set()
            beat.join()
        self._update(job_id, status="done", progress=1.0, result=outcome.to_dict(), lease_until=None)
        log.info("scene job %s done: %d observation(s)", job_id, len(outcome.observations))

    def _update(self, job_id: str, **fields: Any) -> None:
        with self.store.transaction() as session:
            job = session.get(db.SceneJob, job_id)
            if job is None:
                return
            for k, v in fields.items():
                setattr(job, k, v)
            job.updated_at = db.utcnow()

    # ---------------------------------------------------------------------------------------------- report

    def submitter(self, job_id: str) -> str | None:
        """Who submitted a job (None for an unknown job)."""
        with self.store.session() as session:
            job = session.get(db.SceneJob, job_id)
            return None if job is None else job.submitted_by

    def get(self, job_id: str) -> dict[str, Any]:
        """The job as shown to users: each facility's observation in full when done; :class:`NotFoundError`."""
        with self.store.session() as session:
            job = session.get(db.SceneJob, job_id)
            if job is None:
                raise NotFoundError(f"scene job {job_id!r} not found")
            request = dict(job.request)
            out: dict[str, Any] = {
                "id": job.id,
                "status": job.status,
                "progress": job.progress,
                "captured_at": request["captured_at"],
                "source": {k: v for k, v in request["source"].items() if k != "stac_item"},
                "facilities": request["facilities"],
                "created_at": iso(job.created_at),
                "updated_at": iso(job.updated_at),
                "error": job.error,
                "error_status": job.error_status,
                "result": None,
            }
            result = None if job.result is None else dict(job.result)
        if result is not None:
            result["observations"] = [
                {
                    "facility_id": o["facility_id"],
                    "created": o["created"],
                    "observation": get_observation(self.store, o["observation_id"]).to_dict(with_detections=True),
                }
                for o in result["observations"]
            ]
            out["result"] = result
        return out
