"""Subscriptions: STAC catalogs followed, and the items each found.

Adds ``subscriptions`` (a static catalog or STAC API search polled on an interval, under a lease) and
``subscription_items`` (one row per collection and item id: the scene job it became, or the error and attempts).
Idempotent like the earlier revisions: what exists already is left as it is.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    tables = set(sa.inspect(op.get_bind()).get_table_names())
    if "subscriptions" not in tables:
        op.create_table(
            "subscriptions",
            sa.Column("id", sa.String(36), primary_key=True),
            sa.Column("name", sa.String(200), nullable=True),
            sa.Column("url", sa.String(4096), nullable=False),
            sa.Column("kind", sa.String(8), nullable=False),
            sa.Column("collections", sa.JSON(), nullable=True),
            sa.Column("facilities", sa.JSON(), nullable=True),
            sa.Column("interval_minutes", sa.Integer(), nullable=False),
            sa.Column("created_by", sa.String(32), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
            sa.Column("last_polled_at", sa.DateTime(), nullable=True),
            sa.Column("searched_until", sa.DateTime(), nullable=True),
            sa.Column("next_poll_at", sa.DateTime(), nullable=False),
            sa.Column("last_error", sa.String(2000), nullable=True),
            sa.Column("claimed_by", sa.String(64), nullable=True),
            sa.Column("lease_until", sa.DateTime(), nullable=True),
        )
        op.create_index("ix_subscriptions_next_poll_at", "subscriptions", ["next_poll_at"])
    if "subscription_items" not in tables:
        op.create_table(
            "subscription_items",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column(
                "subscription_id",
                sa.String(36),
                sa.ForeignKey("subscriptions.id", ondelete="CASCADE"),
                nullable=False,
            ),
            sa.Column("collection", sa.String(255), nullable=False),
            sa.Column("item_id", sa.String(255), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("scene_job_id", sa.String(36), nullable=True),
            sa.Column("error", sa.String(2000), nullable=True),
            sa.Column("first_seen_at", sa.DateTime(), nullable=False),
            sa.Column("updated_at", sa.DateTime(), nullable=False),
        )
        op.create_index(
            "uq_subscription_items_item",
            "subscription_items",
            ["subscription_id", "collection", "item_id"],
            unique=True,
        )


def downgrade() -> None:
    op.drop_index("uq_subscription_items_item", table_name="subscription_items")
    op.drop_table("subscription_items")
    op.drop_index("ix_subscriptions_next_poll_at", table_name="subscriptions")
    op.drop_table("subscriptions")
