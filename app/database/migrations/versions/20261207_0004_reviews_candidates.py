"""Analyst reviews, candidate detections and per-facility calibration.

Adds ``detections.score`` (the score operating thresholds compare; NULL: the confidence) and ``detections.counted``
(existing rows were all counted), ``observation_counts.verified_count`` (the count an analyst's review gives),
``reviews`` (every review, current, replaced or withdrawn: the audit trail; at most one current per observation) and
``facility_calibrations`` (per facility and class: the threshold, count bias and spread learnt from its reviews).
Idempotent like the earlier revisions: what exists already is left as it is.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FACILITY_ID = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    tables = set(inspector.get_table_names())
    present = {c["name"] for c in inspector.get_columns("detections")}
    for column in (
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("counted", sa.Boolean(), nullable=False, server_default=sa.true()),
    ):
        if column.name not in present:
            op.add_column("detections", column)
    if "verified_count" not in {c["name"] for c in inspector.get_columns("observation_counts")}:
        op.add_column("observation_counts", sa.Column("verified_count", sa.Integer(), nullable=True))
    if "reviews" not in tables:
        op.create_table(
            "reviews",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column(
                "observation_id",
                sa.Integer(),
                sa.ForeignKey("observations.id", ondelete="CASCADE"),
                nullable=False,
                index=True,
            ),
            sa.Column("facility_id", FACILITY_ID, sa.ForeignKey("facilities.id", ondelete="CASCADE"), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("reviewer", sa.String(200), nullable=False),
            sa.Column("reviewed_at", sa.DateTime(), nullable=False),
            sa.Column("exhaustive", sa.Boolean(), nullable=False),
            sa.Column("counts", sa.JSON(), nullable=False),
            sa.Column("objects", sa.JSON(), nullable=True),
            sa.Column("ignore", sa.JSON(), nullable=True),
            sa.Column("ended_at", sa.DateTime(), nullable=True),
            sa.Column("ended_by", sa.String(200), nullable=True),
        )
        op.create_index("ix_reviews_facility_status", "reviews", ["facility_id", "status"])
        op.create_index(
            "uq_reviews_current",
            "reviews",
            ["observation_id"],
            unique=True,
            sqlite_where=sa.text("status = 'current'"),
            postgresql_where=sa.text("status = 'current'"),
        )
    if "facility_calibrations" not in tables:
        op.create_table(
            "facility_calibrations",
            sa.Column("facility_id", FACILITY_ID, sa.ForeignKey("facilities.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("class_name", sa.String(32), primary_key=True),
            sa.Column("reviews", sa.Integer(), nullable=False),
            sa.Column("threshold", sa.Float(), nullable=False),
            sa.Column("fitted_threshold", sa.Float(), nullable=True),
            sa.Column("count_bias", sa.Float(), nullable=False),
            sa.Column("count_rel_sd", sa.Float(), nullable=False),
            sa.Column("updated_at", sa.DateTime(), nullable=False),
        )


def downgrade() -> None:
    op.drop_table("facility_calibrations")
    op.drop_index("uq_reviews_current", table_name="reviews")
    op.drop_index("ix_reviews_facility_status", table_name="reviews")
    op.drop_table("reviews")
    with op.batch_alter_table("observation_counts") as batch:
        batch.drop_column("verified_count")
    with op.batch_alter_table("detections") as batch:
        batch.drop_column("counted")
        batch.drop_column("score")
