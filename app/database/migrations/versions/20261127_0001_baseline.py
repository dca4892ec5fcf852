"""Baseline: the schema of the last release before Alembic (create_all plus added columns).

Idempotent so that databases made before migrations existed upgrade too: a table that is missing is created, and
a table that exists gets the nullable columns and the indexes that older releases lacked (``observations.geo``,
``coverage``, ``exposure``, ``facilities.footprint``, the anomaly v2 columns of ``observation_counts``). On a new,
empty database it simply creates everything.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Facility ids sort bytewise on PostgreSQL too (cursor paging by id gives the same order as SQLite).
FACILITY_ID = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")


# upper case: these read like the constants they stand for (a fresh ForeignKey per column)
def FACILITY_FK() -> sa.ForeignKey:
    return sa.ForeignKey("facilities.id", ondelete="CASCADE")


def OBSERVATION_FK() -> sa.ForeignKey:
    return sa.ForeignKey("observations.id", ondelete="CASCADE")


def _tables() -> list[tuple[str, list[sa.Column], list[sa.Constraint], list[tuple[str, list[str]]]]]:
    """``(table, columns, extra constraints, indexes)`` of the baseline schema, in creation order."""
    return [
        (
            "facilities",
            [
                sa.Column("id", FACILITY_ID, primary_key=True),
                sa.Column("name", sa.String(200), nullable=False),
                sa.Column("kind", sa.String(16), nullable=False),
                sa.Column("created_at", sa.DateTime(), nullable=False),
                sa.Column("footprint", sa.JSON(), nullable=True),
            ],
            [],
            [],
        ),
        (
            "observations",
            [
                sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
                sa.Column("facility_id", sa.String(64), FACILITY_FK(), nullable=False),
                sa.Column("captured_at", sa.DateTime(), nullable=False),
                sa.Column("source", sa.String(64), nullable=False),
                sa.Column("created_at", sa.DateTime(), nullable=False),
                sa.Column("image_sha256", sa.String(64), nullable=True),
                sa.Column("image_width", sa.Integer(), nullable=True),
                sa.Column("image_height", sa.Integer(), nullable=True),
                sa.Column("image_format", sa.String(8), nullable=True),
                sa.Column("gsd_m", sa.Float(), nullable=True),
                sa.Column("model_name", sa.String(100), nullable=True),
                sa.Column("model_version", sa.String(100), nullable=True),
                sa.Column("geo", sa.JSON(), nullable=True),
                sa.Column("coverage", sa.JSON(), nullable=True),
                sa.Column("exposure", sa.Float(), nullable=True),
            ],
            [],
            [("ix_observations_facility_time", ["facility_id", "captured_at"])],
        ),
        (
            "alert_thresholds",
            [
                sa.Column("facility_id", sa.String(64), FACILITY_FK(), primary_key=True),
                sa.Column("score", sa.Float(), nullable=True),
                sa.Column("drop_score", sa.Float(), nullable=True),
                sa.Column("updated_at", sa.DateTime(), nullable=False),
            ],
            [],
            [],
        ),
        (
            "jobs",
            [
                sa.Column("id", sa.String(36), primary_key=True),
                sa.Column("facility_id", sa.String(64), FACILITY_FK(), nullable=False),
                sa.Column("captured_at", sa.DateTime(), nullable=False),
                sa.Column("gsd_m", sa.Float(), nullable=True),
                sa.Column("image_sha256", sa.String(64), nullable=False),
                sa.Column("status", sa.String(16), nullable=False),
                sa.Column("progress", sa.Float(), nullable=False),
                sa.Column("error", sa.String(2000), nullable=True),
                sa.Column("error_status", sa.Integer(), nullable=True),
                sa.Column("observation_id", sa.Integer(), nullable=True),
                sa.Column("timing_ms", sa.JSON(), nullable=True),
                sa.Column("created_at", sa.DateTime(), nullable=False),
                sa.Column("updated_at", sa.DateTime(), nullable=False),
            ],
            [],
            [("ix_jobs_facility_id", ["facility_id"])],
        ),
        (
            "observation_counts",
            [
                sa.Column("observation_id", sa.Integer(), OBSERVATION_FK(), primary_key=True),
                sa.Column("class_name", sa.String(32), primary_key=True),
                sa.Column("count", sa.Integer(), nullable=False),
                sa.Column("score", sa.Float(), nullable=True),
                sa.Column("expected", sa.Float(), nullable=True),
                sa.Column("history_size", sa.Integer(), nullable=False),
                sa.Column("history_max", sa.Integer(), nullable=True),
                sa.Column("exceeds_history_max", sa.Boolean(), nullable=False),
                sa.Column("history_span_days", sa.Float(), nullable=True),
                sa.Column("reason", sa.String(200), nullable=False),
                sa.Column("drop_score", sa.Float(), nullable=True),
                sa.Column("model", sa.String(200), nullable=True),
                sa.Column("count_sd", sa.Float(), nullable=True),
                sa.Column("highest_in_days", sa.Float(), nullable=True),
                sa.Column("lowest_in_days", sa.Float(), nullable=True),
                sa.Column("expected_lo", sa.Float(), nullable=True),
                sa.Column("expected_hi", sa.Float(), nullable=True),
            ],
            [],
            [("ix_counts_class", ["class_name", "observation_id"])],
        ),
        (
            "alert_deliveries",
            [
                sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
                sa.Column("facility_id", sa.String(64), FACILITY_FK(), nullable=False),
                sa.Column("observation_id", sa.Integer(), OBSERVATION_FK(), nullable=False),
                sa.Column("class_name", sa.String(32), nullable=False),
                sa.Column("direction", sa.String(8), nullable=False),
                sa.Column("payload", sa.JSON(), nullable=False),
                sa.Column("status", sa.String(8), nullable=False),
                sa.Column("attempts", sa.Integer(), nullable=False),
                sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
                sa.Column("last_error", sa.String(500), nullable=True),
                sa.Column("created_at", sa.DateTime(), nullable=False),
                sa.Column("sent_at", sa.DateTime(), nullable=True),
            ],
            [sa.UniqueConstraint("observation_id", "class_name", "direction", name="uq_delivery_alert")],
            [
                ("ix_deliveries_due", ["status", "next_attempt_at"]),
                ("ix_alert_deliveries_facility_id", ["facility_id"]),
            ],
        ),
        (
            "detections",
            [
                sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
                sa.Column("observation_id", sa.Integer(), OBSERVATION_FK(), nullable=False),
                sa.Column("class_name", sa.String(32), nullable=False),
                sa.Column("confidence", sa.Float(), nullable=False),
                sa.Column("obb", sa.JSON(), nullable=False),
                sa.Column("obb_lonlat", sa.JSON(), nullable=True),
            ],
            [],
            [("ix_detections_observation_id", ["observation_id"])],
        ),
    ]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    existing = set(inspector.get_table_names())
    for table, columns, constraints, indexes in _tables():
        if table not in existing:
            op.create_table(table, *columns, *constraints)
        else:
            present = {c["name"] for c in inspector.get_columns(table)}
            for column in columns:
                if column.name in present:
                    continue
                if not column.nullable:
                    raise RuntimeError(f"cannot upgrade: {table}.{column.name} is missing and required")
                op.add_column(table, column)
        have = set() if table not in existing else {i["name"] for i in inspector.get_indexes(table)}
        for name, cols in indexes:
            if name not in have:
                op.create_index(name, table, cols)


def downgrade() -> None:
    for table, _columns, _constraints, _indexes in reversed(_tables()):
        op.drop_table(table)
