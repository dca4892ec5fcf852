"""Large imports done in the background: the validated rows kept in the archive until a worker imports them.

An import of more than ``WAGON_ASYNC_IMPORT_ROWS`` rows is validated in the request (a bad row is refused there,
nothing queued), its rows are written to ``<archive>/imports/<digest[:2]>/<digest>.json`` (the digest is that of
the request's media type and body, the one an ``Idempotency-Key`` is checked against) and a job of kind ``import``
is queued (:meth:`app.usecases.jobs.JobQueue.submit_import`). The worker imports them with
:func:`app.usecases.imports.import_counts` (the same scores, duplicates and conflicts as a direct import) and
stores ``{"imported", "duplicates", "observation_ids"}`` as the job's result.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app import database as db
from app.core.errors import DatabaseBusyError, IdempotencyConflictError
from app.core.validation import iso
from app.usecases.imports import ImportRow, import_counts
from app.usecases.observations import Idempotency

log = logging.getLogger(__name__)

KIND = "import"
#: Tries of an import that finds the database locked by other writers (each waits the busy timeout first), and the
#: pause before the next try (times the try's number).
LOCKED_ATTEMPTS = 5
LOCKED_PAUSE_S = 1.0
#: ``Retry-After`` suggested when an import gave up on a locked database.
LOCKED_RETRY_AFTER_S = 10


def payload_path(archive_dir: Path, digest: str) -> Path:
    """Where the validated rows of the import with this digest are kept."""
    return Path(archive_dir) / "imports" / digest[:2] / f"{digest}.json"


def save_rows(archive_dir: Path, digest: str, rows: Sequence[ImportRow]) -> Path:
    """Write validated rows for a worker (atomically: a worker never reads half a file); return the path."""
    path = payload_path(archive_dir, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps([[iso(r.captured_at), r.counts, r.source] for r in rows], separators=(",", ":"))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_rows(archive_dir: Path, digest: str) -> list[ImportRow]:
    """The rows :func:`save_rows` kept (:class:`FileNotFoundError` when gone)."""
    items = json.loads(payload_path(archive_dir, digest).read_text(encoding="utf-8"))
    return [
        ImportRow(datetime.fromisoformat(t), {str(c): int(n) for c, n in counts.items()}, src)
        for t, counts, src in items
    ]


def existing_job(session: Session, facility_id: str, digest: str, idempotency: Idempotency | None) -> db.Job | None:
    """The import job this submission repeats: the one queued with the same ``Idempotency-Key`` (whatever its
    status; :class:`IdempotencyConflictError` when it came with another body), else an unfinished one with the
    same body. None: queue a new one."""
    jobs = session.query(db.Job).filter(db.Job.facility_id == facility_id, db.Job.kind == KIND)
    if idempotency is not None:
        job = jobs.filter(db.Job.idempotency_scope == idempotency[0], db.Job.idempotency_key == idempotency[1]).first()
        if job is not None:
            if job.payload_sha256 != digest:
                raise IdempotencyConflictError(
                    f"Idempotency-Key {idempotency[1]!r} was used for import job {job.id} (at "
                    f"{iso(job.created_at)}); this body differs (a new import needs a new key)"
                )
            return job
        return None
    return jobs.filter(db.Job.status.in_(("queued", "running")), db.Job.payload_sha256 == digest).first()


def run_import(
    store: db.Store,
    archive_dir: Path,
    facility_id: str,
    digest: str,
    idempotency: Idempotency | None,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Import a job's rows; return its result ``{"imported", "duplicates", "observation_ids"}``. A database locked
    by other writers is waited for (:data:`LOCKED_ATTEMPTS` tries) before the error is let through."""
    rows = load_rows(archive_dir, digest)
    for attempt in range(1, LOCKED_ATTEMPTS + 1):
        try:
            result = import_counts(store, facility_id, rows, idempotency, digest, progress=progress)
            break
        except OperationalError as exc:
            if not db.is_lock_error(exc):
                raise
            if attempt == LOCKED_ATTEMPTS:
                raise DatabaseBusyError(
                    f"the database stayed locked by other writers ({LOCKED_ATTEMPTS} tries); nothing was imported: "
                    "send the import again",
                    LOCKED_RETRY_AFTER_S,
                ) from exc
            log.warning("import into %s: database locked (try %d); trying again", facility_id, attempt)
            time.sleep(LOCKED_PAUSE_S * attempt)
    return {
        "imported": len(result.observations),
        "duplicates": result.duplicates,
        "observation_ids": [o.id for o in result.observations],
    }
