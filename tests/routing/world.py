"""Building routing scenarios in a real database: agents, inboxes, contacts, conversations."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select

from crm_core.models import ChannelIdentity, Contact
from inbox.models import Conversation, ConversationStatus, Inbox
from parley.db import Database, utcnow
from parley.models import Presence, Role, User
from parley.outbox import emit
from routing.models import AgentProfile, RoutingPolicy, Team, TeamMember

_serial = itertools.count(1)


async def add_agent(
    db: Database,
    tenant_id: int,
    *,
    presence: Presence = Presence.ONLINE,
    capacity: Mapping[str, int] | None = None,
    skills: Mapping[str, int] | None = None,
    languages: Sequence[str] = (),
    territories: Sequence[str] = (),
    teams: Sequence[int] = (),
    working_hours: Mapping[str, Any] | None = None,
    time_zone: str = "UTC",
    role: Role = Role.AGENT,
) -> int:
    async with db.transaction() as session:
        user = User(
            tenant_id=tenant_id,
            email=f"agent{next(_serial)}-{tenant_id}@example.com",
            password_hash="-",
            role=role,
            presence=presence,
        )
        session.add(user)
        await session.flush()
        session.add(
            AgentProfile(
                user_id=user.id,
                tenant_id=tenant_id,
                capacity=dict(capacity or {"chat": 2}),
                skills=dict(skills or {}),
                languages=list(languages),
                territories=list(territories),
                working_hours=dict(working_hours or {}),
                time_zone=time_zone,
            )
        )
        for team_id in teams:
            session.add(TeamMember(team_id=team_id, user_id=user.id, tenant_id=tenant_id))
        return user.id


async def add_team(db: Database, tenant_id: int, name: str) -> int:
    async with db.transaction() as session:
        team = Team(tenant_id=tenant_id, name=name)
        session.add(team)
        await session.flush()
        return team.id


async def add_inbox(db: Database, tenant_id: int, *, channel: str = "twilio_sms", **policy: Any) -> int:
    async with db.transaction() as session:
        inbox = Inbox(tenant_id=tenant_id, name="Support", channel=channel, settings={})
        session.add(inbox)
        await session.flush()
        if policy:
            session.add(RoutingPolicy(tenant_id=tenant_id, inbox_id=inbox.id, **policy))
        return inbox.id


async def add_contact(db: Database, tenant_id: int, **attributes: Any) -> int:
    async with db.transaction() as session:
        contact = Contact(tenant_id=tenant_id, name="Ada", attributes=attributes)
        session.add(contact)
        await session.flush()
        return contact.id


async def open_conversation(
    db: Database, tenant_id: int, inbox_id: int, contact_id: int | None = None
) -> int:
    """A conversation as the pipeline opens it: the row and its `conversation.opened` event."""
    if contact_id is None:
        contact_id = await add_contact(db, tenant_id)
    async with db.transaction() as session:
        identity = ChannelIdentity(
            tenant_id=tenant_id, contact_id=contact_id, kind="phone", address=f"+1555{next(_serial):07d}"
        )
        session.add(identity)
        await session.flush()
        conversation = Conversation(
            tenant_id=tenant_id, inbox_id=inbox_id, contact_id=contact_id, identity_id=identity.id
        )
        session.add(conversation)
        await session.flush()
        await emit(
            session,
            tenant_id,
            (
                "conversation.opened",
                {"conversation_id": conversation.id, "inbox_id": inbox_id, "contact_id": contact_id},
            ),
        )
        return conversation.id


async def resolve(db: Database, tenant_id: int, conversation_id: int) -> None:
    """Resolve as the conversation API does: the change and its `conversation.updated` event."""
    async with db.transaction() as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        conversation.status = ConversationStatus.RESOLVED
        conversation.resolved_at = utcnow()
        await emit(
            session,
            tenant_id,
            (
                "conversation.updated",
                {
                    "conversation_id": conversation_id,
                    "changes": {"status": {"old": "open", "new": "resolved"}},
                },
            ),
        )


async def assignees(db: Database, *conversation_ids: int) -> list[int | None]:
    async with db.sessionmaker() as session:
        found = dict(
            (
                await session.execute(
                    select(Conversation.id, Conversation.assignee_id).where(
                        Conversation.id.in_(conversation_ids)
                    )
                )
            ).all()
        )
    return [found[c] for c in conversation_ids]


async def load_of(db: Database, user_id: int) -> int:
    async with db.sessionmaker() as session:
        return int(
            (
                await session.execute(
                    select(func.count()).where(
                        Conversation.assignee_id == user_id,
                        Conversation.status != ConversationStatus.RESOLVED,
                    )
                )
            ).scalar_one()
        )
