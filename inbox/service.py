"""Writing conversation changes together with the events that announce them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import case, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from channels.base import Attachment, Button, DeliveryStatus, Template
from inbox.models import STATUS_RANK, Conversation, Message, MessageStatus
from parley.db import utcnow
from parley.outbox import emit

OUTBOUND_TOPIC = "message.outbound"
# A delivery status for a message whose provider id is not stored yet: the provider called back
# before the worker that sent the message had recorded the provider's answer.
EARLY_STATUS_TOPIC = "message.status_early"

_RANK_SQL = case({str(status): rank for status, rank in STATUS_RANK.items()}, value=Message.status, else_=0)


async def queue_outbound(
    session: AsyncSession,
    conversation: Conversation,
    *,
    body: str,
    sender_type: str,
    sender_id: int | None,
    attachments: Sequence[Attachment] = (),
    buttons: Sequence[Button] = (),
    template: Template | None = None,
) -> Message:
    """Add a queued reply plus the event a dispatcher turns into a provider call."""
    extra: dict[str, Any] = {}
    if buttons:
        extra["buttons"] = [{"id": b.id, "title": b.title} for b in buttons]
    if template is not None:
        extra["template"] = {
            "name": template.name,
            "language": template.language,
            "variables": dict(template.variables),
        }
    message = Message(
        tenant_id=conversation.tenant_id,
        inbox_id=conversation.inbox_id,
        conversation_id=conversation.id,
        direction="outbound",
        sender_type=sender_type,
        sender_id=sender_id,
        body=body,
        attachments=[{"url": a.url, "content_type": a.content_type} for a in attachments],
        extra=extra,
        status=MessageStatus.QUEUED,
    )
    session.add(message)
    await session.flush()
    await emit(
        session,
        conversation.tenant_id,
        (
            OUTBOUND_TOPIC,
            {"message_id": message.id, "conversation_id": conversation.id, "inbox_id": conversation.inbox_id},
        ),
    )
    return message


def numbered_options(text: str, buttons: Sequence[Button]) -> str:
    """Buttons for a channel that has none: a numbered list the customer answers with a number."""
    options = "\n".join(f"{n}. {b.title}" for n, b in enumerate(buttons, start=1))
    return f"{text}\n\n{options}\n\nReply with a number."


async def apply_delivery_status(
    session: AsyncSession, *, tenant_id: int, inbox_id: int, status: DeliveryStatus
) -> Literal["applied", "stale", "unknown"]:
    """Move an outbound message forward to the provider's status; never backwards (late callbacks)."""
    changed = (
        await session.execute(
            update(Message)
            .where(
                Message.inbox_id == inbox_id,
                Message.provider_message_id == status.provider_message_id,
                Message.direction == "outbound",
                STATUS_RANK[MessageStatus(status.status)] > _RANK_SQL,
            )
            .values(
                status=status.status,
                error_code=status.error_code,
                error_message=status.error_message,
                updated_at=utcnow(),
            )
            .returning(Message.id, Message.conversation_id)
        )
    ).one_or_none()
    if changed is None:
        known = (
            await session.execute(
                select(Message.id).where(
                    Message.inbox_id == inbox_id, Message.provider_message_id == status.provider_message_id
                )
            )
        ).first()
        return "stale" if known is not None else "unknown"
    await emit(
        session,
        tenant_id,
        (
            "message.updated",
            {"message_id": changed.id, "conversation_id": changed.conversation_id, "status": status.status},
        ),
    )
    return "applied"
