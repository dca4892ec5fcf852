"""The service's use cases, shared by the API and the CLI: facilities, image analysis, imports, time series.

Nothing here knows about HTTP. Failures raise :class:`ServiceError` subclasses (or
:class:`app.imaging.ImageError`) whose messages are fit to show to the user.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import store as db
from app import alerts, fit_cache
from app.anomaly import MIN_HISTORY, AnomalyScore, count_uncertainty, pooled_prior, score_series
from app.detection import Detection, DetectionResult
from app.imaging import DecodedImage, decode_image
from app.offline import CLASS_NAMES

if TYPE_CHECKING:
    from app.settings import Settings

log = logging.getLogger(__name__)

FACILITY_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
#: Text without control characters (names, sources, ids in paths): PostgreSQL refuses NUL in text, and no name
#: needs a control character.
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f]*$"
FACILITY_KINDS: tuple[str, ...] = ("rail", "port", "mixed")
#: Most rows one import may carry.
MAX_IMPORT_ROWS = 100_000
#: Largest count accepted in an import.
MAX_COUNT = 1_000_000
#: At most this many row errors are spelled out in one message.
MAX_REPORTED_ERRORS = 20
SOURCE_IMAGE = "image"
SOURCE_IMPORT = "import"
#: Detector count error as a share of the true count, when the caller does not pass the configured one
#: (railcar ``count_err_over_true`` of the shipped model: 0.199 on held-out synthetic chips, 0.207 on real images).
DEFAULT_COUNT_REL_ERROR = 0.20


# ----------------------------------------------------------------------------------------------------- errors


class ServiceError(Exception):
    """Base class of the service's refusals."""


class NotFoundError(ServiceError):
    """The named facility or observation does not exist."""


class ConflictError(ServiceError):
    """The thing to create exists already."""


class InvalidInputError(ServiceError, ValueError):
    """Input is well-formed transport-wise but its content is invalid."""


class ImportValidationError(InvalidInputError):
    """Some import rows are invalid; nothing was imported. ``errors`` names each bad row."""

    def __init__(self, errors: Sequence[str], total: int) -> None:
        self.errors = list(errors)
        shown = "; ".join(self.errors[:MAX_REPORTED_ERRORS])
        more = len(self.errors) - MAX_REPORTED_ERRORS
        suffix = f"; and {more} more" if more > 0 else ""
        noun = "row is" if len(self.errors) == 1 else "rows are"
        super().__init__(f"{len(self.errors)} of {total} {noun} invalid; nothing was imported: {shown}{suffix}")


class IdempotencyConflictError(InvalidInputError):
    """An ``Idempotency-Key`` was used again with a different upload."""


class ModelUnavailableError(ServiceError):
    """No detector is loaded in this process."""


# ----------------------------------------------------------------------------------------------------- values


class DetectorProtocol(Protocol):
    """What the service needs from :class:`app.detector.Detector`."""

    name: str
    version: str
    class_names: tuple[str, ...]

    def detect(self, image: np.ndarray, gsd_m: float | None = None) -> DetectionResult:
        """Detect objects in an ``H x W x 3`` RGB uint8 image."""
        ...


@dataclass(frozen=True)
class FacilityRecord:
    """A facility as shown to users."""

    id: str
    name: str
    kind: str
    created_at: datetime
    observation_count: int = 0
    footprint: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"id": self.id, "name": self.name, "kind": self.kind, "created_at": _iso(self.created_at),
                "observation_count": self.observation_count, "footprint": self.footprint}


@dataclass(frozen=True)
class ImportRow:
    """One validated historical observation to import. ``counts`` holds only the known classes."""

    captured_at: datetime
    counts: dict[str, int]
    source: str = SOURCE_IMPORT


@dataclass(frozen=True)
class Analysis:
    """Result of decoding and detecting one image (no database involved)."""

    image: DecodedImage
    result: DetectionResult
    model_name: str
    model_version: str
    class_names: tuple[str, ...]
    gsd_m: float | None
    decode_ms: float
    detect_ms: float
    geo: dict[str, Any] | None = None  # georeferencing and region read (app.scenes)
    coverage: dict[str, Any] | None = None  # share of the facility footprint covered

    @property
    def counts(self) -> dict[str, int]:
        """Detections per class, every class present."""
        return self.result.counts(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape used by ``wagon-detector detect`` (same field shapes as the API)."""
        return {
            "counts": self.counts,
            "detections": [d.to_dict() for d in self.result.detections],
            "model": {"name": self.model_name, "version": self.model_version},
            "image": {"width": self.image.width, "height": self.image.height, "format": self.image.format,
                      "gsd_m": self.gsd_m, "sha256": self.image.sha256},
            "timing_ms": {"decode": round(self.decode_ms, 1), "detect": round(self.detect_ms, 1)},
            "coverage": self.coverage,
            "geo": self.geo,
        }


@dataclass(frozen=True)
class ObservationRecord:
    """One observation as shown to users. Unknown classes have ``None`` count and anomaly."""

    id: int
    facility_id: str
    captured_at: datetime
    source: str
    counts: dict[str, int | None]
    anomaly: dict[str, AnomalyScore | None]
    image: dict[str, Any] | None
    model: dict[str, str] | None
    detections: list[Detection] | None = field(default=None)
    coverage: dict[str, Any] | None = None
    exposure: float | None = None

    @property
    def has_image(self) -> bool:
        """Whether the observation came from an analysed image."""
        return self.image is not None

    def to_dict(self, with_detections: bool = False) -> dict[str, Any]:
        """JSON-ready form."""
        out: dict[str, Any] = {
            "id": self.id,
            "facility_id": self.facility_id,
            "captured_at": _iso(self.captured_at),
            "source": self.source,
            "has_image": self.has_image,
            "counts": dict(self.counts),
            "anomaly": {k: (None if v is None else v.to_dict()) for k, v in self.anomaly.items()},
            "image": self.image,
            "model": self.model,
            "coverage": self.coverage,
            "exposure": self.exposure,
        }
        if with_detections:
            out["detections"] = [d.to_dict() for d in (self.detections or [])]
        return out


# -------------------------------------------------------------------------------------------------- helpers


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


#: RFC 3339 in UTC (``...Z``), the API's one time format.
iso = _iso


def parse_timestamp(value: str, name: str = "captured_at") -> datetime:
    """Parse an ISO 8601 datetime that carries a timezone; return it in UTC.

    The rule, everywhere a time is read (form fields, query parameters, JSON and CSV imports): a timezone is
    required (``Z`` or ``+hh:mm``); a naive time is refused rather than guessed. Raises :class:`InvalidInputError`
    for malformed or naive values and for times that do not exist in UTC (year 1 with a positive offset).
    """
    text = (value or "").strip()
    if not text:
        raise InvalidInputError(f"{name} is required (ISO 8601 with timezone, e.g. 2024-05-01T10:30:00Z)")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"{name} {value!r} is not an ISO 8601 datetime (expected e.g. 2024-05-01T10:30:00Z)"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise InvalidInputError(
            f"{name} {value!r} has no timezone; add one, e.g. 'Z' or '+00:00' (2024-05-01T10:30:00Z)"
        )
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise InvalidInputError(f"{name} {value!r} is out of range in UTC") from None


def check_text(value: str, name: str) -> str:
    """Return ``value`` unless it holds a control character (NUL, tab, newline, ...): :class:`InvalidInputError`."""
    if not re.fullmatch(NO_CONTROL_PATTERN, value):
        raise InvalidInputError(f"{name} must not contain control characters (such as NUL or a line break)")
    return value


def validate_facility_id(facility_id: str) -> str:
    """Return the id if it is a lowercase slug, else raise :class:`InvalidInputError`."""
    if not isinstance(facility_id, str) or not re.fullmatch(FACILITY_ID_PATTERN, facility_id):
        raise InvalidInputError(
            f"facility id {facility_id!r} must be a lowercase slug matching {FACILITY_ID_PATTERN}"
        )
    return facility_id


# ------------------------------------------------------------------------------------------------ facilities


def create_facility(store: db.Store, facility_id: str, name: str, kind: str,
                    footprint: dict[str, Any] | None = None) -> FacilityRecord:
    """Create a facility (optionally with a WGS84 GeoJSON Polygon footprint); :class:`ConflictError` if the id is
    taken."""
    validate_facility_id(facility_id)
    footprint = check_footprint(footprint)
    if kind not in FACILITY_KINDS:
        raise InvalidInputError(f"kind {kind!r} must be one of {', '.join(FACILITY_KINDS)}")
    if not name or not name.strip():
        raise InvalidInputError("name must not be empty")
    check_text(name, "name")
    try:
        with store.transaction() as session:
            if db.get_facility(session, facility_id) is not None:
                raise ConflictError(f"facility {facility_id!r} exists already")
            row = db.Facility(id=facility_id, name=name.strip(), kind=kind, created_at=db.utcnow(),
                              footprint=footprint)
            session.add(row)
            session.flush()
            return _facility_record(row, 0)
    except IntegrityError as exc:  # lost a race with a concurrent create
        raise ConflictError(f"facility {facility_id!r} exists already") from exc


def get_facility(store: db.Store, facility_id: str) -> FacilityRecord:
    """One facility; :class:`NotFoundError` if unknown."""
    with store.session() as session:
        row = _require_facility(session, facility_id)
        return _facility_record(row, db.count_observations(session, facility_id))


_UNSET: Any = object()


def update_facility(store: db.Store, facility_id: str, name: str | None = None,
                    footprint: dict[str, Any] | None = _UNSET) -> FacilityRecord:
    """Change a facility's name and/or footprint (``footprint=None`` removes it); :class:`NotFoundError` if
    unknown. Existing observations keep their counts (rerun them with ``wagon-detector reprocess``)."""
    if name is not None and not name.strip():
        raise InvalidInputError("name must not be empty")
    if name is not None:
        check_text(name, "name")
    checked = footprint if footprint is _UNSET else check_footprint(footprint)
    with store.transaction() as session:
        row = _require_facility(session, facility_id)
        if name is not None:
            row.name = name.strip()
        if checked is not _UNSET:
            row.footprint = checked
        session.flush()
        return _facility_record(row, db.count_observations(session, facility_id))


def list_facilities(store: db.Store, after: str | None = None, limit: int | None = None) -> list[FacilityRecord]:
    """Facilities ordered by id (those after the id ``after``; at most ``limit``)."""
    with store.session() as session:
        return [_facility_record(f, n) for f, n in db.list_facilities(session, after=after, limit=limit)]


def _require_facility(session: Session, facility_id: str, lock: bool = False) -> db.Facility:
    """The facility (``lock``: locked against other writers of its history, before rescoring it)."""
    row = db.lock_facility(session, facility_id) if lock else db.get_facility(session, facility_id)
    if row is None:
        raise NotFoundError(f"facility {facility_id!r} not found")
    return row


def _facility_record(row: db.Facility, n: int) -> FacilityRecord:
    return FacilityRecord(id=row.id, name=row.name, kind=row.kind, created_at=row.created_at, observation_count=n,
                          footprint=row.footprint)


def check_footprint(footprint: dict[str, Any] | None) -> dict[str, Any] | None:
    """``None``, or the footprint validated as a WGS84 GeoJSON Polygon (:class:`InvalidInputError` if not)."""
    if footprint is None:
        return None
    from app.pipeline import validate_footprint

    try:
        return validate_footprint(footprint)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


# ---------------------------------------------------------------------------------------------------- images


def load_configured_detector(settings: Settings) -> DetectorProtocol:
    """The one place that loads the model: weights and threads from settings."""
    path = settings.resolved_model_path
    if not path.exists():
        raise FileNotFoundError(f"model weights not found at {path} (set WAGON_MODEL_PATH)")
    from app.detector import load_detector  # heavy import (torch), deferred until needed
    log.info("loading detector from %s", path)
    if settings.inference_threads:
        import cv2

        cv2.setNumThreads(settings.inference_threads)  # OpenCV's resizing too: workers x threads <= cores
    tta = {"auto": None, "on": True, "off": False}[settings.tta]
    detector: DetectorProtocol = load_detector(path, threads=settings.inference_threads, runtime=settings.runtime,
                                               openvino_precision=settings.openvino_precision, tta=tta)
    log.info("detector %s %s ready", detector.name, detector.version)
    return detector


def analyse_image(
    detector: DetectorProtocol | None, data: bytes, gsd_m: float | None = None, max_pixels: int = 100_000_000
) -> Analysis:
    """Decode image bytes and run the detector (CPU-bound: call it from a worker thread, not an event loop).

    The image is validated before the model's presence is checked, so bad input is reported as such even on a
    service running without a model (which then raises :class:`ModelUnavailableError`).
    """
    from app.scenes import analyse_source  # GeoTIFF/JPEG 2000/NITF through rasterio, JPEG/PNG through Pillow

    return analyse_source(detector, data, gsd_m, max_pixels=max_pixels)


def detect_decoded(
    detector: DetectorProtocol, image: DecodedImage, gsd_m: float | None = None, decode_ms: float = 0.0
) -> Analysis:
    """Run the detector on an already decoded image (CPU-bound)."""
    check_gsd(gsd_m)
    t0 = time.perf_counter()
    result = detector.detect(image.array, gsd_m=gsd_m)
    return Analysis(
        image=image,
        result=result,
        model_name=detector.name,
        model_version=detector.version,
        class_names=tuple(detector.class_names),
        gsd_m=gsd_m,
        decode_ms=decode_ms,
        detect_ms=(time.perf_counter() - t0) * 1000.0,
    )


def check_gsd(gsd_m: float | None) -> None:
    """Raise :class:`InvalidInputError` unless ``gsd_m`` is None or within 0.05-10 m/pixel."""
    if gsd_m is not None and not (math.isfinite(gsd_m) and 0.05 <= gsd_m <= 10):
        raise InvalidInputError(f"gsd_m {gsd_m} must be between 0.05 and 10 metres per pixel")


#: ``(scope, key)`` of an ``Idempotency-Key`` header: the scope is the API key's id (``-`` with auth off).
Idempotency = tuple[str, str]


def find_upload(store: db.Store, facility_id: str, captured_at: datetime, sha256: str,
                idempotency: Idempotency | None = None) -> ObservationRecord | None:
    """The stored observation an upload repeats, or None: the one stored under the same ``Idempotency-Key``, or
    else the one of the same image bytes at the same facility and time. :class:`IdempotencyConflictError` when
    the key was used for a different image or time."""
    captured_at = _require_aware(captured_at)
    with store.session() as session:
        if idempotency is not None:
            obs = db.find_idempotent_observation(session, facility_id, *idempotency)
            if obs is not None:
                if obs.image_sha256 != sha256 or obs.captured_at != captured_at:
                    raise IdempotencyConflictError(
                        f"Idempotency-Key {idempotency[1]!r} was used for observation {obs.id} (image "
                        f"{(obs.image_sha256 or '')[:12]}, captured_at {_iso(obs.captured_at)}); this upload differs "
                        "(a new upload needs a new key)")
                return _observation_record(obs, with_detections=True)
        obs = db.find_image_observation(session, facility_id, captured_at, sha256)
        return None if obs is None else _observation_record(obs, with_detections=True)


def record_upload(
    store: db.Store, facility_id: str, captured_at: datetime, analysis: Analysis,
    idempotency: Idempotency | None = None, count_rel_error: float = DEFAULT_COUNT_REL_ERROR,
    repeat_checked: bool = False,
) -> tuple[ObservationRecord, bool]:
    """Store an analysed upload (:func:`record_analysis`) unless it repeats a stored one (:func:`find_upload`):
    ``(observation, True)`` when stored, ``(original, False)`` when repeated. The database's unique indexes decide
    between concurrent duplicates: the loser gets the winner's observation. ``repeat_checked``: the caller has
    just called :func:`find_upload` (a repeat stored since is refused by the unique indexes and found then)."""
    found = None if repeat_checked else find_upload(store, facility_id, captured_at, analysis.image.sha256,
                                                    idempotency)
    if found is not None:
        return found, False
    try:
        return record_analysis(store, facility_id, captured_at, analysis, count_rel_error=count_rel_error,
                               idempotency=idempotency), True
    except IntegrityError:
        found = find_upload(store, facility_id, captured_at, analysis.image.sha256, idempotency)
        if found is None:
            raise
        log.info("facility %s: concurrent duplicate upload, returning observation %d", facility_id, found.id)
        return found, False


def record_analysis(
    store: db.Store, facility_id: str, captured_at: datetime, analysis: Analysis, source: str = SOURCE_IMAGE,
    count_rel_error: float = DEFAULT_COUNT_REL_ERROR, idempotency: Idempotency | None = None,
) -> ObservationRecord:
    """Store an analysed image as an observation with its detections, score it and rescore later ones.

    Each class count is stored with its uncertainty (:func:`app.anomaly.count_uncertainty` of the detections'
    confidences and ``count_rel_error``), which the score integrates over. Alerts crossing the facility's
    thresholds are queued for the webhook. One transaction: on any failure nothing is stored.
    """
    captured_at = _require_aware(captured_at)
    with store.transaction() as session:
        _require_facility(session, facility_id, lock=True)
        obs = db.Observation(
            facility_id=facility_id,
            captured_at=captured_at,
            source=source,
            created_at=db.utcnow(),
            image_sha256=analysis.image.sha256,
            image_width=analysis.image.width,
            image_height=analysis.image.height,
            image_format=analysis.image.format,
            gsd_m=analysis.gsd_m,
            model_name=analysis.model_name,
            model_version=analysis.model_version,
            geo=analysis.geo,
            coverage=analysis.coverage,
            exposure=None if analysis.coverage is None else analysis.coverage.get("share"),
            idempotency_scope=None if idempotency is None else idempotency[0],
            idempotency_key=None if idempotency is None else idempotency[1],
        )
        conf: dict[str, list[float]] = {}
        for d in analysis.result.detections:
            conf.setdefault(d.class_name, []).append(float(d.confidence))
        obs.counts = [
            db.ObservationCount(class_name=c, count=int(n),
                                count_sd=round(count_uncertainty(conf.get(c, []), int(n), count_rel_error), 4))
            for c, n in analysis.counts.items()
        ]
        rows = [detection_row(d) for d in analysis.result.detections]
        session.add(obs)
        session.flush()
        db.insert_detections(session, obs.id, rows)  # one executemany; the ORM objects would cost more than the SQL
        rescore(session, facility_id, since=captured_at, classes=analysis.counts.keys(), new=obs.counts)
        alerts.enqueue_alerts(session, facility_id, [obs])
        # the detections as stored (what reading them back would give), without reading them back
        record = replace(_observation_record(obs), detections=[_detection(r) for r in rows])
    log.info("facility %s: observation %d at %s counts %s", facility_id, record.id, _iso(captured_at), record.counts)
    return record


# ---------------------------------------------------------------------------------------------------- imports


def parse_json_import(payload: Any) -> list[ImportRow]:
    """Validate a JSON import body ``{"observations": [{"captured_at", "counts", "source"?}, ...]}``.

    Every row is checked before anything is returned; :class:`ImportValidationError` names each bad row as
    ``observations[i]`` (0-based). A class absent from ``counts`` (or given as null) is unknown.
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
            rows.append(_json_row(item))
        except InvalidInputError as exc:
            errors.append(f"{where}: {exc}")
    if errors:
        raise ImportValidationError(errors, len(items))
    return rows


def _json_row(item: Any) -> ImportRow:
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
            captured_at = parse_timestamp(raw_time)
        except InvalidInputError as exc:
            problems.append(str(exc))
    counts: dict[str, int] = {}
    raw_counts = item.get("counts")
    if not isinstance(raw_counts, Mapping):
        problems.append("counts is required (an object such as {\"railcar\": 12})")
    else:
        for cls, value in raw_counts.items():
            if cls not in CLASS_NAMES:
                problems.append(f"unknown class {cls!r} (known: {', '.join(CLASS_NAMES)})")
            elif value is None:
                continue  # explicitly unknown
            elif isinstance(value, bool) or not isinstance(value, int) and not _integral_float(value):
                problems.append(f"count of {cls} must be a whole number, got {value!r}")
            elif not 0 <= int(value) <= MAX_COUNT:
                problems.append(f"count of {cls} must be between 0 and {MAX_COUNT}, got {value}")
            else:
                counts[cls] = int(value)
        if not counts and not problems:
            problems.append("no known count (at least one class must have a number)")
    source = item.get("source", SOURCE_IMPORT)
    if not isinstance(source, str) or not 1 <= len(source.strip()) <= 64:
        problems.append("source must be a string of 1 to 64 characters")
    elif not re.fullmatch(NO_CONTROL_PATTERN, source):
        problems.append("source must not contain control characters")
    if problems:
        raise InvalidInputError("; ".join(problems))
    assert captured_at is not None
    return ImportRow(captured_at=captured_at, counts=counts, source=source.strip())


def _integral_float(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


def parse_csv_import(text: str, source: str = SOURCE_IMPORT) -> list[ImportRow]:
    """Validate a CSV import: header ``captured_at`` plus class columns (and optionally ``source``).

    An empty cell is an unknown count. Every row is checked first; :class:`ImportValidationError` names each bad
    row by its line number in the file (the header is line 1). Blank lines are skipped.
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
                rows.append(_csv_row(columns, cells, source))
            except InvalidInputError as exc:
                errors.append(f"line {line}: {exc}")
    except csv.Error as exc:
        errors.append(f"line {reader.line_num}: {exc}")
    if errors:
        raise ImportValidationError(errors, max(total, len(errors)))
    if not rows:
        raise InvalidInputError("CSV body has a header but no rows")
    return rows


def _csv_row(columns: list[str], cells: list[str], default_source: str) -> ImportRow:
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
                captured_at = parse_timestamp(cell)
            except InvalidInputError as exc:
                problems.append(str(exc))
        elif col == "source":
            if cell:
                if len(cell) > 64:
                    problems.append("source is longer than 64 characters")
                if not re.fullmatch(NO_CONTROL_PATTERN, cell):
                    problems.append("source must not contain control characters")
                source = cell
        elif cell:
            if not re.fullmatch(r"\d+", cell):
                problems.append(f"count of {col} must be a whole number >= 0, got {cell!r}")
            elif int(cell) > MAX_COUNT:
                problems.append(f"count of {col} must be at most {MAX_COUNT}, got {cell}")
            else:
                counts[col] = int(cell)
    if not counts and not problems:
        problems.append("no known count (every class cell is empty)")
    if problems:
        raise InvalidInputError("; ".join(problems))
    assert captured_at is not None
    return ImportRow(captured_at=captured_at, counts=counts, source=source)


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


def import_counts(store: db.Store, facility_id: str, rows: Sequence[ImportRow],
                  idempotency: Idempotency | None = None, payload_sha256: str = "") -> ImportResult:
    """Store historical counts (no images) in one transaction and rescore every later observation.

    Never counted twice: a row with the same ``captured_at``, ``source`` and known counts as an observation already
    stored at the facility (or as an earlier row of the same import) is skipped and counted in ``duplicates``; one
    with the same time and source but other counts raises :class:`ConflictError` naming it, and nothing is stored.
    With ``idempotency`` (an ``Idempotency-Key`` and its scope), a repeat of the same key with the same
    ``payload_sha256`` returns the first result (``replayed``) and stores nothing; with another payload it raises
    :class:`IdempotencyConflictError`. The key is recorded in the same transaction as the rows.
    """
    if not rows:
        raise InvalidInputError("nothing to import: no observations given")
    with store.transaction() as session:
        _require_facility(session, facility_id, lock=True)
        if idempotency is not None:
            prior = session.get(db.ImportRequest, (facility_id, *idempotency))
            if prior is not None:
                return _replay_import(session, prior, idempotency[1], payload_sha256)
        fresh, duplicates = _new_rows(session, facility_id, rows)
        created = db.utcnow()
        objs: list[db.Observation] = []
        for row in fresh:
            obs = db.Observation(facility_id=facility_id, captured_at=_require_aware(row.captured_at),
                                 source=row.source, created_at=created)
            obs.counts = [db.ObservationCount(class_name=c, count=int(n)) for c, n in row.counts.items()]
            objs.append(obs)
        session.add_all(objs)
        session.flush()
        for cls in CLASS_NAMES:
            times = [r.captured_at for r in fresh if cls in r.counts]
            if times:
                rescore(session, facility_id, since=min(times), classes=[cls])
        alerts.enqueue_alerts(session, facility_id, objs)
        objs.sort(key=lambda o: (o.captured_at, o.id))
        records = [_observation_record(o) for o in objs]
        if idempotency is not None:
            session.add(db.ImportRequest(facility_id=facility_id, idempotency_scope=idempotency[0],
                                         idempotency_key=idempotency[1], payload_sha256=payload_sha256,
                                         observation_ids=[o.id for o in objs], duplicates=duplicates,
                                         created_at=created))
    log.info("facility %s: imported %d observations, skipped %d duplicates", facility_id, len(records), duplicates)
    return ImportResult(records, duplicates)


def _replay_import(session: Session, prior: db.ImportRequest, key: str, payload_sha256: str) -> ImportResult:
    """The result of the import stored under this ``Idempotency-Key`` (the same payload), else refuse."""
    if prior.payload_sha256 != payload_sha256:
        raise IdempotencyConflictError(
            f"Idempotency-Key {key!r} was used for another import (at {_iso(prior.created_at)}, "
            f"{len(prior.observation_ids)} observations stored); this body differs (a new import needs a new key)")
    ids = [int(i) for i in prior.observation_ids]
    by_id = {o.id: o for o in (session.get(db.Observation, i) for i in ids) if o is not None}
    objs = sorted(by_id.values(), key=lambda o: (o.captured_at, o.id))
    return ImportResult([_observation_record(o) for o in objs], int(prior.duplicates), replayed=True)


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
        key = (_require_aware(row.captured_at), row.source)
        earlier = seen.get(key)
        if earlier is None:
            seen[key] = (dict(row.counts), f"row {i + 1}")
            fresh.append(row)
        elif earlier[0] != row.counts:
            conflicts.append(f"row {i + 1} ({_iso(key[0])}, source {row.source!r}, counts {row.counts}) differs from "
                             f"{earlier[1]} {earlier[0]}")
    if conflicts:
        shown = "; ".join(conflicts[:MAX_REPORTED_ERRORS])
        more = len(conflicts) - MAX_REPORTED_ERRORS
        raise ConflictError(
            f"{len(conflicts)} row(s) give other counts for a time and source already stored; nothing was imported "
            "(a second reading at the same time needs another source): " + shown + (f"; and {more} more" if more > 0
                                                                                    else ""))
    return fresh, len(rows) - len(fresh)


# ----------------------------------------------------------------------------------------------- scoring/read


#: Fields of an anomaly score that are stored on its count row.
STORED_SCORE_FIELDS: tuple[str, ...] = (
    "score", "expected", "history_size", "history_max", "exceeds_history_max", "history_span_days", "reason",
    "drop_score", "model", "highest_in_days", "lowest_in_days", "expected_lo", "expected_hi",
)


def rescore(session: Session, facility_id: str, since: datetime, classes: Iterable[str],
            new: Iterable[db.ObservationCount] = ()) -> int:
    """Recompute and store the anomaly scores of every count at or after ``since`` for the given classes.

    Runs inside the caller's transaction (after a flush, so new rows are visible). The history of all classes is
    read with one query, each point is fitted once (score, drop score and band come from the same fit), and only
    the points at or after ``since`` are fitted (an upload newer than everything stored fits just itself, or takes
    the fit prepared in the background: :mod:`app.fit_cache`; the scores are the same either way). ``new``:
    count rows already in the session (the new observation's), updated without being read again. Returns rows
    updated.
    """
    classes = list(classes)
    histories = db.count_histories(session, facility_id, classes)
    known = {(row.observation_id, row.class_name): row for row in new}
    updated = 0
    kind: str | None = None
    for cls in classes:
        history = histories.get(cls)
        if not history:
            continue
        prior = None
        if sum(1 for h in history if h[1] < since) < MIN_HISTORY:  # some rescored point is a cold start
            if kind is None:
                facility = db.get_facility(session, facility_id)
                kind = facility.kind if facility is not None else ""
            prior = pooled_prior(db.pooled_count_stats(session, kind, cls, facility_id), kind)
        scores = score_series([h[1] for h in history], [h[2] for h in history], since=since, prior=prior,
                              count_sd=[h[3] for h in history], fit=fit_cache.CACHE.fitter(facility_id, cls))
        changed = {oid: s for (oid, *_), s in zip(history, scores, strict=True) if s is not None}
        rows = [known[(oid, cls)] for oid in changed if (oid, cls) in known]
        rows += db.count_rows(session, cls, [oid for oid in changed if (oid, cls) not in known])
        for row in rows:
            s = changed[row.observation_id]
            for name in STORED_SCORE_FIELDS:
                setattr(row, name, getattr(s, name))
            updated += 1
    session.flush()
    return updated


def list_observations(
    store: db.Store, facility_id: str, start: datetime | None = None, end: datetime | None = None
) -> list[ObservationRecord]:
    """A facility's time series (``start <= captured_at <= end``), oldest first, with stored scores."""
    if start is not None and end is not None and start > end:
        raise InvalidInputError("start must not be after end")
    with store.session() as session:
        _require_facility(session, facility_id)
        return [_observation_record(o) for o in db.list_observations(session, facility_id, start, end)]


def get_observation(store: db.Store, observation_id: int) -> ObservationRecord:
    """One observation with its detections; :class:`NotFoundError` if unknown."""
    with store.session() as session:
        obs = db.get_observation(session, observation_id)
        if obs is None:
            raise NotFoundError(f"observation {observation_id} not found")
        return _observation_record(obs, with_detections=True)


def detection_row(d: Detection) -> dict[str, Any]:
    """The stored columns of a detection (plain floats, corners as lists)."""
    return {"class_name": d.class_name, "confidence": float(d.confidence),
            "obb": [[float(x), float(y)] for x, y in d.obb],
            "obb_lonlat": None if d.obb_lonlat is None else [[float(x), float(y)] for x, y in d.obb_lonlat]}


def _detection(row: Any) -> Detection:
    """A stored detection row (a :class:`db.DetectionRow` or its :func:`detection_row` dict) as a Detection."""
    get = row.get if isinstance(row, dict) else lambda name: getattr(row, name)
    obb, lonlat = get("obb"), get("obb_lonlat")
    return Detection(class_name=get("class_name"), confidence=get("confidence"),
                     obb=tuple((float(p[0]), float(p[1])) for p in obb),  # type: ignore[arg-type]
                     obb_lonlat=None if lonlat is None
                     else tuple((float(p[0]), float(p[1])) for p in lonlat))  # type: ignore[arg-type]


def _observation_record(obs: db.Observation, with_detections: bool = False) -> ObservationRecord:
    by_class = {c.class_name: c for c in obs.counts}
    classes = list(CLASS_NAMES) + sorted(set(by_class) - set(CLASS_NAMES))
    counts: dict[str, int | None] = {}
    anomaly: dict[str, AnomalyScore | None] = {}
    for cls in classes:
        row = by_class.get(cls)
        counts[cls] = None if row is None else row.count
        anomaly[cls] = None if row is None else AnomalyScore(
            score=row.score, expected=row.expected, history_size=row.history_size, history_max=row.history_max,
            exceeds_history_max=bool(row.exceeds_history_max), history_span_days=row.history_span_days,
            reason=row.reason, drop_score=row.drop_score, model=row.model, count_sd=row.count_sd,
            highest_in_days=row.highest_in_days, lowest_in_days=row.lowest_in_days,
            expected_lo=row.expected_lo, expected_hi=row.expected_hi,
        )
    image = None
    model = None
    if obs.image_sha256 is not None:
        image = {"width": obs.image_width, "height": obs.image_height, "format": obs.image_format,
                 "gsd_m": obs.gsd_m, "sha256": obs.image_sha256}
        if obs.geo:
            image.update({k: obs.geo.get(k) for k in ("crs", "gsd_source", "window", "bands")})
        model = {"name": obs.model_name or "", "version": obs.model_version or ""}
    detections = None
    if with_detections:
        detections = [_detection(d) for d in obs.detections]
    return ObservationRecord(id=obs.id, facility_id=obs.facility_id, captured_at=obs.captured_at, source=obs.source,
                             counts=counts, anomaly=anomaly, image=image, model=model, detections=detections,
                             coverage=obs.coverage, exposure=obs.exposure)


def _require_aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError("captured_at must include a timezone")
    return value.astimezone(UTC)
