"""priority scoring: per-tenant scoring settings; a conversation's computed score, reasons and source

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-24 13:30:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import parley.db

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


# SQLite rebuilds `conversations` to add a foreign key, and a rebuild drops expression indexes
# (SQLAlchemy cannot reflect them): the inbox list's index is taken down and put back around it.
_LIST_NEWEST = "ix_conversations_list_newest"


def _drop_list_index_for_rebuild() -> bool:
    if op.get_bind().dialect.name != "sqlite":
        return False
    op.drop_index(_LIST_NEWEST, table_name="conversations", if_exists=True)
    return True


def _restore_list_index() -> None:
    op.create_index(
        _LIST_NEWEST,
        "conversations",
        ["tenant_id", "status", sa.text("coalesce(last_message_at, created_at) DESC"), sa.text("id DESC")],
        unique=False,
    )


def upgrade() -> None:
    rebuilt = _drop_list_index_for_rebuild()
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("priority_source", sa.String(length=12), server_default="computed", nullable=False)
        )
        batch_op.add_column(sa.Column("priority_set_by_id", _ID, nullable=True))
        batch_op.add_column(sa.Column("priority_score", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("priority_reasons", _json(), nullable=True))
        batch_op.add_column(
            sa.Column("priority_scored_at", parley.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_conversations_priority_set_by_id_users"),
            "users",
            ["priority_set_by_id"],
            ["id"],
            ondelete="SET NULL",
        )
    if rebuilt:
        _restore_list_index()
    # Priorities set before scoring existed were set by people: they stay until resolved.
    op.execute("UPDATE conversations SET priority_source = 'manual' WHERE priority <> 'none'")
    op.create_table(
        "priority_scoring_configs",
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("config", _json(), nullable=False),
        sa.Column("updated_by_id", _ID, nullable=True),
        sa.Column("updated_at", parley.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_priority_scoring_configs_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["updated_by_id"],
            ["users.id"],
            name=op.f("fk_priority_scoring_configs_updated_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_priority_scoring_configs")),
    )


def downgrade() -> None:
    op.drop_table("priority_scoring_configs")
    rebuilt = _drop_list_index_for_rebuild()
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_conversations_priority_set_by_id_users"), type_="foreignkey")
        batch_op.drop_column("priority_scored_at")
        batch_op.drop_column("priority_reasons")
        batch_op.drop_column("priority_score")
        batch_op.drop_column("priority_set_by_id")
        batch_op.drop_column("priority_source")
    if rebuilt:
        _restore_list_index()
