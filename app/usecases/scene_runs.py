"""One scene, every facility it covers: choose the facilities at submission, then read each footprint's window,
count, and store one observation per facility (as an upload to that facility would), naming those skipped and why.

Skip reasons: ``not granted`` (the key may not upload there), ``no footprint``, ``outside the scene`` (the
footprint misses the STAC item's geometry, or the image), ``all nodata`` (the footprint lies on nodata).

All-or-nothing reading: every facility's window is read and counted before anything is stored, so a scene that
fails part way (a 404, a stall, a truncated file) stores nothing. A facility already holding this scene at this
time (same identity, see :mod:`app.usecases.scene_sources`, or the same ``Idempotency-Key``) gets no second
observation: its original is reported with ``created: false``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from app import database as db
from app.core.errors import InvalidInputError, ModelUnavailableError, NotFoundError
from app.core.validation import check_gsd, iso
from app.detection.imaging import CorruptImageError, EmptyImageError
from app.usecases.images import Analysis, DetectorProtocol, find_upload, record_upload
from app.usecases.keys import Principal
from app.usecases.observations import Idempotency
from app.usecases.scene_sources import SceneSource, open_source
from app.usecases.scenes import OutsideSceneError, analyse_with_settings, facility_footprint, facility_gsd

if TYPE_CHECKING:
    from app.core.settings import Settings

log = logging.getLogger(__name__)

NOT_GRANTED, NO_FOOTPRINT, OUTSIDE, ALL_NODATA = "not granted", "no footprint", "outside the scene", "all nodata"


@dataclass(frozen=True)
class SceneRequest:
    """A scene to analyse: where it is, when it was taken, its GSD (None: from the image), the facilities to try
    and those already skipped (``[{"facility_id", "reason"}]``)."""

    source: SceneSource
    captured_at: datetime
    gsd_m: float | None
    facilities: tuple[str, ...]
    skipped: tuple[dict[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored with a scene job)."""
        return {
            "source": self.source.to_dict(),
            "captured_at": iso(self.captured_at),
            "gsd_m": self.gsd_m,
            "facilities": list(self.facilities),
            "skipped": list(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneRequest:
        """Inverse of :meth:`to_dict`."""
        return cls(
            source=SceneSource.from_dict(data["source"]),
            captured_at=datetime.fromisoformat(data["captured_at"].replace("Z", "+00:00")),
            gsd_m=data.get("gsd_m"),
            facilities=tuple(data["facilities"]),
            skipped=tuple(data.get("skipped") or ()),
        )


def choose_facilities(
    store: db.Store, principal: Principal, requested: list[str] | None
) -> tuple[tuple[str, ...], tuple[dict[str, str], ...]]:
    """The facilities a scene may reach (those ``requested``, else all) and those skipped as not granted.

    :class:`NotFoundError` for a requested facility that does not exist (told only to callers who may upload
    everywhere); :class:`PermissionError` when the caller is granted none of them."""
    with store.session() as session:
        known = [f.id for f, _ in db.list_facilities(session)]
    if requested is None:
        wanted = known
    else:
        wanted = list(dict.fromkeys(requested))
        unknown = [f for f in wanted if f not in known]
        if unknown and principal.role == "admin":
            raise NotFoundError(f"facilities not found: {', '.join(repr(f) for f in unknown)}")
    granted = [f for f in wanted if principal.role == "admin" or f in principal.facilities]
    granted = [f for f in granted if f in known]
    if requested is None and principal.role != "admin":
        skipped: list[dict[str, str]] = []  # an uploader is not told of facilities it was not granted
    else:
        skipped = [{"facility_id": f, "reason": NOT_GRANTED} for f in wanted if f not in granted]
    if not granted:
        raise PermissionError(
            "this key may upload to none of the facilities this scene was sent to"
            if requested is not None or principal.role != "admin"
            else "there is no facility to analyse the scene for"
        )
    return tuple(granted), tuple(skipped)


def make_request(
    settings: Settings,
    source: SceneSource,
    captured_at: datetime | None,
    gsd_m: float | None,
    facilities: tuple[str, ...],
    skipped: tuple[dict[str, str], ...],
) -> SceneRequest:
    """A checked :class:`SceneRequest`: the capture time (given, else the STAC item's) within the accepted window,
    and the GSD (given, else the STAC item's) in range; :class:`InvalidInputError` saying what is wrong."""
    stac = source.stac
    when = captured_at or (None if stac is None else stac.captured_at)
    if when is None:
        raise InvalidInputError("captured_at is required (the scene has no STAC item datetime to take it from)")
    when = settings.capture_window.check(when)
    gsd = gsd_m if gsd_m is not None else (None if stac is None else stac.gsd_m)
    check_gsd(gsd)
    return SceneRequest(source, when, gsd, facilities, skipped)


@dataclass
class SceneOutcome:
    """What analysing a scene did: observations per facility (``{"facility_id", "observation_id", "created"}``),
    facilities skipped (``{"facility_id", "reason"}``), and what was read."""

    observations: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    timing_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "observations": self.observations,
            "skipped": self.skipped,
            "source": self.source,
            "timing_ms": self.timing_ms,
        }


def _intersects(footprint: dict[str, Any], geometry: dict[str, Any] | None) -> bool:
    if geometry is None:
        return True
    from shapely.geometry import shape

    try:
        return bool(shape(footprint).intersects(shape(geometry)))
    except Exception:  # an item geometry shapely cannot read: decide from the pixels instead
        return True


def analyse_scene(
    store: db.Store,
    settings: Settings,
    detector: DetectorProtocol | None,
    request: SceneRequest,
    idempotency: Idempotency | None = None,
    progress: Callable[[float], None] | None = None,
) -> SceneOutcome:
    """Read, count and store the scene for each facility of the request (see the module docstring)."""
    if detector is None:
        raise ModelUnavailableError("no detector is loaded in this service (WAGON_LOAD_MODEL is false)")
    t0 = time.perf_counter()
    outcome = SceneOutcome(skipped=list(request.skipped))
    analysed: list[tuple[str, Analysis]] = []
    with open_source(settings, request.source) as opened:
        for i, facility_id in enumerate(request.facilities):
            try:
                footprint = facility_footprint(store, facility_id)
            except NotFoundError:
                outcome.skipped.append({"facility_id": facility_id, "reason": "facility deleted"})
                continue
            reason = _skip_reason(footprint, opened.geometry)
            if reason is None and footprint is not None:
                found = find_upload(store, facility_id, request.captured_at, opened.digest, idempotency)
                if found is not None:
                    outcome.observations.append(
                        {"facility_id": facility_id, "observation_id": found.id, "created": False}
                    )
                else:
                    reason = _analyse_one(store, settings, detector, request, opened, facility_id, footprint, analysed)
            if reason is not None:
                outcome.skipped.append({"facility_id": facility_id, "reason": reason})
            if progress is not None:
                progress((i + 1) / max(1, len(request.facilities)) * 0.95)
        if opened.remote is not None:
            outcome.source = {
                "bytes_read": opened.remote.bytes_read,
                "size": opened.remote.size,
                "requests": opened.remote.requests,
            }
        scene_source = opened.scene_source
    t1 = time.perf_counter()
    for facility_id, analysis in analysed:
        record, created = record_upload(
            store,
            facility_id,
            request.captured_at,
            analysis,
            idempotency,
            count_rel_error=settings.count_rel_error,
            scene_source=scene_source,
        )
        outcome.observations.append({"facility_id": facility_id, "observation_id": record.id, "created": created})
    outcome.timing_ms = {
        "read_and_detect": round((t1 - t0) * 1000.0, 1),
        "store": round((time.perf_counter() - t1) * 1000.0, 1),
    }
    order = {f: i for i, f in enumerate(request.facilities)}
    outcome.observations.sort(key=lambda o: order.get(o["facility_id"], 0))
    return outcome


def _skip_reason(footprint: dict[str, Any] | None, geometry: dict[str, Any] | None) -> str | None:
    if footprint is None:
        return NO_FOOTPRINT
    if not _intersects(footprint, geometry):
        return OUTSIDE
    return None


def _analyse_one(
    store: db.Store,
    settings: Settings,
    detector: DetectorProtocol,
    request: SceneRequest,
    opened: Any,
    facility_id: str,
    footprint: dict[str, Any],
    analysed: list[tuple[str, Analysis]],
) -> str | None:
    """Analyse one facility's window into ``analysed``; the skip reason instead when there is nothing to count."""
    try:
        analysis = analyse_with_settings(
            detector,
            opened.source,
            settings,
            gsd_m=request.gsd_m,
            footprint=footprint,
            sha256=opened.digest,
            facility_gsd_m=None if request.gsd_m is not None else facility_gsd(store, facility_id),
            hints=opened.hints,
        )
    except OutsideSceneError:
        return OUTSIDE
    except EmptyImageError:
        return ALL_NODATA
    except CorruptImageError:
        remote = opened.remote
        if remote is not None and remote.failure is not None:  # GDAL swallowed the cause: say it
            raise remote.failure from None
        raise
    analysed.append((facility_id, analysis))
    return None


__all__ = [
    "ALL_NODATA",
    "NOT_GRANTED",
    "NO_FOOTPRINT",
    "OUTSIDE",
    "SceneOutcome",
    "SceneRequest",
    "analyse_scene",
    "choose_facilities",
    "make_request",
]
