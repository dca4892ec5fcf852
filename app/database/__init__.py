"""The database: ORM tables (:mod:`.models`), engines (:mod:`.engine`), the :class:`Store` handle (:mod:`.store`),
queries (:mod:`.queries`) and schema migrations (:mod:`.migrate`).

Use cases import it as ``from app import database as db`` and name everything through it (``db.Facility``,
``db.get_facility``).
"""

from __future__ import annotations

from app.database.engine import (
    SQLITE_IMMEDIATE,
    make_engine,
)
from app.database.models import (
    FACILITY_ID,
    MAX_DB_INT,
    AlertDelivery,
    AlertThreshold,
    ApiKey,
    ApiKeyFacility,
    Base,
    DetectionRow,
    Facility,
    ImportRequest,
    Job,
    Observation,
    ObservationCount,
    UTCDateTime,
    utcnow,
)
from app.database.queries import (
    all_thresholds,
    anomalous_counts,
    count_histories,
    count_observations,
    count_rows,
    find_idempotent_observation,
    find_image_observation,
    get_facility,
    get_observation,
    get_thresholds,
    insert_detections,
    list_facilities,
    list_observations,
    lock_facility,
    observation_counts,
    pooled_counts,
    recent_image_gsds,
)
from app.database.store import Store

__all__ = [
    "AlertDelivery",
    "AlertThreshold",
    "ApiKey",
    "ApiKeyFacility",
    "Base",
    "DetectionRow",
    "FACILITY_ID",
    "Facility",
    "ImportRequest",
    "Job",
    "MAX_DB_INT",
    "Observation",
    "ObservationCount",
    "SQLITE_IMMEDIATE",
    "Store",
    "UTCDateTime",
    "all_thresholds",
    "anomalous_counts",
    "count_histories",
    "count_observations",
    "count_rows",
    "find_idempotent_observation",
    "find_image_observation",
    "get_facility",
    "get_observation",
    "get_thresholds",
    "insert_detections",
    "list_facilities",
    "list_observations",
    "lock_facility",
    "make_engine",
    "observation_counts",
    "pooled_counts",
    "recent_image_gsds",
    "utcnow",
]
