"""Alerts: per-facility thresholds, anomalies (one facility or all), and the webhook delivery log."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api import web
from app.api.auth import allow
from app.api.deps import StoreDep
from app.api.routes.common import DEFAULT_PAGE, MAX_PAGE, FacilityId, errors
from app.core import validation
from app.usecases import alerts, facilities
from app.usecases.keys import Access

router = APIRouter(tags=["alerts"])


class ThresholdsIn(BaseModel):
    """Alert thresholds of a facility; null or left out switches that direction off."""

    model_config = ConfigDict(extra="forbid")

    score: float | None = Field(
        default=None,
        gt=0,
        le=300,
        description="Alert when a count's surge score reaches this; null or left out: surges never alert.",
        examples=[3.0],
    )
    drop_score: float | None = Field(
        default=None,
        gt=0,
        le=300,
        description="Alert when a count's drop score reaches this; null or left out: drops never alert.",
        examples=[3.0],
    )


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


class AnomalyPageOut(BaseModel):
    """A page of crossings, newest first; `next_cursor` is null on the last page."""

    anomalies: list[AnomalyEventOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class DeliveryPageOut(BaseModel):
    """A page of webhook deliveries, newest first; `next_cursor` is null on the last page."""

    deliveries: list[DeliveryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


_CURSOR = Query(description="`next_cursor` of the previous page.")
_SINCE = Query(description="Only observations captured at or after this time (ISO 8601 with timezone).")


_FORMAT = Query(
    description="`csv`: one row per crossing (same fields as the JSON); the next page's cursor is "
    "in the `X-Next-Cursor` header."
)
_CSV_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {}}, "description": "A page of crossings (JSON, or CSV with `format=csv`)."}
}
_LIMIT = Query(ge=1, le=MAX_PAGE, description="Most crossings in the page.")


def _anomaly_page(
    store: StoreDep,
    facility_id: str | None,
    since: str | None,
    min_score: float | None,
    min_drop_score: float | None,
    cursor: str | None,
    limit: int,
    fmt: str,
    name: str,
) -> AnomalyPageOut | Response:
    lo = validation.parse_timestamp(since, "since") if since else None
    key = web.cursor_key(cursor, str, int, str, str)
    after = None
    if key is not None:
        if key[3] not in alerts.DIRECTIONS:
            raise HTTPException(status_code=422, detail="cursor is not valid for this list (pass next_cursor as it is)")
        after = (validation.parse_timestamp(key[0], "cursor"), key[1], key[2], key[3])
    with store.session() as session:
        rows = alerts.list_anomalies(session, facility_id, lo, min_score, min_drop_score, limit + 1, after=after)
    page, next_cursor = web.paginate(
        rows, limit, lambda r: [r["captured_at"], r["observation_id"], r["class"], r["direction"]]
    )
    events = [AnomalyEventOut.model_validate(r) for r in page]
    if fmt == "csv":
        dicts = [e.model_dump(by_alias=True) for e in events]
        return web.csv_response(
            web.ANOMALY_CSV_FIELDS,
            ([d[f] for f in web.ANOMALY_CSV_FIELDS] for d in dicts),
            f"{name}.csv",
            headers={"X-Next-Cursor": next_cursor} if next_cursor else None,
        )
    return AnomalyPageOut(anomalies=events, next_cursor=next_cursor)


@router.get(
    "/facilities/{facility_id}/alerts",
    response_model=ThresholdsOut,
    responses=errors(404),
    dependencies=[allow(Access.READ)],
)
def get_thresholds(facility_id: FacilityId, store: StoreDep) -> ThresholdsOut:
    """A facility's alert thresholds (defaults when none are set)."""
    facilities.get_facility(store, facility_id)
    with store.session() as session:
        return ThresholdsOut.model_validate(alerts.get_thresholds(session, facility_id).to_dict())


@router.put(
    "/facilities/{facility_id}/alerts",
    response_model=ThresholdsOut,
    responses=errors(404, 422),
    dependencies=[allow(Access.ADMIN)],
)
def put_thresholds(facility_id: FacilityId, body: ThresholdsIn, store: StoreDep) -> ThresholdsOut:
    """Set a facility's thresholds. From now on, a stored count that reaches one is queued for the webhook."""
    facilities.get_facility(store, facility_id)
    with store.transaction() as session:
        return ThresholdsOut.model_validate(
            alerts.set_thresholds(session, facility_id, body.score, body.drop_score).to_dict()
        )


@router.delete(
    "/facilities/{facility_id}/alerts", status_code=204, responses=errors(404), dependencies=[allow(Access.ADMIN)]
)
def delete_thresholds(facility_id: FacilityId, store: StoreDep) -> Response:
    """Remove a facility's thresholds (back to the listing defaults; no webhook alerts)."""
    facilities.get_facility(store, facility_id)
    with store.transaction() as session:
        alerts.clear_thresholds(session, facility_id)
    return Response(status_code=204)


@router.get(
    "/facilities/{facility_id}/anomalies",
    response_model=AnomalyPageOut,
    response_model_by_alias=True,
    responses={**_CSV_DOC, **errors(404, 422)},
    dependencies=[allow(Access.READ)],
)
def facility_anomalies(
    facility_id: FacilityId,
    store: StoreDep,
    since: Annotated[str | None, _SINCE] = None,
    min_score: Annotated[float | None, Query(gt=0, description="Override the surge threshold.")] = None,
    min_drop_score: Annotated[float | None, Query(gt=0, description="Override the drop threshold.")] = None,
    cursor: Annotated[str | None, _CURSOR] = None,
    limit: Annotated[int, _LIMIT] = DEFAULT_PAGE,
    format: Annotated[Literal["json", "csv"], _FORMAT] = "json",
) -> AnomalyPageOut | Response:
    """Counts of this facility that crossed its thresholds, newest first (one entry per class and direction), a
    page at a time: the page's `anomalies` and `next_cursor` (null on the last page; pass it as `cursor`)."""
    facilities.get_facility(store, facility_id)
    return _anomaly_page(
        store, facility_id, since, min_score, min_drop_score, cursor, limit, format, f"{facility_id}-anomalies"
    )


@router.get(
    "/anomalies",
    response_model=AnomalyPageOut,
    response_model_by_alias=True,
    responses={**_CSV_DOC, **errors(422)},
    dependencies=[allow(Access.READ)],
)
def all_anomalies(
    store: StoreDep,
    since: Annotated[str | None, _SINCE] = None,
    cursor: Annotated[str | None, _CURSOR] = None,
    limit: Annotated[int, _LIMIT] = DEFAULT_PAGE,
    format: Annotated[Literal["json", "csv"], _FORMAT] = "json",
) -> AnomalyPageOut | Response:
    """Counts of every facility that crossed that facility's thresholds, newest first, a page at a time
    (`anomalies` and `next_cursor`)."""
    return _anomaly_page(store, None, since, None, None, cursor, limit, format, "anomalies")


@router.get(
    "/alerts/deliveries",
    response_model=DeliveryPageOut,
    response_model_by_alias=True,
    responses=errors(422),
    dependencies=[allow(Access.READ)],
)
def deliveries(
    store: StoreDep,
    status: Annotated[Literal["pending", "sent", "failed"] | None, Query()] = None,
    cursor: Annotated[str | None, _CURSOR] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Most deliveries in the page.")] = 200,
) -> DeliveryPageOut:
    """Webhook deliveries, newest first (by id), a page at a time: what was sent, what is waiting for a retry,
    what failed for good; `next_cursor` is null on the last page."""
    key = web.cursor_key(cursor, int)
    with store.session() as session:
        rows = alerts.list_deliveries(session, status, limit + 1, before=key[0] if key else None)
    page, next_cursor = web.paginate(rows, limit, lambda d: [d["id"]])
    return DeliveryPageOut(deliveries=[DeliveryOut.model_validate(d) for d in page], next_cursor=next_cursor)


@router.post("/alerts/deliveries/retry", responses=errors(422), dependencies=[allow(Access.ADMIN)])
def retry_deliveries(store: StoreDep) -> dict[str, int]:
    """Put every failed delivery back in the queue, due now."""
    with store.transaction() as session:
        n = alerts.retry_failed(session)
    if n < 0:  # pragma: no cover - defensive
        raise HTTPException(status_code=500, detail="retry failed")
    return {"requeued": n}
