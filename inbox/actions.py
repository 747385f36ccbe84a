"""Agents' actions on a conversation: status and snooze, priority, labels, merge, read marks.

Each action is a service function taking the session, the tenant and the acting user; it writes the
change and the `conversation.updated` event announcing it (`changes`: field -> old/new) in the
caller's transaction, so the caller only commits. The `apply_*` functions change a loaded
conversation and return the changes without announcing them, so a request changing several things
at once (the API's PATCH) sends one event. Another tenant's conversation or label is not found, as
if it did not exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from inbox.models import (
    PRIORITY_RANK,
    Conversation,
    ConversationLabel,
    ConversationPriority,
    ConversationRead,
    ConversationStatus,
    Label,
    Message,
    PrioritySource,
)
from parley.db import utcnow
from parley.outbox import emit

UPDATED_TOPIC = "conversation.updated"
# Per-agent: an agent's other screens follow; nothing else about the conversation changed.
READ_TOPIC = "conversation.read"

Changes = dict[str, dict[str, Any]]

DEFAULT_LABEL_COLOR = "#6b7280"


class ActionError(Exception):
    """The action cannot be done; `status` is the HTTP status the API answers with."""

    status = 422

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NotFoundError(ActionError):
    status = 404

    def __init__(self, what: str) -> None:
        super().__init__("not_found", f"{what} not found")


class ConflictError(ActionError):
    status = 409


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made a change: a user, or the system (a snooze ending, the customer writing)."""

    type: str
    id: int | None = None

    @classmethod
    def user(cls, user_id: int) -> Actor:
        return cls("user", user_id)

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "id": self.id}


SYSTEM = Actor("system")


async def get_conversation(
    session: AsyncSession, tenant_id: int, conversation_id: int, *, lock: bool = False
) -> Conversation:
    """The tenant's conversation (`lock`: FOR UPDATE on PostgreSQL); NotFoundError otherwise."""
    stmt = select(Conversation).where(Conversation.id == conversation_id, Conversation.tenant_id == tenant_id)
    if lock:
        stmt = stmt.with_for_update()
    conversation = (await session.execute(stmt)).scalar_one_or_none()
    if conversation is None:
        raise NotFoundError("conversation")
    return conversation


async def announce(
    session: AsyncSession,
    conversation: Conversation,
    changes: Changes,
    *,
    actor: Actor,
    reason: str | None = None,
) -> None:
    """Write the changes and their `conversation.updated` event in the session's transaction."""
    await session.flush()
    await emit(
        session, conversation.tenant_id, updated_event(conversation, changes, actor=actor, reason=reason)
    )


def updated_event(
    conversation: Conversation, changes: Changes, *, actor: Actor, reason: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The `conversation.updated` event announcing `changes` (for callers emitting many at once)."""
    payload: dict[str, Any] = {
        "conversation_id": conversation.id,
        "inbox_id": conversation.inbox_id,
        "contact_id": conversation.contact_id,
        "changes": changes,
        "changed_by": actor.as_dict(),
    }
    if reason is not None:
        payload["reason"] = reason
    return UPDATED_TOPIC, payload


# --- status, snooze, priority --------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def apply_status(
    session: AsyncSession,
    conversation: Conversation,
    status: ConversationStatus,
    *,
    snoozed_until: datetime | None = None,
    now: datetime | None = None,
) -> Changes:
    """Move the conversation to `status`, keeping `resolved_at` and the snooze in step.

    Snoozing takes an optional `snoozed_until` in the future (none: until the customer writes).
    Leaving a resolved conversation is a ConflictError if the contact has another unresolved one in
    the inbox (one is allowed; a unique partial index says so too).
    """
    now = now or utcnow()
    if status != ConversationStatus.SNOOZED and snoozed_until is not None:
        raise ActionError("invalid_snooze", "snoozed_until: only goes with status `snoozed`.")
    if status == ConversationStatus.SNOOZED and snoozed_until is not None:
        if snoozed_until.tzinfo is None:
            raise ActionError("invalid_snooze", "snoozed_until: give a time zone (e.g. `Z` for UTC).")
        snoozed_until = snoozed_until.astimezone(UTC)
        if snoozed_until <= now:
            raise ActionError(
                "invalid_snooze", f"snoozed_until: must be in the future (it is {now.isoformat()} now)."
            )
    old = ConversationStatus(conversation.status)
    changes: Changes = {}
    if old == status and (
        status != ConversationStatus.SNOOZED or conversation.snoozed_until == snoozed_until
    ):
        return changes
    if old == ConversationStatus.RESOLVED and status != old and conversation.thread_key is None:
        other = (
            await session.execute(
                select(Conversation.id).where(
                    Conversation.inbox_id == conversation.inbox_id,
                    Conversation.contact_id == conversation.contact_id,
                    Conversation.status != ConversationStatus.RESOLVED,
                    Conversation.thread_key.is_(None),
                    Conversation.id != conversation.id,
                )
            )
        ).scalar()
        if other is not None:
            raise ConflictError(
                "conflict",
                f"The contact already has conversation {other} open in this inbox; "
                "resolve it before reopening this one, or continue there.",
            )
    if old != status:
        changes["status"] = {"old": str(old), "new": str(status)}
    if old == ConversationStatus.RESOLVED and status != old:
        conversation.resolved_at = None
    if status == ConversationStatus.RESOLVED and old != status:
        conversation.resolved_at = now
    new_until = snoozed_until if status == ConversationStatus.SNOOZED else None
    if conversation.snoozed_until != new_until:
        changes["snoozed_until"] = {"old": _iso(conversation.snoozed_until), "new": _iso(new_until)}
    conversation.snoozed_until = new_until
    conversation.snoozed_at = now if status == ConversationStatus.SNOOZED else None
    conversation.status = status
    return changes


def apply_priority(conversation: Conversation, priority: str, *, set_by: int | None = None) -> Changes:
    """Set the priority (none, low, medium, high, urgent) by hand; ActionError for anything else.

    A priority set by a person stands over the computed one (`routing.prioritizer`) until the
    conversation is resolved; `set_by` is who set it.
    """
    try:
        value = ConversationPriority(priority)
    except ValueError:
        known = ", ".join(p.value for p in ConversationPriority)
        raise ActionError("invalid_priority", f"priority: {priority!r} is not one of {known}.") from None
    conversation.priority_source = PrioritySource.MANUAL
    conversation.priority_set_by_id = set_by
    if conversation.priority == value:
        return {}
    changes = {"priority": {"old": conversation.priority, "new": str(value)}}
    conversation.priority = value
    return changes


async def set_status(
    session: AsyncSession,
    tenant_id: int,
    user_id: int,
    conversation_id: int,
    status: ConversationStatus,
    *,
    snoozed_until: datetime | None = None,
) -> Conversation:
    """Change the status (snooze with an optional wake-up time) and announce it."""
    conversation = await get_conversation(session, tenant_id, conversation_id, lock=True)
    changes = await apply_status(session, conversation, status, snoozed_until=snoozed_until)
    if changes:
        await announce(session, conversation, changes, actor=Actor.user(user_id))
    return conversation


async def snooze(
    session: AsyncSession,
    tenant_id: int,
    user_id: int,
    conversation_id: int,
    *,
    until: datetime | None = None,
) -> Conversation:
    """Snooze until `until`, or (None) until the customer writes again."""
    return await set_status(
        session, tenant_id, user_id, conversation_id, ConversationStatus.SNOOZED, snoozed_until=until
    )


async def set_priority(
    session: AsyncSession, tenant_id: int, user_id: int, conversation_id: int, priority: str
) -> Conversation:
    """Set the priority and announce it."""
    conversation = await get_conversation(session, tenant_id, conversation_id, lock=True)
    changes = apply_priority(conversation, priority, set_by=user_id)
    if changes:
        await announce(session, conversation, changes, actor=Actor.user(user_id))
    return conversation


# --- labels ---------------------------------------------------------------------------------------


def label_key(name: str) -> str:
    """What makes two label names the same: case and surrounding spaces do not."""
    return name.strip().casefold()


async def list_labels(session: AsyncSession, tenant_id: int) -> list[Label]:
    """The tenant's labels by name."""
    rows = await session.execute(select(Label).where(Label.tenant_id == tenant_id).order_by(Label.name_key))
    return list(rows.scalars())


async def get_label(session: AsyncSession, tenant_id: int, label_id: int) -> Label:
    label = (
        await session.execute(select(Label).where(Label.id == label_id, Label.tenant_id == tenant_id))
    ).scalar_one_or_none()
    if label is None:
        raise NotFoundError("label")
    return label


async def _label_named(session: AsyncSession, tenant_id: int, name: str) -> Label | None:
    return (
        await session.execute(
            select(Label).where(Label.tenant_id == tenant_id, Label.name_key == label_key(name))
        )
    ).scalar_one_or_none()


def _name_taken(name: str, other: Label) -> ConflictError:
    return ConflictError("label_exists", f"name: a label {other.name!r} (id {other.id}) already exists.")


async def create_label(
    session: AsyncSession, tenant_id: int, *, name: str, color: str | None = None, description: str = ""
) -> Label:
    """A new label; ConflictError if the tenant has one of that name in any case."""
    name = name.strip()
    existing = await _label_named(session, tenant_id, name)
    if existing is not None:
        raise _name_taken(name, existing)
    label = Label(
        tenant_id=tenant_id,
        name=name,
        name_key=label_key(name),
        color=color or DEFAULT_LABEL_COLOR,
        description=description,
    )
    session.add(label)
    await session.flush()
    return label


async def update_label(
    session: AsyncSession,
    tenant_id: int,
    label_id: int,
    *,
    name: str | None = None,
    color: str | None = None,
    description: str | None = None,
) -> Label:
    """Rename or recolour a label; the conversations carrying it keep it."""
    label = await get_label(session, tenant_id, label_id)
    if name is not None and name.strip() != label.name:
        existing = await _label_named(session, tenant_id, name)
        if existing is not None and existing.id != label.id:
            raise _name_taken(name, existing)
        label.name = name.strip()
        label.name_key = label_key(name)
    if color is not None:
        label.color = color
    if description is not None:
        label.description = description
    await session.flush()
    return label


async def delete_label(session: AsyncSession, tenant_id: int, label_id: int) -> None:
    """Delete a label; it comes off every conversation (the rows cascade)."""
    label = await get_label(session, tenant_id, label_id)
    await session.execute(delete(ConversationLabel).where(ConversationLabel.label_id == label.id))
    await session.delete(label)
    await session.flush()


async def labels_of(session: AsyncSession, conversation_ids: Iterable[int]) -> dict[int, list[Label]]:
    """Each conversation's labels, by name."""
    ids = list(conversation_ids)
    found: dict[int, list[Label]] = {i: [] for i in ids}
    if not ids:
        return found
    rows = await session.execute(
        select(ConversationLabel.conversation_id, Label)
        .join(Label, Label.id == ConversationLabel.label_id)
        .where(ConversationLabel.conversation_id.in_(ids))
        .order_by(Label.name_key)
    )
    for conversation_id, label in rows:
        found[conversation_id].append(label)
    return found


async def set_labels(
    session: AsyncSession,
    tenant_id: int,
    user_id: int,
    conversation_id: int,
    names: Sequence[str],
    *,
    may_create: bool,
) -> list[Label]:
    """Make the conversation's labels exactly `names` (any case); announce the change.

    Unknown names are an ActionError (`unknown_labels`), unless `may_create` (the caller may
    manage labels): then they are created.
    """
    conversation = await get_conversation(session, tenant_id, conversation_id, lock=True)
    wanted: dict[str, str] = {}
    for name in names:
        if name.strip():
            wanted.setdefault(label_key(name), name.strip())
    known = {
        label.name_key: label
        for label in (
            await session.execute(
                select(Label).where(Label.tenant_id == tenant_id, Label.name_key.in_(list(wanted)))
            )
        ).scalars()
    }
    unknown = [name for key, name in wanted.items() if key not in known]
    if unknown and not may_create:
        raise ActionError(
            "unknown_labels",
            f"labels: no label named {', '.join(map(repr, unknown))}; an admin or supervisor creates labels "
            "(POST /labels).",
        )
    for name in unknown:
        known[label_key(name)] = await create_label(session, tenant_id, name=name)
    new = sorted((known[key] for key in wanted), key=lambda label: label.name_key)
    current = (await labels_of(session, [conversation.id]))[conversation.id]
    old_ids = {label.id for label in current}
    new_ids = {label.id for label in new}
    if old_ids == new_ids:
        return new
    if old_ids - new_ids:
        await session.execute(
            delete(ConversationLabel).where(
                ConversationLabel.conversation_id == conversation.id,
                ConversationLabel.label_id.in_(old_ids - new_ids),
            )
        )
    session.add_all(
        ConversationLabel(conversation_id=conversation.id, label_id=label.id, tenant_id=tenant_id)
        for label in new
        if label.id not in old_ids
    )
    changes = {"labels": {"old": [label.name for label in current], "new": [label.name for label in new]}}
    await announce(session, conversation, changes, actor=Actor.user(user_id))
    return new


# --- read marks -----------------------------------------------------------------------------------


def _is_customer() -> Any:
    return Message.sender_type == "contact"


async def _upsert_read(
    session: AsyncSession, tenant_id: int, user_id: int, conversation_id: int, mark: int
) -> None:
    values = {
        "user_id": user_id,
        "conversation_id": conversation_id,
        "tenant_id": tenant_id,
        "last_read_message_id": mark,
        "updated_at": utcnow(),
    }
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(ConversationRead).values(**values)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["user_id", "conversation_id"],
            set_={"last_read_message_id": mark, "updated_at": values["updated_at"]},
        )
    )


async def _emit_read(
    session: AsyncSession, conversation: Conversation, user_id: int, mark: int | None
) -> None:
    await emit(
        session,
        conversation.tenant_id,
        (READ_TOPIC, {"conversation_id": conversation.id, "user_id": user_id, "last_read_message_id": mark}),
    )


async def mark_read(session: AsyncSession, tenant_id: int, user_id: int, conversation_id: int) -> int:
    """The agent has read the conversation up to its newest message; return the read mark."""
    conversation = await get_conversation(session, tenant_id, conversation_id)
    newest = (
        await session.execute(select(func.max(Message.id)).where(Message.conversation_id == conversation.id))
    ).scalar() or 0
    await _upsert_read(session, tenant_id, user_id, conversation.id, newest)
    await _emit_read(session, conversation, user_id, newest)
    return int(newest)


async def mark_unread(
    session: AsyncSession, tenant_id: int, user_id: int, conversation_id: int
) -> int | None:
    """Make the newest customer message unread again for the agent; return the read mark (None: no mark).

    Older customer messages the agent had not read stay unread.
    """
    conversation = await get_conversation(session, tenant_id, conversation_id)
    newest_customer = (
        await session.execute(
            select(func.max(Message.id)).where(Message.conversation_id == conversation.id, _is_customer())
        )
    ).scalar()
    current = (
        await session.execute(
            select(ConversationRead.last_read_message_id).where(
                ConversationRead.user_id == user_id, ConversationRead.conversation_id == conversation.id
            )
        )
    ).scalar()
    if newest_customer is None or current is None:
        return current  # nothing to unread, or nothing read yet (everything already unread)
    mark = min(int(current), int(newest_customer) - 1)
    await _upsert_read(session, tenant_id, user_id, conversation.id, mark)
    await _emit_read(session, conversation, user_id, mark)
    return mark


# --- merge ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class MergeResult:
    source: Conversation
    target: Conversation
    messages_moved: int = 0
    labels_added: list[str] = field(default_factory=list)
    already_merged: bool = False


async def _first_unread(session: AsyncSession, conversation_id: int, mark: int) -> int | None:
    return (
        await session.execute(
            select(func.min(Message.id)).where(
                Message.conversation_id == conversation_id, _is_customer(), Message.id > mark
            )
        )
    ).scalar()


async def _merged_marks(session: AsyncSession, source: Conversation, target: Conversation) -> dict[int, int]:
    """Each agent's read mark on the merged conversation, computed before the messages move.

    A mark is one message id, so it cannot say "read these, not those" across two interleaved
    histories: the merged mark stops just before the first customer message the agent had not read
    in either conversation, so nothing unread becomes read (some read messages may show unread).
    """
    rows = (
        await session.execute(
            select(
                ConversationRead.user_id,
                ConversationRead.conversation_id,
                ConversationRead.last_read_message_id,
            ).where(ConversationRead.conversation_id.in_([source.id, target.id]))
        )
    ).all()
    marks: dict[int, dict[int, int]] = {}
    for user_id, conversation_id, mark in rows:
        marks.setdefault(user_id, {})[conversation_id] = int(mark)
    newest = (
        await session.execute(
            select(func.max(Message.id)).where(Message.conversation_id.in_([source.id, target.id]))
        )
    ).scalar() or 0
    merged: dict[int, int] = {}
    for user_id, by_conversation in marks.items():
        firsts = [
            await _first_unread(session, conversation.id, by_conversation.get(conversation.id, 0))
            for conversation in (source, target)
        ]
        unread = [first for first in firsts if first is not None]
        merged[user_id] = min(unread) - 1 if unread else int(newest)
    return merged


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return max((t for t in (a, b) if t is not None), default=None)


async def merge_conversations(
    session: AsyncSession, tenant_id: int, user_id: int, source_id: int, target_id: int
) -> MergeResult:
    """Merge conversation `source_id` into `target_id`, both the same contact's.

    The source's messages, labels and read marks move to the target; the source is resolved with
    `merged_into_id` set. The target takes the later activity times and the higher priority, and is
    reopened if it was resolved while the source was not. Merging an already merged source into the
    same target again changes nothing and answers the same (a retried request).
    """
    if source_id == target_id:
        raise ActionError("same_conversation", "into: a conversation cannot be merged into itself.")
    # Lock in id order: two merges of the same pair, either way round, cannot deadlock.
    first, second = sorted((source_id, target_id))
    locked = {
        c.id: c for c in [await get_conversation(session, tenant_id, i, lock=True) for i in (first, second)]
    }
    source, target = locked[source_id], locked[target_id]
    if source.merged_into_id == target.id:
        return MergeResult(source, target, already_merged=True)
    if source.merged_into_id is not None:
        raise ConflictError(
            "already_merged", f"Conversation {source.id} was already merged into {source.merged_into_id}."
        )
    if target.merged_into_id is not None:
        raise ActionError(
            "target_merged",
            f"into: conversation {target.id} was merged into {target.merged_into_id}; merge into that one.",
        )
    if source.contact_id != target.contact_id:
        raise ActionError(
            "different_contacts",
            f"Conversations {source.id} and {target.id} belong to different contacts "
            f"({source.contact_id} and {target.contact_id}); only one contact's conversations can be "
            "merged. If they are the same "
            "person, merge the contacts first (POST /contacts/{id}/merge).",
        )
    actor = Actor.user(user_id)
    marks = await _merged_marks(session, source, target)
    moved = (
        await session.execute(
            update(Message)
            .where(Message.conversation_id == source.id)
            .values(conversation_id=target.id)
            .execution_options(synchronize_session=False)
        )
    ).rowcount  # type: ignore[attr-defined]

    source_labels = (await labels_of(session, [source.id]))[source.id]
    target_labels = (await labels_of(session, [target.id]))[target.id]
    have = {label.id for label in target_labels}
    added = [label for label in source_labels if label.id not in have]
    await session.execute(delete(ConversationLabel).where(ConversationLabel.conversation_id == source.id))
    session.add_all(
        ConversationLabel(conversation_id=target.id, label_id=label.id, tenant_id=tenant_id)
        for label in added
    )
    await session.execute(delete(ConversationRead).where(ConversationRead.conversation_id == source.id))
    for reader, mark in marks.items():
        await _upsert_read(session, tenant_id, reader, target.id, mark)

    source_was_active = source.status != ConversationStatus.RESOLVED
    source_changes = await apply_status(session, source, ConversationStatus.RESOLVED)
    source_changes["merged_into_id"] = {"old": None, "new": target.id}
    source.merged_into_id = target.id
    await session.flush()  # the source is resolved before the target may reopen (one active per inbox)

    target_changes: Changes = {"merged_from": {"old": None, "new": source.id}}
    if added:
        target_changes["labels"] = {
            "old": [label.name for label in target_labels],
            "new": sorted([label.name for label in [*target_labels, *added]], key=label_key),
        }
    if (
        PRIORITY_RANK[ConversationPriority(source.priority)]
        > PRIORITY_RANK[ConversationPriority(target.priority)]
    ):
        target_changes |= apply_priority(target, source.priority, set_by=user_id)
        # The priority came with the source: computed there, it stays the scorer's here.
        target.priority_source = source.priority_source
        target.priority_set_by_id = source.priority_set_by_id
    if source_was_active and target.status == ConversationStatus.RESOLVED:
        target_changes |= await apply_status(session, target, ConversationStatus.OPEN)
    target.last_message_at = _later(target.last_message_at, source.last_message_at)
    target.last_inbound_at = _later(target.last_inbound_at, source.last_inbound_at)

    await announce(session, source, source_changes, actor=actor, reason="merged")
    await announce(session, target, target_changes, actor=actor, reason="merged")
    return MergeResult(source, target, int(moved or 0), [label.name for label in added])
