"""Scenes delivered by reference: where an observation's scene came from, and background scene jobs.

Adds ``observations.scene_source`` (the URL, ETag, size and STAC item of a scene read by reference) and
``scene_jobs`` (a scene analysed for every facility it covers). Idempotent like the earlier revisions: what exists
already is left as it is.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "scene_source" not in {c["name"] for c in inspector.get_columns("observations")}:
        op.add_column("observations", sa.Column("scene_source", sa.JSON(), nullable=True))
    if "scene_jobs" not in set(inspector.get_table_names()):
        op.create_table(
            "scene_jobs",
            sa.Column("id", sa.String(36), primary_key=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("progress", sa.Float(), nullable=False),
            sa.Column("request", sa.JSON(), nullable=False),
            sa.Column("submitted_by", sa.String(32), nullable=False),
            sa.Column("idempotency_key", sa.String(255), nullable=True),
            sa.Column("result", sa.JSON(), nullable=True),
            sa.Column("error", sa.String(2000), nullable=True),
            sa.Column("error_status", sa.Integer(), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("updated_at", sa.DateTime(), nullable=False),
            sa.Column("claimed_by", sa.String(64), nullable=True),
            sa.Column("lease_until", sa.DateTime(), nullable=True),
        )
        op.create_index("uq_scene_jobs_idempotency", "scene_jobs", ["submitted_by", "idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_scene_jobs_idempotency", table_name="scene_jobs")
    op.drop_table("scene_jobs")
    # a plain DROP COLUMN (SQLite 3.35+): a batch rebuild of the observations table would cascade-delete its counts
    op.execute("ALTER TABLE observations DROP COLUMN scene_source")
