"""Writing conversation changes together with the events that announce them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from channels.base import Attachment
from inbox.models import Conversation, Message, MessageStatus
from parley.outbox import emit

OUTBOUND_TOPIC = "message.outbound"


async def queue_outbound(
    session: AsyncSession,
    conversation: Conversation,
    *,
    body: str,
    sender_type: str,
    sender_id: int | None,
    attachments: Sequence[Attachment] = (),
) -> Message:
    """Add a queued reply plus the event a dispatcher turns into a provider call."""
    message = Message(
        tenant_id=conversation.tenant_id,
        inbox_id=conversation.inbox_id,
        conversation_id=conversation.id,
        direction="outbound",
        sender_type=sender_type,
        sender_id=sender_id,
        body=body,
        attachments=[{"url": a.url, "content_type": a.content_type} for a in attachments],
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
