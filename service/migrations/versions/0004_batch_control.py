"""batch control: retry lineage, file deletion, quotes

Revision ID: 0004
Revises: 0002 (the integrator re-chains it after the events branch's 0003)
Create Date: 2026-12-02 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("parent_batch_id", sa.String(40), nullable=True))
        batch.create_index("ix_batches_parent_batch_id", ["parent_batch_id"])
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("deleted_at", sa.DateTime(), nullable=True))
    op.create_table(
        "quotes",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("customer_id", sa.String(40), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("files_left", sa.Integer(), nullable=False),
        sa.Column("queued_items", sa.Integer(), nullable=False),
        sa.Column("queued_pages", sa.BigInteger(), nullable=False),
        sa.Column("totals", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_id"], ["customers.id"], name="fk_quotes_customer_id_customers"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_quotes"),
    )
    op.create_index("ix_quotes_expires_at", "quotes", ["expires_at"])
    op.create_index("ix_quotes_customer_created", "quotes", ["customer_id", "created_at"])
    op.create_table(
        "quote_items",
        sa.Column("quote_id", sa.String(40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.String(40), nullable=False),
        sa.Column("blob_key", sa.String(300), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256_declared", sa.String(64), nullable=True),
        sa.Column("done", sa.Boolean(), nullable=False),
        sa.Column("page_count", sa.Integer(), nullable=True),
        sa.Column("ocr_pages", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.String(40), nullable=True),
        sa.ForeignKeyConstraint(["quote_id"], ["quotes.id"], name="fk_quote_items_quote_id_quotes"),
        sa.PrimaryKeyConstraint("quote_id", "position", name="pk_quote_items"),
    )


def downgrade() -> None:
    op.drop_table("quote_items")
    op.drop_index("ix_quotes_customer_created", table_name="quotes")
    op.drop_index("ix_quotes_expires_at", table_name="quotes")
    op.drop_table("quotes")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("deleted_at")
    with op.batch_alter_table("batches") as batch:
        batch.drop_index("ix_batches_parent_batch_id")
        batch.drop_column("parent_batch_id")
