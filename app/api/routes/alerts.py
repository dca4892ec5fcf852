"""Alerts: per-facility thresholds, anomalies (one facility or all), and the webhook delivery log."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from app import alerts, service
from app.api import web
from app.api.deps import StoreDep
from app.api.routes.common import FacilityId, errors

router = APIRouter(tags=["alerts"])


class ThresholdsIn(BaseModel):
    """Alert thresholds of a facility; null switches that direction off."""

    model_config = ConfigDict(extra="forbid")

    score: float | None = Field(gt=0, le=300, description="Alert when a count's surge score reaches this.",
                                examples=[3.0])
    drop_score: float | None = Field(gt=0, le=300, description="Alert when a count's drop score reaches this.",
                                     examples=[3.0])


class ThresholdsOut(BaseModel):
    """Effective thresholds; ``configured`` false means defaults (listed, but no webhook alerts)."""

    facility_id: str
    score: float | None
    drop_score: float | None
    configured: bool


class AnomalyEventOut(BaseModel):
    """A count that crossed a threshold, with what an analyst quotes about it."""

    model_config = ConfigDict(populate_by_name=True)

    facility_id: str
    facility_name: str | None
    observation_id: int
    captured_at: str
    source: str
    class_name: str = Field(alias="class", serialization_alias="class")
    direction: Literal["surge", "drop"]
    count: int
    threshold: float
    score: float | None
    drop_score: float | None
    expected: float | None
    count_sd: float | None
    history_size: int
    history_max: int | None
    exceeds_history_max: bool
    history_span_days: float | None
    highest_in_days: float | None
    lowest_in_days: float | None
    reason: str
    model: str | None


class DeliveryOut(BaseModel):
    """One webhook delivery of an alert."""

    model_config = ConfigDict(populate_by_name=True)

    id: int
    facility_id: str
    observation_id: int
    class_name: str = Field(alias="class", serialization_alias="class")
    direction: str
    status: Literal["pending", "sent", "failed"]
    attempts: int
    next_attempt_at: str | None
    last_error: str | None
    created_at: str | None
    sent_at: str | None


_SINCE = Query(description="Only observations captured at or after this time (ISO 8601 with timezone).")


_FORMAT = Query(description="`csv`: one row per crossing (same fields as the JSON).")
_CSV_DOC = {200: {"content": {"text/csv": {}}, "description": "Crossings (JSON, or CSV with `format=csv`)."}}


def _events(rows: list[dict[str, Any]], fmt: str = "json", name: str = "anomalies") -> list[AnomalyEventOut] | Response:
    events = [AnomalyEventOut.model_validate(r) for r in rows]
    if fmt == "csv":
        dicts = [e.model_dump(by_alias=True) for e in events]
        return web.csv_response(web.ANOMALY_CSV_FIELDS, ([d[f] for f in web.ANOMALY_CSV_FIELDS] for d in dicts),
                                f"{name}.csv")
    return events


@router.get("/facilities/{facility_id}/alerts", response_model=ThresholdsOut, responses=errors(404))
def get_thresholds(facility_id: FacilityId, store: StoreDep) -> ThresholdsOut:
    """A facility's alert thresholds (defaults when none are set)."""
    service.get_facility(store, facility_id)
    with store.session() as session:
        return ThresholdsOut.model_validate(alerts.get_thresholds(session, facility_id).to_dict())


@router.put("/facilities/{facility_id}/alerts", response_model=ThresholdsOut, responses=errors(404, 422))
def put_thresholds(facility_id: FacilityId, body: ThresholdsIn, store: StoreDep) -> ThresholdsOut:
    """Set a facility's thresholds. From now on, a stored count that reaches one is queued for the webhook."""
    service.get_facility(store, facility_id)
    with store.transaction() as session:
        return ThresholdsOut.model_validate(
            alerts.set_thresholds(session, facility_id, body.score, body.drop_score).to_dict())


@router.delete("/facilities/{facility_id}/alerts", status_code=204, responses=errors(404))
def delete_thresholds(facility_id: FacilityId, store: StoreDep) -> Response:
    """Remove a facility's thresholds (back to the listing defaults; no webhook alerts)."""
    service.get_facility(store, facility_id)
    with store.transaction() as session:
        alerts.clear_thresholds(session, facility_id)
    return Response(status_code=204)


@router.get("/facilities/{facility_id}/anomalies", response_model=list[AnomalyEventOut], response_model_by_alias=True,
            responses={**_CSV_DOC, **errors(404, 422)})
def facility_anomalies(
    facility_id: FacilityId,
    store: StoreDep,
    since: Annotated[str | None, _SINCE] = None,
    min_score: Annotated[float | None, Query(gt=0, description="Override the surge threshold.")] = None,
    min_drop_score: Annotated[float | None, Query(gt=0, description="Override the drop threshold.")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    format: Annotated[Literal["json", "csv"], _FORMAT] = "json",
) -> list[AnomalyEventOut] | Response:
    """Counts of this facility that crossed its thresholds, newest first (one entry per class and direction)."""
    service.get_facility(store, facility_id)
    lo = service.parse_timestamp(since, "since") if since else None
    with store.session() as session:
        rows = alerts.list_anomalies(session, facility_id, lo, min_score, min_drop_score, limit)
    return _events(rows, format, f"{facility_id}-anomalies")


@router.get("/anomalies", response_model=list[AnomalyEventOut], response_model_by_alias=True,
            responses={**_CSV_DOC, **errors(422)})
def all_anomalies(
    store: StoreDep,
    since: Annotated[str | None, _SINCE] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    format: Annotated[Literal["json", "csv"], _FORMAT] = "json",
) -> list[AnomalyEventOut] | Response:
    """Counts of every facility that crossed that facility's thresholds, newest first."""
    lo = service.parse_timestamp(since, "since") if since else None
    with store.session() as session:
        rows = alerts.list_anomalies(session, None, lo, limit=limit)
    return _events(rows, format)


@router.get("/alerts/deliveries", response_model=list[DeliveryOut], response_model_by_alias=True)
def deliveries(
    store: StoreDep,
    status: Annotated[Literal["pending", "sent", "failed"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
) -> list[DeliveryOut]:
    """Webhook deliveries, newest first: what was sent, what is waiting for a retry, what failed for good."""
    with store.session() as session:
        return [DeliveryOut.model_validate(d) for d in alerts.list_deliveries(session, status, limit)]


@router.post("/alerts/deliveries/retry", responses=errors(422))
def retry_deliveries(store: StoreDep) -> dict[str, int]:
    """Put every failed delivery back in the queue, due now."""
    with store.transaction() as session:
        n = alerts.retry_failed(session)
    if n < 0:  # pragma: no cover - defensive
        raise HTTPException(status_code=500, detail="retry failed")
    return {"requeued": n}
