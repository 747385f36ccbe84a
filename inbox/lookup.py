"""Finding a tenant's rows for the composer's services, and the errors those services raise.

Services take a tenant id and answer `NotFoundError` for another tenant's row as for a missing
one; the API turns it into a 404 and `InvalidInput` into a 422 with its code.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from inbox.models import Conversation, Inbox


class NotFoundError(LookupError):
    """No such row in this tenant; `what` names the kind of thing (`conversation`, `notification`…)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")
        self.what = what


class InvalidInput(ValueError):
    """The request cannot be carried out as asked; `code` is stable, the message is for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def conversation_of(session: AsyncSession, tenant_id: int, conversation_id: int) -> Conversation:
    """The tenant's conversation, or `NotFoundError`."""
    conversation = (
        await session.execute(
            select(Conversation).where(
                Conversation.id == conversation_id, Conversation.tenant_id == tenant_id
            )
        )
    ).scalar_one_or_none()
    if conversation is None:
        raise NotFoundError("conversation")
    return conversation


async def conversation_with_inbox(
    session: AsyncSession, tenant_id: int, conversation_id: int
) -> tuple[Conversation, Inbox]:
    """The tenant's conversation and its inbox, or `NotFoundError`."""
    found = (
        await session.execute(
            select(Conversation, Inbox)
            .join(Inbox, Inbox.id == Conversation.inbox_id)
            .where(Conversation.id == conversation_id, Conversation.tenant_id == tenant_id)
        )
    ).one_or_none()
    if found is None:
        raise NotFoundError("conversation")
    return found[0], found[1]
