"""Imports of historical counts (JSON or CSV rows, no images): validation row by row, duplicates skipped, one
transaction, then the facility's later observations rescored."""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy.orm import Session

from app import database as db
from app.core.errors import (
    MAX_REPORTED_ERRORS,
    ConflictError,
    IdempotencyConflictError,
    ImportValidationError,
    InvalidInputError,
)
from app.core.offline import CLASS_NAMES
from app.core.validation import CaptureWindow, check_text, iso, parse_capture_time, require_aware
from app.usecases import import_store
from app.usecases.facilities import require_facility
from app.usecases.observations import SOURCE_IMPORT, Idempotency, ObservationRecord, observation_record

log = logging.getLogger(__name__)

#: Most rows one import may carry.
MAX_IMPORT_ROWS = 100_000
#: Capture times accepted when the caller passes no settings.
DEFAULT_CAPTURE_WINDOW = CaptureWindow()
#: Most objects of each class one imported observation may count, when the caller passes no settings
#: (``WAGON_MAX_RAILCARS``, ``WAGON_MAX_CONTAINERS``).
#: Counts with more digits than this are refused before they are converted (no limit is that large).
MAX_COUNT_DIGITS = 9
DEFAULT_MAX_COUNTS: Mapping[str, int] = MappingProxyType({"railcar": 5_000, "container": 20_000})
#: Tries to score an import unlocked before writing it (another writer of the facility meanwhile makes it retry).
PLAN_ATTEMPTS = 3


@dataclass(frozen=True)
class ImportRow:
    """One validated historical observation to import. ``counts`` holds only the known classes."""

    captured_at: datetime
    counts: dict[str, int]
    source: str = SOURCE_IMPORT


def parse_json_import(
    payload: Any, window: CaptureWindow = DEFAULT_CAPTURE_WINDOW, max_counts: Mapping[str, int] = DEFAULT_MAX_COUNTS
) -> list[ImportRow]:
    """Validate a JSON import body ``{"observations": [{"captured_at", "counts", "source"?}, ...]}``.

    Every row is checked before anything is returned; :class:`ImportValidationError` names each bad row as
    ``observations[i]`` (0-based). A class absent from ``counts`` (or given as null) is unknown. Capture times
    must lie in ``window``, counts within ``max_counts``.
    """
    if not isinstance(payload, Mapping):
        raise InvalidInputError('body must be a JSON object {"observations": [...]}')
    extra = sorted(set(payload) - {"observations"})
    if extra:
        raise InvalidInputError(f"unknown field(s) in body: {', '.join(extra)}")
    items = payload.get("observations")
    if not isinstance(items, list):
        raise InvalidInputError('body must contain "observations": a list of observations')
    _check_row_total(len(items))
    rows: list[ImportRow] = []
    errors: list[str] = []
    for i, item in enumerate(items):
        where = f"observations[{i}]"
        try:
            rows.append(_json_row(item, window, max_counts))
        except InvalidInputError as exc:
            errors.append(f"{where}: {exc}")
    if errors:
        raise ImportValidationError(errors, len(items))
    return rows


def _json_row(item: Any, window: CaptureWindow, max_counts: Mapping[str, int]) -> ImportRow:
    if not isinstance(item, Mapping):
        raise InvalidInputError("must be an object with captured_at and counts")
    problems: list[str] = []
    extra = sorted(set(item) - {"captured_at", "counts", "source"})
    if extra:
        problems.append(f"unknown field(s) {', '.join(extra)}")
    captured_at: datetime | None = None
    raw_time = item.get("captured_at")
    if not isinstance(raw_time, str):
        problems.append("captured_at is required (ISO 8601 string with timezone)")
    else:
        try:
            captured_at = parse_capture_time(raw_time, window)
        except InvalidInputError as exc:
            problems.append(str(exc))
    counts: dict[str, int] = {}
    raw_counts = item.get("counts")
    if not isinstance(raw_counts, Mapping):
        problems.append('counts is required (an object such as {"railcar": 12})')
    else:
        for cls, value in raw_counts.items():
            if cls not in CLASS_NAMES:
                problems.append(f"unknown class {cls!r} (known: {', '.join(CLASS_NAMES)})")
            elif value is None:
                continue  # explicitly unknown
            elif isinstance(value, bool) or not isinstance(value, int) and not _integral_float(value):
                problems.append(f"count of {cls} must be a whole number, got {value!r}")
            elif not 0 <= int(value) <= max_counts[cls]:
                problems.append(f"count of {cls} must be between 0 and {max_counts[cls]}, got {value}")
            else:
                counts[cls] = int(value)
        if not counts and not problems:
            problems.append("no known count (at least one class must have a number)")
    source = item.get("source", SOURCE_IMPORT)
    if not isinstance(source, str) or not 1 <= len(source.strip()) <= 64:
        problems.append("source must be a string of 1 to 64 characters")
    else:
        try:
            check_text(source, "source")
        except InvalidInputError as exc:
            problems.append(str(exc))
    if problems:
        raise InvalidInputError("; ".join(problems))
    assert captured_at is not None
    return ImportRow(captured_at=captured_at, counts=counts, source=source.strip())


def _integral_float(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


def parse_csv_import(
    text: str,
    source: str = SOURCE_IMPORT,
    window: CaptureWindow = DEFAULT_CAPTURE_WINDOW,
    max_counts: Mapping[str, int] = DEFAULT_MAX_COUNTS,
) -> list[ImportRow]:
    """Validate a CSV import: header ``captured_at`` plus class columns (and optionally ``source``).

    An empty cell is an unknown count. Every row is checked first; :class:`ImportValidationError` names each bad
    row by its line number in the file (the header is line 1). Blank lines are skipped. Capture times must lie in
    ``window``, counts within ``max_counts``.
    """
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidInputError("CSV body is empty; expected a header such as captured_at,railcar,container") from None
    except csv.Error as exc:
        raise InvalidInputError(f"CSV header cannot be read: {exc}") from None
    columns = [h.strip().lower() for h in header]
    if "captured_at" not in columns:
        raise InvalidInputError("CSV header must contain captured_at (e.g. captured_at,railcar,container)")
    unknown = [c for c in columns if c not in ("captured_at", "source", *CLASS_NAMES)]
    if unknown:
        raise InvalidInputError(
            f"unknown CSV column(s) {', '.join(map(repr, unknown))}; allowed: captured_at, source, "
            + ", ".join(CLASS_NAMES)
        )
    if len(set(columns)) != len(columns):
        raise InvalidInputError("CSV header repeats a column")
    if not any(c in CLASS_NAMES for c in columns):
        raise InvalidInputError(f"CSV header needs at least one class column ({', '.join(CLASS_NAMES)})")
    rows: list[ImportRow] = []
    errors: list[str] = []
    total = 0
    try:
        for cells in reader:
            line = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue
            total += 1
            _check_row_total(total)
            try:
                rows.append(_csv_row(columns, cells, source, window, max_counts))
            except InvalidInputError as exc:
                errors.append(f"line {line}: {exc}")
    except csv.Error as exc:
        errors.append(f"line {reader.line_num}: {exc}")
    if errors:
        raise ImportValidationError(errors, max(total, len(errors)))
    if not rows:
        raise InvalidInputError("CSV body has a header but no rows")
    return rows


def _csv_row(
    columns: list[str], cells: list[str], default_source: str, window: CaptureWindow, max_counts: Mapping[str, int]
) -> ImportRow:
    if len(cells) != len(columns):
        raise InvalidInputError(f"has {len(cells)} cells, the header has {len(columns)}")
    problems: list[str] = []
    captured_at: datetime | None = None
    counts: dict[str, int] = {}
    source = default_source
    for col, cell in zip(columns, cells, strict=True):
        cell = cell.strip()
        if col == "captured_at":
            try:
                captured_at = parse_capture_time(cell, window)
            except InvalidInputError as exc:
                problems.append(str(exc))
        elif col == "source":
            if cell:
                if len(cell) > 64:
                    problems.append("source is longer than 64 characters")
                try:
                    check_text(cell, "source")
                except InvalidInputError as exc:
                    problems.append(str(exc))
                source = cell
        elif cell:
            if not re.fullmatch(r"[0-9]+", cell):
                problems.append(f"count of {col} must be a whole number >= 0, got {_shown(cell)}")
            elif len(cell.lstrip("0")) > MAX_COUNT_DIGITS or int(cell) > max_counts[col]:
                problems.append(f"count of {col} must be at most {max_counts[col]}, got {_shown(cell)}")
            else:
                counts[col] = int(cell)
    if not counts and not problems:
        problems.append("no known count (every class cell is empty)")
    if problems:
        raise InvalidInputError("; ".join(problems))
    assert captured_at is not None
    return ImportRow(captured_at=captured_at, counts=counts, source=source)


def _shown(text: str, limit: int = 40) -> str:
    """``text`` as quoted in a refusal: shortened when long (a count of 5,000 digits need not come back whole)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def _check_row_total(n: int) -> None:
    if n > MAX_IMPORT_ROWS:
        raise InvalidInputError(f"an import may hold at most {MAX_IMPORT_ROWS} observations")


def import_observations(store: db.Store, facility_id: str, rows: Sequence[ImportRow]) -> list[ObservationRecord]:
    """Store historical counts (no images) and rescore later observations (:func:`import_counts`); return the
    observations stored, oldest first (rows repeating stored observations are skipped)."""
    return import_counts(store, facility_id, rows).observations


@dataclass(frozen=True)
class ImportResult:
    """What an import stored (``observations``, oldest first), how many rows it skipped as already stored
    (``duplicates``), and whether it is the answer of an earlier import with the same ``Idempotency-Key``."""

    observations: list[ObservationRecord]
    duplicates: int = 0
    replayed: bool = False


def import_counts(
    store: db.Store,
    facility_id: str,
    rows: Sequence[ImportRow],
    idempotency: Idempotency | None = None,
    payload_sha256: str = "",
    progress: Callable[[float], None] | None = None,
) -> ImportResult:
    """Store historical counts (no images) in one transaction and rescore every later observation.

    The scores are computed before the write transaction, from the history as read then
    (:mod:`app.usecases.import_store`); the transaction only writes, after checking that the history is unchanged
    (else the import is scored again; the last of :data:`PLAN_ATTEMPTS` tries scores inside the transaction).

    Never counted twice: a row with the same ``captured_at``, ``source`` and known counts as an observation already
    stored at the facility (or as an earlier row of the same import) is skipped and counted in ``duplicates``; one
    with the same time and source but other counts raises :class:`ConflictError` naming it, and nothing is stored.
    With ``idempotency`` (an ``Idempotency-Key`` and its scope), a repeat of the same key with the same
    ``payload_sha256`` returns the first result (``replayed``) and stores nothing; with another payload it raises
    :class:`IdempotencyConflictError`. The key is recorded in the same transaction as the rows. ``progress`` is
    told the share of the points scored (0-1) as scoring goes.
    """
    if not rows:
        raise InvalidInputError("nothing to import: no observations given")
    for attempt in range(PLAN_ATTEMPTS):
        locked = attempt == PLAN_ATTEMPTS - 1  # the last try plans inside the write transaction
        if not locked:
            with store.session() as session:
                require_facility(session, facility_id)
                if idempotency is not None:
                    prior = session.get(db.ImportRequest, (facility_id, *idempotency))
                    if prior is not None:
                        return _replay_import(session, prior, idempotency[1], payload_sha256)
                fingerprint = db.history_fingerprint(session, facility_id)
                fresh, duplicates = _new_rows(session, facility_id, rows)
                snapshot = import_store.read_snapshot(session, facility_id, fresh)
            scores = import_store.compute_scores(snapshot, progress)  # the slow part, holding no lock
            prepared = import_store.prepare(facility_id, fresh, scores, db.utcnow())
        with store.transaction() as session:
            require_facility(session, facility_id, lock=True)
            if idempotency is not None:
                prior = session.get(db.ImportRequest, (facility_id, *idempotency))
                if prior is not None:
                    return _replay_import(session, prior, idempotency[1], payload_sha256)
            if locked:
                fresh, duplicates = _new_rows(session, facility_id, rows)
                scores = import_store.compute_scores(import_store.read_snapshot(session, facility_id, fresh), progress)
                prepared = import_store.prepare(facility_id, fresh, scores, db.utcnow())
            elif db.history_fingerprint(session, facility_id) != fingerprint:
                log.info("facility %s: history changed while an import was scored; scoring again", facility_id)
                continue
            ids = import_store.write_import(session, prepared)
            if idempotency is not None:
                session.add(
                    db.ImportRequest(
                        facility_id=facility_id,
                        idempotency_scope=idempotency[0],
                        idempotency_key=idempotency[1],
                        payload_sha256=payload_sha256,
                        observation_ids=import_store.oldest_first(prepared, ids),
                        duplicates=duplicates,
                        created_at=db.utcnow(),
                    )
                )
        records = import_store.records(prepared, ids)
        log.info("facility %s: imported %d observations, skipped %d duplicates", facility_id, len(records), duplicates)
        return ImportResult(records, duplicates)
    raise AssertionError("unreachable: the last attempt plans under the lock")


def _replay_import(session: Session, prior: db.ImportRequest, key: str, payload_sha256: str) -> ImportResult:
    """The result of the import stored under this ``Idempotency-Key`` (the same payload), else refuse."""
    if prior.payload_sha256 != payload_sha256:
        raise IdempotencyConflictError(
            f"Idempotency-Key {key!r} was used for another import (at {iso(prior.created_at)}, "
            f"{len(prior.observation_ids)} observations stored); this body differs (a new import needs a new key)"
        )
    ids = [int(i) for i in prior.observation_ids]
    by_id = {o.id: o for o in (session.get(db.Observation, i) for i in ids) if o is not None}
    objs = sorted(by_id.values(), key=lambda o: (o.captured_at, o.id))
    return ImportResult([observation_record(o) for o in objs], int(prior.duplicates), replayed=True)


def _new_rows(session: Session, facility_id: str, rows: Sequence[ImportRow]) -> tuple[list[ImportRow], int]:
    """The rows that repeat no stored observation of the facility (nor an earlier row), and how many did.

    A row repeats an observation with the same ``captured_at``, ``source`` and known counts; one with the same time
    and source but other counts is a conflict (:class:`ConflictError` naming the first few such rows)."""
    seen: dict[tuple[datetime, str], tuple[dict[str, int], str]] = {
        (t, src): (counts, f"observation {oid}") for oid, t, src, counts in db.observation_counts(session, facility_id)
    }
    fresh: list[ImportRow] = []
    conflicts: list[str] = []
    for i, row in enumerate(rows):
        key = (require_aware(row.captured_at), row.source)
        earlier = seen.get(key)
        if earlier is None:
            seen[key] = (dict(row.counts), f"row {i + 1}")
            fresh.append(row)
        elif earlier[0] != row.counts:
            conflicts.append(
                f"row {i + 1} ({iso(key[0])}, source {row.source!r}, counts {row.counts}) differs from "
                f"{earlier[1]} {earlier[0]}"
            )
    if conflicts:
        shown = "; ".join(conflicts[:MAX_REPORTED_ERRORS])
        more = len(conflicts) - MAX_REPORTED_ERRORS
        raise ConflictError(
            f"{len(conflicts)} row(s) give other counts for a time and source already stored; nothing was imported "
            "(a second reading at the same time needs another source): "
            + shown
            + (f"; and {more} more" if more > 0 else "")
        )
    return fresh, len(rows) - len(fresh)
