"""privacy: the audit log, retention policies, and daily counts of what retention deleted

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-24 13:15:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import parley.db

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _when() -> parley.db.UTCDateTime:
    return parley.db.UTCDateTime(timezone=True)


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], name=op.f(f"fk_{table}_tenant_id_tenants"), ondelete="CASCADE"
    )


def _inbox_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["inbox_id"], ["inboxes.id"], name=op.f(f"fk_{table}_inbox_id_inboxes"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("actor_type", sa.String(length=20), nullable=False),
        sa.Column("actor_id", _ID, nullable=True),
        sa.Column("action", sa.String(length=60), nullable=False),
        sa.Column("object_type", sa.String(length=40), nullable=False),
        sa.Column("object_id", _ID, nullable=True),
        sa.Column("details", _json(), nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=True),
        sa.Column("at", _when(), nullable=False),
        _tenant_fk("audit_log"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_tenant_id_id", "audit_log", ["tenant_id", "id"])
    op.create_index("ix_audit_log_tenant_id_object", "audit_log", ["tenant_id", "object_type", "object_id"])
    op.create_table(
        "conversation_daily_stats",
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("inbox_id", _ID, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("conversations", sa.Integer(), nullable=False),
        sa.Column("messages_in", sa.Integer(), nullable=False),
        sa.Column("messages_out", sa.Integer(), nullable=False),
        _inbox_fk("conversation_daily_stats"),
        _tenant_fk("conversation_daily_stats"),
        sa.PrimaryKeyConstraint("tenant_id", "inbox_id", "day", name=op.f("pk_conversation_daily_stats")),
    )
    op.create_table(
        "retention_policies",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("inbox_id", _ID, nullable=True),
        sa.Column("resolved_after_days", sa.Integer(), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        _inbox_fk("retention_policies"),
        _tenant_fk("retention_policies"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retention_policies")),
    )
    op.create_index("ix_retention_policies_tenant_id", "retention_policies", ["tenant_id"])


def downgrade() -> None:
    op.drop_index("ix_retention_policies_tenant_id", table_name="retention_policies")
    op.drop_table("retention_policies")
    op.drop_table("conversation_daily_stats")
    op.drop_index("ix_audit_log_tenant_id_object", table_name="audit_log")
    op.drop_index("ix_audit_log_tenant_id_id", table_name="audit_log")
    op.drop_table("audit_log")
