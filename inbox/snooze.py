"""Waking snoozed conversations: when the customer writes, and when the snooze time comes.

The inbound pipeline already reopens a snoozed conversation in the statement that stores the
customer's message (an agent must see it at once, and the one-statement fast path stays one
statement). It does not announce it: `SnoozeWaker.on_message_received` does, reading the
`snoozed_at` mark that the pipeline leaves alone, then clears the mark. A snooze with a time ends
through `wake_due_snoozes`, run periodically (the embedded gateway's sweep loop, or Celery beat).
Both announce `conversation.updated` with a `reason`: `customer_replied` or `snooze_expired`.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from sqlalchemy import select

from inbox.actions import SYSTEM, Changes, announce
from inbox.models import Conversation, ConversationStatus
from parley.db import Database, utcnow
from parley.outbox import Event

logger = logging.getLogger(__name__)

CUSTOMER_REPLIED = "customer_replied"
SNOOZE_EXPIRED = "snooze_expired"


async def wake_due_snoozes(db: Database, *, now: datetime | None = None, batch_size: int = 200) -> int:
    """Reopen every conversation whose snooze time has come; return how many."""
    now = now or utcnow()
    woken = 0
    while True:
        async with db.transaction() as session:
            due = list(
                (
                    await session.execute(
                        select(Conversation)
                        .where(
                            Conversation.status == ConversationStatus.SNOOZED,
                            Conversation.snoozed_until.is_not(None),
                            Conversation.snoozed_until <= now,
                        )
                        .order_by(Conversation.snoozed_until)
                        .limit(batch_size)
                        # Several gateways may sweep at once: each takes different conversations.
                        .with_for_update(skip_locked=True)
                    )
                ).scalars()
            )
            for conversation in due:
                changes: Changes = {
                    "status": {"old": str(ConversationStatus.SNOOZED), "new": str(ConversationStatus.OPEN)},
                    "snoozed_until": {"old": _iso(conversation.snoozed_until), "new": None},
                }
                conversation.status = ConversationStatus.OPEN
                conversation.snoozed_until = None
                conversation.snoozed_at = None
                await announce(session, conversation, changes, actor=SYSTEM, reason=SNOOZE_EXPIRED)
        woken += len(due)
        if len(due) < batch_size:
            return woken


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class SnoozeWaker:
    """Announces snoozed conversations the customer woke, and sweeps for snoozes that ran out."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def on_message_received(self, event: Event) -> None:
        """`message.received`: if the message woke a snoozed conversation, say so and clear the mark."""
        conversation_id = int(event.payload["conversation_id"])
        # Most conversations were never snoozed: a read, not a write transaction, answers for them.
        async with self.db.sessionmaker() as session:
            marked = (
                await session.execute(
                    select(Conversation.snoozed_at).where(Conversation.id == conversation_id)
                )
            ).scalar()
        if marked is None:
            return
        async with self.db.transaction() as session:
            conversation = (
                await session.execute(
                    select(Conversation).where(Conversation.id == conversation_id).with_for_update()
                )
            ).scalar_one_or_none()
            if conversation is None or conversation.snoozed_at is None:
                return
            if conversation.status == ConversationStatus.SNOOZED:
                return  # snoozed (again) after this message arrived: the snooze stands
            until = conversation.snoozed_until
            conversation.snoozed_at = None
            conversation.snoozed_until = None
            if conversation.status != ConversationStatus.OPEN:
                await session.flush()  # resolved or pending since: only the stale mark goes
                return
            changes: Changes = {
                "status": {"old": str(ConversationStatus.SNOOZED), "new": str(ConversationStatus.OPEN)},
                "snoozed_until": {"old": _iso(until), "new": None},
            }
            await announce(session, conversation, changes, actor=SYSTEM, reason=CUSTOMER_REPLIED)

    async def sweep(self) -> int:
        return await wake_due_snoozes(self.db)

    async def run_sweeps(self, *, interval: float = 15.0) -> None:
        """Wake due snoozes every `interval` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive a database hiccup
                logger.exception("snooze sweep failed; retrying")
