"""conversation actions: priority, snooze, merge, labels, per-agent read marks, the list's indexes

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import parley.db

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_SNOOZED_WITH_TIME = "status = 'snoozed' AND snoozed_until IS NOT NULL"


def upgrade() -> None:
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("priority", sa.String(length=10), server_default="none", nullable=False)
        )
        batch_op.add_column(sa.Column("snoozed_until", parley.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("snoozed_at", parley.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("merged_into_id", _ID, nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_conversations_merged_into_id_conversations"),
            "conversations",
            ["merged_into_id"],
            ["id"],
            ondelete="SET NULL",
        )
        batch_op.create_index(
            "ix_conversations_snoozed_until",
            ["snoozed_until"],
            unique=False,
            postgresql_where=sa.text(_SNOOZED_WITH_TIME),
            sqlite_where=sa.text(_SNOOZED_WITH_TIME),
        )
    # An index on expressions: created outside the batch, which would look them up as columns.
    op.create_index(
        "ix_conversations_list_newest",
        "conversations",
        ["tenant_id", "status", sa.text("coalesce(last_message_at, created_at) DESC"), sa.text("id DESC")],
        unique=False,
    )

    op.create_table(
        "labels",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("name_key", sa.String(length=64), nullable=False),
        sa.Column("color", sa.String(length=7), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", parley.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", parley.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_labels_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labels")),
        sa.UniqueConstraint("tenant_id", "name_key", name=op.f("uq_labels_tenant_id_name_key")),
    )
    op.create_table(
        "conversation_labels",
        sa.Column("conversation_id", _ID, nullable=False),
        sa.Column("label_id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversation_labels_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["label_id"],
            ["labels.id"],
            name=op.f("fk_conversation_labels_label_id_labels"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_conversation_labels_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("conversation_id", "label_id", name=op.f("pk_conversation_labels")),
    )
    with op.batch_alter_table("conversation_labels", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_conversation_labels_label_id"), ["label_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_conversation_labels_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "conversation_reads",
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("conversation_id", _ID, nullable=False),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("last_read_message_id", _ID, nullable=False),
        sa.Column("updated_at", parley.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name=op.f("fk_conversation_reads_conversation_id_conversations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_conversation_reads_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_conversation_reads_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "conversation_id", name=op.f("pk_conversation_reads")),
    )
    with op.batch_alter_table("conversation_reads", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_conversation_reads_conversation_id"), ["conversation_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_conversation_reads_tenant_id"), ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_table("conversation_reads")
    op.drop_table("conversation_labels")
    op.drop_table("labels")
    op.drop_index("ix_conversations_list_newest", table_name="conversations")
    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_index("ix_conversations_snoozed_until")
        batch_op.drop_constraint(
            batch_op.f("fk_conversations_merged_into_id_conversations"), type_="foreignkey"
        )
        batch_op.drop_column("merged_into_id")
        batch_op.drop_column("snoozed_at")
        batch_op.drop_column("snoozed_until")
        batch_op.drop_column("priority")
