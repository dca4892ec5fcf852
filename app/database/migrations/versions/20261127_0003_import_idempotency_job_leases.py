"""Idempotent imports and job leases.

Adds ``import_requests`` (an import sent with an ``Idempotency-Key``: its body's SHA-256 and the observations it
stored) and ``jobs.claimed_by``/``jobs.lease_until`` (the worker running a job and until when its claim holds).
Idempotent like the earlier revisions: what exists already is left as it is.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FACILITY_ID = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "import_requests" not in set(inspector.get_table_names()):
        op.create_table(
            "import_requests",
            sa.Column("facility_id", FACILITY_ID, sa.ForeignKey("facilities.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("idempotency_scope", sa.String(32), primary_key=True),
            sa.Column("idempotency_key", sa.String(255), primary_key=True),
            sa.Column("payload_sha256", sa.String(64), nullable=False),
            sa.Column("observation_ids", sa.JSON(), nullable=False),
            sa.Column("duplicates", sa.Integer(), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
        )
    present = {c["name"] for c in inspector.get_columns("jobs")}
    for column in (
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.DateTime(), nullable=True),
    ):
        if column.name not in present:
            op.add_column("jobs", column)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("claimed_by")
    op.drop_table("import_requests")
