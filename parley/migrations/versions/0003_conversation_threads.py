"""conversations.thread_key: one conversation per thread on threaded channels (Slack)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 05:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE_UNTHREADED = "status <> 'resolved' AND thread_key IS NULL"
_ACTIVE = "status <> 'resolved'"


def upgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("thread_key", sa.String(length=400), nullable=True))
        batch_op.drop_index(
            "uq_conversations_active_contact",
            postgresql_where=sa.text(_ACTIVE),
            sqlite_where=sa.text(_ACTIVE),
        )
        batch_op.create_index(
            "uq_conversations_active_contact",
            ["inbox_id", "contact_id"],
            unique=True,
            postgresql_where=sa.text(_ACTIVE_UNTHREADED),
            sqlite_where=sa.text(_ACTIVE_UNTHREADED),
        )
        batch_op.create_index(
            "uq_conversations_thread",
            ["inbox_id", "thread_key"],
            unique=True,
            postgresql_where=sa.text("thread_key IS NOT NULL"),
            sqlite_where=sa.text("thread_key IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("uq_conversations_thread")
        batch_op.drop_index("uq_conversations_active_contact")
        batch_op.create_index(
            "uq_conversations_active_contact",
            ["inbox_id", "contact_id"],
            unique=True,
            postgresql_where=sa.text(_ACTIVE),
            sqlite_where=sa.text(_ACTIVE),
        )
        batch_op.drop_column("thread_key")
