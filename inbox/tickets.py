"""Opening a ticket from a conversation: an agent's button, a bot's triage, an automation rule."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.ticket_models import Ticket, TicketSource
from crm_core.tickets import open_ticket
from inbox.lookup import NotFoundError
from inbox.models import Conversation, Message


async def first_customer_message(session: AsyncSession, conversation_id: int) -> str | None:
    """The body of the conversation's first message from the customer that has text."""
    return (
        await session.execute(
            select(Message.body)
            .where(
                Message.conversation_id == conversation_id,
                Message.direction == "inbound",
                Message.body != "",
            )
            .order_by(Message.id)
            .limit(1)
        )
    ).scalar()


def subject_from(text: str | None, conversation_id: int) -> str:
    """The first line of the customer's words, shortened; a placeholder without any."""
    line = next((part.strip() for part in (text or "").splitlines() if part.strip()), "")
    if not line:
        return f"Conversation {conversation_id}"
    return line if len(line) <= 120 else line[:119].rstrip() + "…"


async def open_from_conversation(
    session: AsyncSession,
    tenant_id: int,
    conversation_id: int,
    *,
    source: str = TicketSource.AGENT,
    created_by: int | None = None,
    subject: str | None = None,
    description: str = "",
    type: str = "question",
    priority: str | None = None,
    assignee_id: int | None = None,
    team_id: int | None = None,
    sla_policy_id: int | None = None,
) -> Ticket:
    """Open a ticket linked to the conversation, with its contact, company and priority.

    The subject defaults to the first line of the customer's first message; the assignee to the
    conversation's. NotFoundError if the conversation is not the tenant's.
    """
    conversation = (
        await session.execute(
            select(Conversation).where(
                Conversation.id == conversation_id, Conversation.tenant_id == tenant_id
            )
        )
    ).scalar_one_or_none()
    if conversation is None:
        raise NotFoundError("conversation")
    if not subject:
        subject = subject_from(await first_customer_message(session, conversation.id), conversation.id)
    return await open_ticket(
        session,
        tenant_id=tenant_id,
        subject=subject,
        description=description,
        type=type,
        priority=priority or conversation.priority,
        contact_id=conversation.contact_id,
        assignee_id=assignee_id if assignee_id is not None else conversation.assignee_id,
        team_id=team_id,
        sla_policy_id=sla_policy_id,
        source=source,
        created_by=created_by,
        conversation_ids=[conversation.id],
    )
