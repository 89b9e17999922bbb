"""items in flight: a partial index for admission's count

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_items_in_flight",
        "items",
        ["customer_id"],
        postgresql_where=sa.text("admitted_at IS NOT NULL"),
        sqlite_where=sa.text("admitted_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_items_in_flight", table_name="items")
