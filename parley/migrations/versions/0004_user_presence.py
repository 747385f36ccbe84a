"""users.presence: whether an agent can take conversations (voice, web chat, routing ask)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 07:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import parley.db

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("presence", sa.String(length=20), server_default="offline", nullable=False)
        )
        batch_op.add_column(
            sa.Column("presence_changed_at", parley.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("presence_changed_at")
        batch_op.drop_column("presence")
