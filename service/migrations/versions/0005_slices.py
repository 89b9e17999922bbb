"""slices: page ranges of long documents, each admitted and leased like an item

Revision ID: 0005
Revises: 0002 (the integrator re-chains it after 0003/0004)
Create Date: 2026-12-05 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "slices",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("item_id", sa.String(40), nullable=False),
        sa.Column("batch_id", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("first_page", sa.Integer(), nullable=False),
        sa.Column("last_page", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("admitted_at", sa.DateTime(), nullable=True),
        sa.Column("lease_token", sa.String(40), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("retry_at", sa.DateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("ocr_failures", sa.Integer(), nullable=False),
        sa.Column("pages_done", sa.Integer(), nullable=False),
        sa.Column("result_key", sa.String(300), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["items.id"], name="fk_slices_item_id_items"),
        sa.PrimaryKeyConstraint("id", name="pk_slices"),
        sa.UniqueConstraint("item_id", "index", name="uq_slices_item_id"),
    )
    op.create_index(
        "ix_slices_customer_status", "slices", ["customer_id", "status", "batch_id", "item_id"]
    )
    op.create_index(
        "ix_slices_in_flight",
        "slices",
        ["customer_id"],
        postgresql_where=sa.text("admitted_at IS NOT NULL"),
        sqlite_where=sa.text("admitted_at IS NOT NULL"),
    )
    op.create_index("ix_slices_status_lease", "slices", ["status", "lease_expires_at"])


def downgrade() -> None:
    op.drop_index("ix_slices_status_lease", table_name="slices")
    op.drop_index("ix_slices_in_flight", table_name="slices")
    op.drop_index("ix_slices_customer_status", table_name="slices")
    op.drop_table("slices")
