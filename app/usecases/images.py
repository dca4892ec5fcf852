"""Images: run the detector on a decoded image and store the analysis as an observation (or find the stored one
that an upload repeats).

CPU-bound work (``detect_decoded``) runs in a worker thread, never in an event loop. Nothing here knows about HTTP.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from sqlalchemy.exc import IntegrityError, OperationalError

from app import database as db
from app.core import validation
from app.core.errors import DatabaseBusyError, IdempotencyConflictError
from app.core.validation import iso, require_aware
from app.detection.imaging import DecodedImage
from app.detection.results import DetectionResult, rethreshold
from app.scoring.anomaly import count_uncertainty
from app.usecases import alerts
from app.usecases.facilities import require_facility
from app.usecases.observations import (
    SOURCE_IMAGE,
    Idempotency,
    ObservationRecord,
    detection_row,
    observation_record,
    rescore,
    stored_detection,
)
from app.usecases.reviews import calibrated_thresholds

if TYPE_CHECKING:
    from app.core.settings import Settings

log = logging.getLogger(__name__)

#: Detector count error as a share of the true count, when the caller does not pass the configured one
#: (railcar ``count_err_over_true`` of the shipped model: 0.199 on held-out synthetic chips, 0.207 on real images).
DEFAULT_COUNT_REL_ERROR = 0.20


class DetectorProtocol(Protocol):
    """What the service needs from :class:`app.detection.detector.Detector`."""

    name: str
    version: str
    class_names: tuple[str, ...]

    def detect(self, image: np.ndarray, gsd_m: float | None = None) -> DetectionResult:
        """Detect objects in an ``H x W x 3`` RGB uint8 image."""
        ...


class ImageInfo(Protocol):
    """What an analysis keeps of its image: a :class:`DecodedImage`, or a scene's
    :class:`app.usecases.scenes.SceneInfo` (big scenes are never whole in memory)."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def format(self) -> str: ...

    @property
    def sha256(self) -> str: ...


@dataclass(frozen=True)
class Analysis:
    """Result of decoding and detecting one image (no database involved)."""

    image: ImageInfo
    result: DetectionResult
    model_name: str
    model_version: str
    class_names: tuple[str, ...]
    gsd_m: float | None
    decode_ms: float
    detect_ms: float
    geo: dict[str, Any] | None = None  # georeferencing and region read (app.usecases.scenes)
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
            "image": {
                "width": self.image.width,
                "height": self.image.height,
                "format": self.image.format,
                "gsd_m": self.gsd_m,
                "sha256": self.image.sha256,
            },
            "timing_ms": {"decode": round(self.decode_ms, 1), "detect": round(self.detect_ms, 1)},
            "coverage": self.coverage,
            "geo": self.geo,
        }


def load_configured_detector(settings: Settings) -> DetectorProtocol:
    """The one place that loads the model: weights and threads from settings."""
    path = settings.resolved_model_path
    if not path.exists():
        raise FileNotFoundError(f"model weights not found at {path} (set WAGON_MODEL_PATH)")
    from app.detection.detector import load_detector  # heavy import (torch), deferred until needed

    log.info("loading detector from %s", path)
    if settings.inference_threads:
        import cv2

        cv2.setNumThreads(settings.inference_threads)  # OpenCV's resizing too: workers x threads <= cores
    tta = {"auto": None, "on": True, "off": False}[settings.tta]
    detector: DetectorProtocol = load_detector(
        path,
        threads=settings.inference_threads,
        runtime=settings.runtime,
        openvino_precision=settings.openvino_precision,
        tta=tta,
        candidate_floor=settings.candidate_floor,
    )
    log.info("detector %s %s ready", detector.name, detector.version)
    return detector


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
    """Raise :class:`InvalidInputError` unless ``gsd_m`` is None or a finite number within
    :data:`app.core.validation.GSD_RANGE_M`."""
    validation.check_gsd(gsd_m)


def find_upload(
    store: db.Store, facility_id: str, captured_at: datetime, sha256: str, idempotency: Idempotency | None = None
) -> ObservationRecord | None:
    """The stored observation an upload repeats, or None: the one stored under the same ``Idempotency-Key``, or
    else the one of the same image bytes at the same facility and time. :class:`IdempotencyConflictError` when
    the key was used for a different image or time."""
    captured_at = require_aware(captured_at)
    with store.session() as session:
        if idempotency is not None:
            obs = db.find_idempotent_observation(session, facility_id, *idempotency)
            if obs is not None:
                if obs.image_sha256 != sha256 or obs.captured_at != captured_at:
                    raise IdempotencyConflictError(
                        f"Idempotency-Key {idempotency[1]!r} was used for observation {obs.id} (image "
                        f"{(obs.image_sha256 or '')[:12]}, captured_at {iso(obs.captured_at)}); this upload differs "
                        "(a new upload needs a new key)"
                    )
                return observation_record(obs, with_detections=True)
        obs = db.find_image_observation(session, facility_id, captured_at, sha256)
        return None if obs is None else observation_record(obs, with_detections=True)


#: Tries to store an analysed upload while the database stays locked (each try waits the busy timeout first), the
#: pause before the next try (times the try's number), and the ``Retry-After`` of the refusal after the last.
STORE_ATTEMPTS = 3
STORE_RETRY_PAUSE_S = 0.5
STORE_RETRY_AFTER_S = 10


def record_upload(
    store: db.Store,
    facility_id: str,
    captured_at: datetime,
    analysis: Analysis,
    idempotency: Idempotency | None = None,
    count_rel_error: float = DEFAULT_COUNT_REL_ERROR,
    repeat_checked: bool = False,
    scene_source: dict[str, Any] | None = None,
) -> tuple[ObservationRecord, bool]:
    """Store an analysed upload (:func:`record_analysis`) unless it repeats a stored one (:func:`find_upload`):
    ``(observation, True)`` when stored, ``(original, False)`` when repeated. The database's unique indexes decide
    between concurrent duplicates: the loser gets the winner's observation. ``repeat_checked``: the caller has
    just called :func:`find_upload` (a repeat stored since is refused by the unique indexes and found then).
    ``scene_source``: where a scene read by reference came from (stored with the observation).

    A store that finds the database locked by other writers (after the busy timeout) is tried again rather than the
    analysis thrown away, :data:`STORE_ATTEMPTS` times in all; then :class:`DatabaseBusyError` (nothing stored)."""
    found = None if repeat_checked else find_upload(store, facility_id, captured_at, analysis.image.sha256, idempotency)
    if found is not None:
        return found, False
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            return record_analysis(
                store,
                facility_id,
                captured_at,
                analysis,
                count_rel_error=count_rel_error,
                idempotency=idempotency,
                scene_source=scene_source,
            ), True
        except IntegrityError:
            found = find_upload(store, facility_id, captured_at, analysis.image.sha256, idempotency)
            if found is None:
                raise
            log.info("facility %s: concurrent duplicate upload, returning observation %d", facility_id, found.id)
            return found, False
        except OperationalError as exc:
            if not db.is_lock_error(exc):
                raise
            if attempt == STORE_ATTEMPTS:
                raise DatabaseBusyError(
                    f"the analysis is done but the database stayed locked by other writers ({STORE_ATTEMPTS} tries); "
                    "nothing was stored: send the upload again",
                    STORE_RETRY_AFTER_S,
                ) from exc
            log.warning(
                "facility %s: database locked while storing an upload (try %d); trying again", facility_id, attempt
            )
            time.sleep(STORE_RETRY_PAUSE_S * attempt)
    raise AssertionError("unreachable")


def record_analysis(
    store: db.Store,
    facility_id: str,
    captured_at: datetime,
    analysis: Analysis,
    source: str = SOURCE_IMAGE,
    count_rel_error: float = DEFAULT_COUNT_REL_ERROR,
    idempotency: Idempotency | None = None,
    scene_source: dict[str, Any] | None = None,
) -> ObservationRecord:
    """Store an analysed image as an observation with its detections, score it and rescore later ones.

    Each class count is stored with its uncertainty (:func:`app.scoring.anomaly.count_uncertainty` of the detections'
    confidences and ``count_rel_error``), which the score integrates over. Alerts crossing the facility's
    thresholds are queued for the webhook. One transaction: on any failure nothing is stored.
    """
    captured_at = require_aware(captured_at)
    with store.transaction() as session:
        require_facility(session, facility_id, lock=True)
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
            scene_source=scene_source,
        )
        thresholds, spreads = calibrated_thresholds(session, facility_id)
        result = rethreshold(analysis.result, thresholds) if thresholds else analysis.result
        counts = result.counts(analysis.class_names)
        conf: dict[str, list[float]] = {}
        for d in result.detections:
            conf.setdefault(d.class_name, []).append(float(d.confidence))
        obs.counts = [
            db.ObservationCount(
                class_name=c,
                count=int(n),
                count_sd=round(count_uncertainty(conf.get(c, []), int(n), spreads.get(c, count_rel_error)), 4),
            )
            for c, n in counts.items()
        ]
        rows = [detection_row(d) for d in [*result.detections, *result.candidates]]
        session.add(obs)
        session.flush()
        db.insert_detections(session, obs.id, rows)  # one executemany; the ORM objects would cost more than the SQL
        rescore(session, facility_id, since=captured_at, classes=counts.keys(), new=obs.counts)
        alerts.enqueue_alerts(session, facility_id, [obs])
        # the detections as stored (what reading them back would give), without reading them back
        stored = [stored_detection(r) for r in rows]
        record = replace(
            observation_record(obs),
            detections=[d for d in stored if d.counted],
            candidates=[d for d in stored if not d.counted],
        )
    log.info("facility %s: observation %d at %s counts %s", facility_id, record.id, iso(captured_at), record.counts)
    return record
