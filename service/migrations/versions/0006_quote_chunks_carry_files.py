"""quote chunks carry their files; quotes record when they last progressed

quote_items hold answers only: the code no longer writes blob_key, size_bytes or
sha256_declared. The columns stay (our migrations are additive: a pod of the previous release,
mid-rollout, still writes them); this only lets new rows leave size_bytes empty. A later release
can drop all three. quotes.progress_at: when a chunk was last answered, which the sweep for
stalled quotes reads (a pod of the previous release leaves it empty: the sweep then goes by
created_at).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("quote_items") as batch:
        batch.alter_column("size_bytes", existing_type=sa.BigInteger(), nullable=True)
    with op.batch_alter_table("quotes") as batch:
        batch.add_column(sa.Column("progress_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("quotes") as batch:
        batch.drop_column("progress_at")
    op.execute("UPDATE quote_items SET size_bytes = 0 WHERE size_bytes IS NULL")
    with op.batch_alter_table("quote_items") as batch:
        batch.alter_column("size_bytes", existing_type=sa.BigInteger(), nullable=False)
