"""conversations.last_inbound_at: when the customer last wrote (WhatsApp's reply window)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 05:05:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import parley.db

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_inbound_at", parley.db.UTCDateTime(timezone=True), nullable=True))
    # Existing conversations: the last inbound message is the best evidence of when the window opened.
    op.execute(
        "UPDATE conversations SET last_inbound_at = (SELECT MAX(m.created_at) FROM messages m "
        "WHERE m.conversation_id = conversations.id AND m.direction = 'inbound')"
    )


def downgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_column("last_inbound_at")
