"""Imports as background jobs.

Adds ``jobs.kind`` (``upload``: an image analysed in the background, every existing job; ``import``: a large import
of counts), ``jobs.payload_sha256`` (an import's archived body) and ``jobs.result`` (what an import stored); an
import job has no capture time or image, so ``jobs.captured_at`` and ``jobs.image_sha256`` may be NULL.
Idempotent like the earlier revisions: what exists already is left as it is.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    columns = {c["name"]: c for c in sa.inspect(op.get_bind()).get_columns("jobs")}
    with op.batch_alter_table("jobs") as batch:
        if "kind" not in columns:
            batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="upload"))
        if "payload_sha256" not in columns:
            batch.add_column(sa.Column("payload_sha256", sa.String(64), nullable=True))
        if "result" not in columns:
            batch.add_column(sa.Column("result", sa.JSON(), nullable=True))
        if not columns["captured_at"]["nullable"]:
            batch.alter_column("captured_at", existing_type=sa.DateTime(), nullable=True)
        if not columns["image_sha256"]["nullable"]:
            batch.alter_column("image_sha256", existing_type=sa.String(64), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM jobs WHERE kind <> 'upload'")  # an import job has no meaning before this revision
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("image_sha256", existing_type=sa.String(64), nullable=False)
        batch.alter_column("captured_at", existing_type=sa.DateTime(), nullable=False)
        batch.drop_column("result")
        batch.drop_column("payload_sha256")
        batch.drop_column("kind")
