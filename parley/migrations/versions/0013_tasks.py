"""Tasks: tasks with their context and timers, task rules, and task notifications

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-24 13:30:00

After the tickets migration: a task may be about a ticket.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import parley.db

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ACTIVE = "status IN ('open', 'in_progress')"


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _when() -> parley.db.UTCDateTime:
    return parley.db.UTCDateTime(timezone=True)


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete=ondelete
    )


def upgrade() -> None:
    op.create_table(
        "task_rules",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("trigger", sa.String(length=60), nullable=False),
        sa.Column("conditions", _json(), nullable=False),
        sa.Column("idle_days", sa.Integer(), nullable=True),
        sa.Column("template", _json(), nullable=False),
        sa.Column("assignee", _json(), nullable=False),
        sa.Column("created_by_user_id", _ID, nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        _fk("task_rules", "created_by_user_id", "users", "SET NULL"),
        _fk("task_rules", "tenant_id", "tenants", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_rules")),
    )
    with op.batch_alter_table("task_rules", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_task_rules_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "tasks",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("priority", sa.String(length=10), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("due_at", _when(), nullable=True),
        sa.Column("remind_at", _when(), nullable=True),
        sa.Column("assignee_id", _ID, nullable=True),
        sa.Column("team_id", _ID, nullable=True),
        sa.Column("created_by_user_id", _ID, nullable=True),
        sa.Column("rule_id", _ID, nullable=True),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("contact_id", _ID, nullable=True),
        sa.Column("conversation_id", _ID, nullable=True),
        sa.Column("deal_id", _ID, nullable=True),
        sa.Column("ticket_id", _ID, nullable=True),
        sa.Column("suggested_action", _json(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.Column("completed_at", _when(), nullable=True),
        sa.Column("reminded_at", _when(), nullable=True),
        sa.Column("breached_at", _when(), nullable=True),
        _fk("tasks", "assignee_id", "users", "SET NULL"),
        _fk("tasks", "contact_id", "contacts", "SET NULL"),
        _fk("tasks", "conversation_id", "conversations", "SET NULL"),
        _fk("tasks", "created_by_user_id", "users", "SET NULL"),
        _fk("tasks", "deal_id", "deals", "SET NULL"),
        _fk("tasks", "rule_id", "task_rules", "SET NULL"),
        _fk("tasks", "team_id", "teams", "SET NULL"),
        _fk("tasks", "tenant_id", "tenants", "CASCADE"),
        _fk("tasks", "ticket_id", "tickets", "SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("tenant_id", "dedupe_key", name=op.f("uq_tasks_tenant_id_dedupe_key")),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        for column in ("contact_id", "conversation_id", "deal_id", "rule_id", "ticket_id"):
            batch_op.create_index(batch_op.f(f"ix_tasks_{column}"), [column], unique=False)
        batch_op.create_index(
            "ix_tasks_tenant_id_assignee_id_status_due_at",
            ["tenant_id", "assignee_id", "status", "due_at"],
            unique=False,
        )
        reminder = f"{_ACTIVE} AND reminded_at IS NULL AND remind_at IS NOT NULL"
        batch_op.create_index(
            "ix_tasks_reminder_sweep",
            ["remind_at"],
            unique=False,
            postgresql_where=sa.text(reminder),
            sqlite_where=sa.text(reminder),
        )
        overdue = f"{_ACTIVE} AND breached_at IS NULL AND due_at IS NOT NULL"
        batch_op.create_index(
            "ix_tasks_overdue_sweep",
            ["due_at"],
            unique=False,
            postgresql_where=sa.text(overdue),
            sqlite_where=sa.text(overdue),
        )

    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("task_id", _ID, nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_notifications_task_id_tasks"), "tasks", ["task_id"], ["id"], ondelete="CASCADE"
        )


def downgrade() -> None:
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_notifications_task_id_tasks"), type_="foreignkey")
        batch_op.drop_column("task_id")
    op.drop_table("tasks")
    op.drop_table("task_rules")
