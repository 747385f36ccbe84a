"""SLAs: business-hours calendars, SLA policies, SLA clocks and escalation runs

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-24 10:45:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import parley.db

revision: str = "0011"
# Assigned "0006"; chained after "0007" (web sessions, merged since) so this branch has one head.
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_RUNNING = "stopped_at IS NULL AND paused_at IS NULL"


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _when() -> parley.db.UTCDateTime:
    return parley.db.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "business_calendars",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("hours", _json(), nullable=False),
        sa.Column("holiday_country", sa.String(length=3), nullable=True),
        sa.Column("holiday_subdivision", sa.String(length=10), nullable=True),
        sa.Column("custom_holidays", _json(), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_business_calendars_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_business_calendars")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_business_calendars_tenant_id_name")),
    )
    op.create_table(
        "sla_policies",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("inbox_id", _ID, nullable=True),
        sa.Column("team_id", _ID, nullable=True),
        sa.Column("priority", sa.String(length=10), nullable=True),
        sa.Column("first_response_minutes", sa.Integer(), nullable=True),
        sa.Column("next_response_minutes", sa.Integer(), nullable=True),
        sa.Column("resolution_minutes", sa.Integer(), nullable=True),
        sa.Column("warning_fraction", sa.Double(), nullable=False),
        sa.Column("calendar_id", _ID, nullable=True),
        sa.Column("escalations", _json(), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.ForeignKeyConstraint(
            ["calendar_id"],
            ["business_calendars.id"],
            name=op.f("fk_sla_policies_calendar_id_business_calendars"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["inbox_id"], ["inboxes.id"], name=op.f("fk_sla_policies_inbox_id_inboxes"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_sla_policies_team_id_teams"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_sla_policies_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_policies")),
    )
    with op.batch_alter_table("sla_policies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sla_policies_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "sla_clocks",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("conversation_id", _ID, nullable=False),
        sa.Column("policy_id", _ID, nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("target_minutes", sa.Integer(), nullable=False),
        sa.Column("started_at", _when(), nullable=False),
        sa.Column("paused_at", _when(), nullable=True),
        sa.Column("paused_total_seconds", sa.Double(), nullable=False),
        sa.Column("warn_at", _when(), nullable=False),
        sa.Column("due_at", _when(), nullable=False),
        sa.Column("warned_at", _when(), nullable=True),
        sa.Column("breached_at", _when(), nullable=True),
        sa.Column("stopped_at", _when(), nullable=True),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_sla_clocks_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["policy_id"],
            ["sla_policies.id"],
            name=op.f("fk_sla_clocks_policy_id_sla_policies"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_sla_clocks_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_clocks")),
    )
    with op.batch_alter_table("sla_clocks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sla_clocks_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sla_clocks_policy_id"), ["policy_id"], unique=False)
        batch_op.create_index(
            "uq_sla_clocks_running_kind",
            ["conversation_id", "kind"],
            unique=True,
            postgresql_where=sa.text("stopped_at IS NULL"),
            sqlite_where=sa.text("stopped_at IS NULL"),
        )
        batch_op.create_index(
            "ix_sla_clocks_running_due",
            ["conversation_id", "due_at"],
            unique=False,
            postgresql_where=sa.text(_RUNNING),
            sqlite_where=sa.text(_RUNNING),
        )
        batch_op.create_index(
            "ix_sla_clocks_warn_sweep",
            ["warn_at"],
            unique=False,
            postgresql_where=sa.text(f"{_RUNNING} AND warned_at IS NULL"),
            sqlite_where=sa.text(f"{_RUNNING} AND warned_at IS NULL"),
        )
        batch_op.create_index(
            "ix_sla_clocks_breach_sweep",
            ["due_at"],
            unique=False,
            postgresql_where=sa.text(f"{_RUNNING} AND breached_at IS NULL"),
            sqlite_where=sa.text(f"{_RUNNING} AND breached_at IS NULL"),
        )

    op.create_table(
        "sla_escalation_runs",
        sa.Column("clock_id", _ID, nullable=False),
        sa.Column("stage", sa.String(length=10), nullable=False),
        sa.Column("action_index", sa.Integer(), nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("action", sa.String(length=30), nullable=False),
        sa.Column("outcome", sa.String(length=10), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("performed_at", _when(), nullable=False),
        sa.ForeignKeyConstraint(
            ["clock_id"],
            ["sla_clocks.id"],
            name=op.f("fk_sla_escalation_runs_clock_id_sla_clocks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sla_escalation_runs_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("clock_id", "stage", "action_index", name=op.f("pk_sla_escalation_runs")),
    )
    with op.batch_alter_table("sla_escalation_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sla_escalation_runs_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_table("sla_escalation_runs")
    op.drop_table("sla_clocks")
    op.drop_table("sla_policies")
    op.drop_table("business_calendars")
