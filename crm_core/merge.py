"""Merging two contacts into one: everything the merged contact had moves to the survivor.

One transaction. A preview runs the very same merge inside a savepoint and rolls it back, so what
it reports is exactly what merging would do. Decisions:

- Identities, conversations (and their messages' sender), deals, score events, lifecycle history,
  tags and earlier merge audits move to the survivor.
- Both contacts with an unresolved conversation in the same inbox (only one is allowed): the
  merged contact's is resolved, and stays readable in the survivor's history; the survivor's keeps
  its assignee and thread. (Moving messages between conversations would rewrite what agents saw.)
- Consent per channel and purpose: a withdrawal on either contact wins (messaging someone who said
  STOP is the mistake that cannot be undone); between equal decisions, the most recent is kept.
- Name, email and phone: the survivor's, or the merged contact's where the survivor has none;
  attributes: the merged contact's under the survivor's; company likewise; lifecycle stage: the
  further along of the two (a history row says so).
- Any other table referring to contacts (tickets, tasks, timeline… added later) is re-pointed by
  reading the foreign keys from the models' metadata, so a new table cannot silently lose rows to
  the cascade when the merged contact is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.lifecycle import set_stage
from crm_core.lifecycle_stages import STAGE_RANK, LifecycleStage
from crm_core.models import (
    ChannelIdentity,
    Consent,
    Contact,
    ContactMerge,
    ContactTag,
    Deal,
    LifecycleChange,
    ScoreEvent,
)
from crm_core.scoring import refresh_score
from inbox.models import Conversation, ConversationStatus, Message
from parley.db import Base, utcnow
from parley.outbox import emit

MERGED_TOPIC = "contact.merged"


class MergeError(Exception):
    """The merge cannot be done (same contact twice)."""


@dataclass(slots=True)
class MergeReport:
    survivor_id: int
    merged_id: int
    identities: list[dict[str, Any]] = field(default_factory=list)
    conversations_moved: list[int] = field(default_factory=list)
    conversations_resolved: list[int] = field(default_factory=list)
    messages_relinked: int = 0
    deals_moved: list[int] = field(default_factory=list)
    consents_moved: list[dict[str, Any]] = field(default_factory=list)
    consents_dropped: list[dict[str, Any]] = field(default_factory=list)
    score_events_moved: int = 0
    lifecycle_changes_moved: int = 0
    lifecycle_stage: str = ""
    tags_added: list[str] = field(default_factory=list)
    fields_filled: list[str] = field(default_factory=list)
    attributes_added: list[str] = field(default_factory=list)
    company_id: int | None = None
    other_references: dict[str, int] = field(default_factory=dict)
    merge_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def _consent_dict(c: Consent) -> dict[str, Any]:
    return {
        "channel": c.channel,
        "purpose": c.purpose,
        "granted": c.granted,
        "source": c.source,
        "changed_at": c.changed_at.isoformat(),
    }


def _snapshot(contact: Contact) -> dict[str, Any]:
    return {
        "name": contact.name,
        "email": contact.email,
        "phone": contact.phone,
        "attributes": contact.attributes,
        "company_id": contact.company_id,
        "lifecycle_stage": contact.lifecycle_stage,
        "score": contact.score,
        "created_at": contact.created_at.isoformat(),
    }


_HANDLED = {
    "channel_identities",
    "conversations",
    "consents",
    "deals",
    "score_events",
    "lifecycle_changes",
    "contact_tags",
    "contact_merges",
}


async def _move_consents(
    session: AsyncSession, report: MergeReport, survivor: Contact, merged: Contact
) -> None:
    kept = {
        (c.channel, c.purpose): c
        for c in (await session.execute(select(Consent).where(Consent.contact_id == survivor.id))).scalars()
    }
    theirs = (await session.execute(select(Consent).where(Consent.contact_id == merged.id))).scalars().all()
    for consent in theirs:
        mine = kept.get((consent.channel, consent.purpose))
        if mine is None:
            consent.contact_id = survivor.id
            report.consents_moved.append(_consent_dict(consent))
            continue
        if mine.granted != consent.granted:
            theirs_wins = not consent.granted
        else:
            theirs_wins = consent.changed_at > mine.changed_at
        if theirs_wins:
            report.consents_dropped.append(_consent_dict(mine))
            mine.granted, mine.source, mine.changed_at = consent.granted, consent.source, consent.changed_at
            report.consents_moved.append(_consent_dict(consent))
        else:
            report.consents_dropped.append(_consent_dict(consent))
        await session.delete(consent)
    await session.flush()


async def _move_conversations(
    session: AsyncSession, report: MergeReport, survivor: Contact, merged: Contact, user_id: int | None
) -> None:
    active = (Conversation.status != ConversationStatus.RESOLVED) & Conversation.thread_key.is_(None)
    survivor_inboxes = set(
        (
            await session.execute(
                select(Conversation.inbox_id).where(Conversation.contact_id == survivor.id, active)
            )
        )
        .scalars()
        .all()
    )
    rows = (
        (await session.execute(select(Conversation).where(Conversation.contact_id == merged.id)))
        .scalars()
        .all()
    )
    now = utcnow()
    events: list[tuple[str, dict[str, Any]]] = []
    for conversation in rows:
        changes: dict[str, dict[str, Any]] = {"contact_id": {"old": merged.id, "new": survivor.id}}
        unresolved = conversation.status != ConversationStatus.RESOLVED and conversation.thread_key is None
        if unresolved and conversation.inbox_id in survivor_inboxes:
            changes["status"] = {"old": conversation.status, "new": str(ConversationStatus.RESOLVED)}
            conversation.status, conversation.resolved_at = ConversationStatus.RESOLVED, now
            report.conversations_resolved.append(conversation.id)
        conversation.contact_id = survivor.id
        report.conversations_moved.append(conversation.id)
        events.append(
            (
                "conversation.updated",
                {
                    "conversation_id": conversation.id,
                    "inbox_id": conversation.inbox_id,
                    "contact_id": survivor.id,
                    "changes": changes,
                    "changed_by": {"type": "user", "id": user_id, "via": "contact_merge"},
                },
            )
        )
    # Resolve before moving: the survivor may hold only one unresolved conversation per inbox.
    await session.flush()
    if rows:
        result = await session.execute(
            update(Message)
            .where(
                Message.conversation_id.in_([c.id for c in rows]),
                Message.sender_type == "contact",
                Message.sender_id == merged.id,
            )
            .values(sender_id=survivor.id)
            .execution_options(synchronize_session=False)
        )
        report.messages_relinked = int(getattr(result, "rowcount", 0) or 0)
    await emit(session, survivor.tenant_id, *events)


async def _repoint(session: AsyncSession, table: Table, column: str, survivor_id: int, merged_id: int) -> int:
    result = await session.execute(
        update(table).where(table.c[column] == merged_id).values({column: survivor_id})
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def _merge_into(
    session: AsyncSession,
    survivor: Contact,
    merged: Contact,
    *,
    user_id: int | None,
    reason: str,
) -> MergeReport:
    report = MergeReport(survivor_id=survivor.id, merged_id=merged.id)
    snapshot = _snapshot(merged)

    identities = (
        await session.execute(select(ChannelIdentity).where(ChannelIdentity.contact_id == merged.id))
    ).scalars()
    for identity in identities:
        identity.contact_id = survivor.id
        report.identities.append({"id": identity.id, "kind": identity.kind, "address": identity.address})
    await session.flush()

    await _move_conversations(session, report, survivor, merged, user_id)
    await _move_consents(session, report, survivor, merged)

    deals = (await session.execute(select(Deal).where(Deal.contact_id == merged.id))).scalars()
    for deal in deals:
        deal.contact_id = survivor.id
        report.deals_moved.append(deal.id)

    # A rule that scored the same source for both contacts counts once.
    taken = select(ScoreEvent.rule_id, ScoreEvent.source).where(ScoreEvent.contact_id == survivor.id)
    for rule_id, source in (await session.execute(taken)).all():
        await session.execute(
            delete(ScoreEvent).where(
                ScoreEvent.contact_id == merged.id, ScoreEvent.rule_id == rule_id, ScoreEvent.source == source
            )
        )
    report.score_events_moved = await _repoint(
        session, cast(Table, ScoreEvent.__table__), "contact_id", survivor.id, merged.id
    )
    report.lifecycle_changes_moved = await _repoint(
        session, cast(Table, LifecycleChange.__table__), "contact_id", survivor.id, merged.id
    )
    await _repoint(session, cast(Table, ContactMerge.__table__), "survivor_id", survivor.id, merged.id)

    mine = set(
        (await session.execute(select(ContactTag.tag).where(ContactTag.contact_id == survivor.id))).scalars()
    )
    for tag in (
        (await session.execute(select(ContactTag).where(ContactTag.contact_id == merged.id))).scalars().all()
    ):
        if tag.tag not in mine:
            session.add(ContactTag(tenant_id=survivor.tenant_id, contact_id=survivor.id, tag=tag.tag))
            report.tags_added.append(tag.tag)
        await session.delete(tag)

    for name in ("name", "email", "phone"):
        if getattr(survivor, name) is None and getattr(merged, name) is not None:
            setattr(survivor, name, getattr(merged, name))
            report.fields_filled.append(name)
    added = sorted(set(merged.attributes or {}) - set(survivor.attributes or {}))
    if added:
        survivor.attributes = {**(merged.attributes or {}), **(survivor.attributes or {})}
        report.attributes_added = added
    if survivor.company_id is None and merged.company_id is not None:
        survivor.company_id = merged.company_id
        report.fields_filled.append("company_id")
    report.company_id = survivor.company_id

    # Tables added later (tickets, tasks, timeline, other packages') that point at contacts.
    for table in Base.metadata.sorted_tables:
        if table.name in _HANDLED or table.name == "contacts":
            continue
        for fk in table.foreign_keys:
            if fk.column.table.name == "contacts" and fk.column.name == "id":
                moved = await _repoint(session, table, fk.parent.name, survivor.id, merged.id)
                if moved:
                    report.other_references[f"{table.name}.{fk.parent.name}"] = moved
    await session.flush()

    theirs, ours = LifecycleStage(merged.lifecycle_stage), LifecycleStage(survivor.lifecycle_stage)
    if STAGE_RANK[theirs] > STAGE_RANK[ours]:
        await set_stage(session, survivor, theirs, reason=f"merged with contact {merged.id}", user_id=user_id)
    report.lifecycle_stage = survivor.lifecycle_stage

    await session.delete(merged)
    await session.flush()
    await refresh_score(session, survivor)

    audit = ContactMerge(
        tenant_id=survivor.tenant_id,
        survivor_id=survivor.id,
        merged_id=merged.id,
        merged_snapshot=snapshot,
        report={},
        user_id=user_id,
        reason=reason,
    )
    session.add(audit)
    await session.flush()
    report.merge_id = audit.id
    audit.report = report.as_dict()
    await emit(
        session,
        survivor.tenant_id,
        (MERGED_TOPIC, {"survivor_id": survivor.id, "merged_id": merged.id, "merge_id": audit.id}),
    )
    await session.flush()
    return report


async def merge_contacts(
    session: AsyncSession,
    survivor: Contact,
    merged: Contact,
    *,
    user_id: int | None = None,
    reason: str = "",
    preview: bool = False,
) -> MergeReport:
    """Merge `merged` into `survivor` (same tenant); with `preview`, report it and change nothing."""
    if survivor.id == merged.id or survivor.tenant_id != merged.tenant_id:
        raise MergeError("a contact can only be merged with another contact of the same tenant")
    savepoint = await session.begin_nested()
    try:
        report = await _merge_into(session, survivor, merged, user_id=user_id, reason=reason)
    except BaseException:
        await savepoint.rollback()
        raise
    if preview:
        await savepoint.rollback()
        report.merge_id = None
    else:
        await savepoint.commit()
    return report
