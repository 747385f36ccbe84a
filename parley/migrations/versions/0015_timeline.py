"""CRM timeline: timeline_entries (deal, ticket, campaign, consent, lifecycle, merge and conversation events)

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-24 13:30:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import parley.db

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _when() -> parley.db.UTCDateTime:
    return parley.db.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "timeline_entries",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("contact_id", _ID, nullable=True),
        sa.Column("company_id", _ID, nullable=True),
        sa.Column("occurred_at", _when(), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("data", _json(), nullable=False),
        sa.Column("conversation_id", _ID, nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("deal_id", _ID, nullable=True),
        sa.Column("ticket_id", sa.BigInteger(), nullable=True),
        sa.Column("campaign_id", sa.BigInteger(), nullable=True),
        sa.Column("source_event_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_timeline_entries_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_timeline_entries_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["company_id"],
            ["companies.id"],
            name=op.f("fk_timeline_entries_company_id_companies"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_timeline_entries_conversation_id_conversations"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["deal_id"], ["deals.id"], name=op.f("fk_timeline_entries_deal_id_deals"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_timeline_entries")),
        sa.UniqueConstraint("source_event_id", name=op.f("uq_timeline_entries_source_event_id")),
    )
    with op.batch_alter_table("timeline_entries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_timeline_entries_contact_id_occurred_at",
            ["tenant_id", "contact_id", "occurred_at", "id"],
            unique=False,
        )
        batch_op.create_index(
            "ix_timeline_entries_company_id_occurred_at",
            ["tenant_id", "company_id", "occurred_at", "id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("timeline_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_timeline_entries_company_id_occurred_at")
        batch_op.drop_index("ix_timeline_entries_contact_id_occurred_at")
    op.drop_table("timeline_entries")
