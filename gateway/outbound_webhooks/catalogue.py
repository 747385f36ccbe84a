"""The public event types integrators subscribe to, and the JSON each one carries.

Outbox topics are Parley's internal language; this is the published one. Each public type names
the outbox topic it comes from (and, for a few, a condition on it: `conversation.resolved` is a
`conversation.updated` whose status became resolved). The `data` of a webhook is built here from
the stored row (message, conversation, contact) or from an allowlist of the event's own fields,
so internal fields (provider ids, extras, secrets, who changed what by session) never leak.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.models import Contact, ContactTag
from inbox.models import Conversation, Message
from parley.outbox import Event

DISABLED_TOPIC = "webhook.disabled"
TEST_TYPE = "webhook.test"

DataBuilder = Callable[[AsyncSession, Event], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class PublicEvent:
    type: str
    topic: str
    description: str
    when: Callable[[Mapping[str, Any]], bool] | None = None


def _status_became(status: str) -> Callable[[Mapping[str, Any]], bool]:
    def check(payload: Mapping[str, Any]) -> bool:
        change = (payload.get("changes") or {}).get("status")
        return isinstance(change, dict) and change.get("new") == status

    return check


def _ticket_became(status: str) -> Callable[[Mapping[str, Any]], bool]:
    def check(payload: Mapping[str, Any]) -> bool:
        return payload.get("to") == status

    return check


def _assignee_changed(payload: Mapping[str, Any]) -> bool:
    return "assignee_id" in (payload.get("changes") or {})


CATALOGUE: tuple[PublicEvent, ...] = (
    PublicEvent("message.received", "message.received", "A customer's message arrived."),
    PublicEvent(
        "message.outbound", "message.outbound", "An agent's, bot's or campaign's message was queued."
    ),
    PublicEvent("message.updated", "message.updated", "A message's delivery status changed."),
    PublicEvent("conversation.opened", "conversation.opened", "A conversation was opened."),
    PublicEvent("conversation.reopened", "conversation.reopened", "A resolved conversation was reopened."),
    PublicEvent("conversation.updated", "conversation.updated", "A conversation changed (`changes`)."),
    PublicEvent(
        "conversation.resolved",
        "conversation.updated",
        "A conversation was resolved.",
        _status_became("resolved"),
    ),
    PublicEvent("conversation.assigned", "conversation.assigned", "Routing assigned a conversation."),
    PublicEvent(
        "conversation.reassigned",
        "conversation.updated",
        "Someone changed a conversation's assignee.",
        _assignee_changed,
    ),
    PublicEvent("contact.created", "contact.created", "A contact was created."),
    PublicEvent("contact.updated", "contact.updated", "A contact's details changed (`changed`)."),
    PublicEvent("contact.merged", "contact.merged", "A contact was merged into another."),
    PublicEvent("deal.opened", "deal.opened", "A deal was opened."),
    PublicEvent("deal.stage_changed", "deal.stage_changed", "A deal moved to another stage."),
    # Tickets, CSAT and tasks are announced under these topics by their modules.
    PublicEvent("ticket.created", "ticket.created", "A ticket was created."),
    PublicEvent("ticket.updated", "ticket.updated", "A ticket's fields changed (`changes`)."),
    PublicEvent(
        "ticket.status_changed", "ticket.status_changed", "A ticket's status changed (`from`, `to`)."
    ),
    PublicEvent("ticket.resolved", "ticket.status_changed", "A ticket was solved.", _ticket_became("solved")),
    PublicEvent("ticket.sla_breached", "ticket.sla_breached", "A ticket passed its SLA due time."),
    PublicEvent("csat.rated", "csat.rated", "A customer answered a satisfaction survey."),
    PublicEvent("task.created", "task.created", "A task was created."),
    PublicEvent("task.assigned", "task.assigned", "A task was given to someone."),
    PublicEvent("task.updated", "task.updated", "A task changed."),
    PublicEvent("task.completed", "task.completed", "A task was completed."),
    PublicEvent("task.overdue", "task.overdue", "A task passed its due time unfinished."),
    PublicEvent("sla.warning", "sla.warning", "An SLA clock is close to its target."),
    PublicEvent("sla.breached", "sla.breached", "An SLA clock passed its target."),
    PublicEvent("webhook.disabled", DISABLED_TOPIC, "A webhook subscription was disabled after failures."),
)

EVENT_TYPES: frozenset[str] = frozenset(e.type for e in CATALOGUE)
BY_TOPIC: dict[str, list[PublicEvent]] = {}
for _event in CATALOGUE:
    BY_TOPIC.setdefault(_event.topic, []).append(_event)


def public_types(event: Event) -> list[str]:
    """The public types an outbox event is published as (none for internal topics)."""
    return [e.type for e in BY_TOPIC.get(event.topic, ()) if e.when is None or e.when(event.payload)]


# Fields of an event's own payload that may be published: ids, states and what changed.
_PUBLIC_FIELDS = frozenset(
    {
        "status",
        "changes",
        "changed",
        "reason",
        "kind",
        "source",
        "outcome",
        "strategy",
        "waited_seconds",
        "rating",
        "score",
        "comment",
        "title",
        "priority",
        "due_at",
        "clock",
        "target",
        "disabled_reason",
        "from",
        "to",
        "reopen_count",
    }
)


def _public_fields(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in payload.items()
        if (k.endswith("_id") or k.endswith("_at") or k in _PUBLIC_FIELDS) and k != "changed_by"
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


async def _message(session: AsyncSession, tenant_id: int, message_id: Any) -> dict[str, Any] | None:
    if not isinstance(message_id, int):
        return None
    m = (
        await session.execute(select(Message).where(Message.id == message_id, Message.tenant_id == tenant_id))
    ).scalar_one_or_none()
    if m is None or m.private:  # notes are for agents only
        return None
    return {
        "id": m.id,
        "conversation_id": m.conversation_id,
        "inbox_id": m.inbox_id,
        "direction": m.direction,
        "sender_type": m.sender_type,
        "body": m.body,
        "attachments": [
            {k: a.get(k) for k in ("url", "content_type", "filename", "size") if k in a}
            for a in m.attachments
            if isinstance(a, dict)
        ],
        "status": m.status,
        "error_code": m.error_code,
        "created_at": _iso(m.created_at),
    }


async def _conversation(session: AsyncSession, tenant_id: int, conversation_id: Any) -> dict[str, Any] | None:
    if not isinstance(conversation_id, int):
        return None
    c = (
        await session.execute(
            select(Conversation).where(
                Conversation.id == conversation_id, Conversation.tenant_id == tenant_id
            )
        )
    ).scalar_one_or_none()
    if c is None:
        return None
    return {
        "id": c.id,
        "inbox_id": c.inbox_id,
        "contact_id": c.contact_id,
        "status": c.status,
        "priority": c.priority,
        "assignee_id": c.assignee_id,
        "created_at": _iso(c.created_at),
        "resolved_at": _iso(c.resolved_at),
    }


async def _contact(session: AsyncSession, tenant_id: int, contact_id: Any) -> dict[str, Any] | None:
    if not isinstance(contact_id, int):
        return None
    c = (
        await session.execute(select(Contact).where(Contact.id == contact_id, Contact.tenant_id == tenant_id))
    ).scalar_one_or_none()
    if c is None:
        return None
    tags = (
        await session.execute(
            select(ContactTag.tag).where(ContactTag.contact_id == c.id).order_by(ContactTag.tag)
        )
    ).scalars()
    return {
        "id": c.id,
        "name": c.name,
        "email": c.email,
        "phone": c.phone,
        "company_id": c.company_id,
        "lifecycle_stage": c.lifecycle_stage,
        "attributes": c.attributes,
        "tags": list(tags),
        "created_at": _iso(c.created_at),
        "updated_at": _iso(c.updated_at),
    }


async def event_data(session: AsyncSession, event: Event, public_type: str) -> dict[str, Any] | None:
    """The `data` of a webhook for this event; None if what it is about is gone (or private)."""
    assert event.tenant_id is not None
    data = _public_fields(event.payload)
    kind = public_type.partition(".")[0]
    if kind == "message":
        message = await _message(session, event.tenant_id, event.payload.get("message_id"))
        if message is None:
            return None
        data["message"] = message
    elif kind == "conversation":
        conversation = await _conversation(session, event.tenant_id, event.payload.get("conversation_id"))
        if conversation is None:
            return None
        data["conversation"] = conversation
    elif kind == "contact" and public_type != "contact.merged":
        contact = await _contact(session, event.tenant_id, event.payload.get("contact_id"))
        if contact is None:
            return None
        data["contact"] = contact
    return data


def envelope(
    *, public_id: str, type: str, created_at: datetime, tenant_id: int, data: Mapping[str, Any]
) -> dict[str, Any]:
    """The body of every webhook: `{id, type, created_at, tenant, data}`."""
    return {
        "id": public_id,
        "type": type,
        "created_at": created_at.isoformat(),
        "tenant": {"id": tenant_id},
        "data": dict(data),
    }
