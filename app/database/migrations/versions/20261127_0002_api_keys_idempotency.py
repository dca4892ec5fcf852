"""API keys with roles, and idempotent uploads.

Adds ``api_keys`` and ``api_key_facilities``; ``observations.idempotency_key``/``idempotency_scope`` with the unique
indexes that make a repeated upload (same image, facility and time, or the same ``Idempotency-Key``) return the
original observation; ``jobs.idempotency_key``/``idempotency_scope``. Idempotent like the baseline. An older
database that already holds duplicate uploads keeps them (nothing stored is deleted by a migration): the index it
cannot take is skipped with a warning, and the service's lookup before detection still answers repeats.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FACILITY_ID = sa.String(64).with_variant(sa.String(64, collation="C"), "postgresql")
UNIQUE_INDEXES = {
    "uq_observations_image": ["facility_id", "captured_at", "image_sha256"],
    "uq_observations_idempotency": ["facility_id", "idempotency_scope", "idempotency_key"],
}


def _idempotency_columns() -> list[sa.Column]:
    return [
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("idempotency_scope", sa.String(32), nullable=True),
    ]


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    tables = set(inspector.get_table_names())
    if "api_keys" not in tables:
        op.create_table(
            "api_keys",
            sa.Column("id", sa.String(32), primary_key=True),
            sa.Column("key_hash", sa.String(64), nullable=False),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column("name", sa.String(200), nullable=True),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("last_used_at", sa.DateTime(), nullable=True),
            sa.Column("revoked_at", sa.DateTime(), nullable=True),
            sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
        )
    if "api_key_facilities" not in tables:
        op.create_table(
            "api_key_facilities",
            sa.Column("api_key_id", sa.String(32), sa.ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("facility_id", FACILITY_ID, sa.ForeignKey("facilities.id", ondelete="CASCADE"), primary_key=True),
        )
    for table in ("observations", "jobs"):
        present = {c["name"] for c in inspector.get_columns(table)}
        for column in _idempotency_columns():
            if column.name not in present:
                op.add_column(table, column)
    have = {i["name"] for i in inspector.get_indexes("observations")}
    for name, columns in UNIQUE_INDEXES.items():
        if name in have:
            continue
        cols = ", ".join(columns)
        duplicates = bind.execute(
            sa.text(
                f"SELECT COUNT(*) FROM (SELECT {cols} FROM observations "
                f"WHERE {' AND '.join(c + ' IS NOT NULL' for c in columns)} "
                f"GROUP BY {cols} HAVING COUNT(*) > 1) AS d"
            )
        ).scalar_one()
        if duplicates:
            logging.getLogger("alembic").warning(
                "index %s not created: %d groups of duplicate observations already stored (kept as they are)",
                name,
                duplicates,
            )
            continue
        op.create_index(name, "observations", columns, unique=True)


def downgrade() -> None:
    for name in UNIQUE_INDEXES:
        op.drop_index(name, table_name="observations")
    for table in ("jobs", "observations"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("idempotency_scope")
            batch.drop_column("idempotency_key")
    op.drop_table("api_key_facilities")
    op.drop_table("api_keys")
