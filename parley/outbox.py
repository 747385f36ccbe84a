"""The event outbox: events written with the change they describe, delivered at least once.

`emit` adds an event to the caller's transaction. A `Dispatcher` claims due events (with
`FOR UPDATE SKIP LOCKED` on PostgreSQL, so several processes share the work), runs every handler
subscribed to the topic that has not yet succeeded for that event, and reschedules the event with
exponential backoff and jitter when one fails. Handlers must be idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db import Database, utcnow
from parley.models import OutboxEvent

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    """An outbox event as handlers see it; `attempts` counts this delivery too."""

    id: int
    tenant_id: int | None
    topic: str
    payload: Mapping[str, Any]
    attempts: int
    created_at: datetime
    handled: tuple[str, ...] = ()


Handler = Callable[[Event], Awaitable[None]]


class RetryLater(Exception):
    """Raised by a handler to be called again later; `delay` is a lower bound in seconds."""

    def __init__(self, reason: str, *, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


_INSERT_EVENT = insert(cast(Table, OutboxEvent.__table__))


async def emit(session: AsyncSession, tenant_id: int | None, *events: tuple[str, Mapping[str, Any]]) -> None:
    """Add events to the session's transaction (one INSERT); they are published only if it commits."""
    if not events:
        return
    now = utcnow()
    rows: list[dict[str, Any]] = [
        {
            "tenant_id": tenant_id,
            "topic": topic,
            "payload": dict(payload),
            "created_at": now,
            "available_at": now,
            "attempts": 0,
            "handled": [],
        }
        for topic, payload in events
    ]
    conn = await session.connection()
    await conn.execute(_INSERT_EVENT, rows[0] if len(rows) == 1 else rows)


def backoff(attempts: int, *, base: float = 1.0, cap: float = 300.0, at_least: float | None = None) -> float:
    """Exponential backoff with equal jitter, never shorter than the provider's Retry-After."""
    ceiling = min(cap, base * 2 ** max(attempts - 1, 0))
    delay = random.uniform(ceiling / 2, ceiling)
    return max(delay, at_least or 0.0)


def handler_name(handler: Handler) -> str:
    return f"{handler.__module__}.{getattr(handler, '__qualname__', repr(handler))}"


class Dispatcher:
    """Claims due outbox events and runs their handlers; safe to run in several processes."""

    def __init__(
        self,
        db: Database,
        subscribers: Mapping[str, Sequence[Handler]],
        *,
        batch_size: int = 200,
        lease: float = 120.0,
        max_attempts: int = 15,
        concurrency: int = 32,
    ) -> None:
        self.db = db
        self.subscribers = {topic: list(handlers) for topic, handlers in subscribers.items()}
        self.batch_size = batch_size
        self.lease = timedelta(seconds=lease)
        self.max_attempts = max_attempts
        self._semaphore = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._stopping = False

    def notify(self) -> None:
        """Wake the running loop: something was just committed."""
        self._wake.set()

    def stop(self) -> None:
        """Ask `run_forever` to return after the batch in hand: handlers are not cut off mid-transaction."""
        self._stopping = True
        self._wake.set()

    async def run_once(self) -> int:
        """Claim one batch of due events and process it; return how many were claimed."""
        events = await self._claim()
        if not events:
            return 0
        # Events of one conversation run in order; different conversations run side by side.
        lanes: dict[Any, list[Event]] = defaultdict(list)
        for event in events:
            lanes[event.payload.get("conversation_id", ("event", event.id))].append(event)
        outcomes = await asyncio.gather(*(self._run_lane(lane) for lane in lanes.values()))
        await self._record([o for lane in outcomes for o in lane])
        return len(events)

    async def run_until_idle(self) -> int:
        """Process batches until none is due; return the number of events processed."""
        total = 0
        while n := await self.run_once():
            total += n
        return total

    async def drain(self, *, timeout: float = 30.0) -> None:
        """Run until no event is left incomplete, waiting out scheduled retries (for tests and shutdown)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await self.run_until_idle()
            next_due = await self._next_due()
            if next_due is None:
                return
            now = asyncio.get_running_loop().time()
            if now >= deadline:
                raise TimeoutError("outbox still has incomplete events")
            wait = (next_due - utcnow()).total_seconds()
            await asyncio.sleep(min(max(wait, 0.01), deadline - now))

    async def purge(self, *, older_than: timedelta = timedelta(days=7)) -> int:
        """Delete events completed more than `older_than` ago; return how many."""
        async with self.db.transaction() as session:
            result = await session.execute(
                delete(OutboxEvent).where(OutboxEvent.completed_at < utcnow() - older_than)
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def run_forever(
        self, *, poll_interval: float = 1.0, purge_every: float = 3600.0, coalesce: float = 0.02
    ) -> None:
        """The in-process loop of the embedded default: woken by `notify`, polling as a safety net.

        After a wake-up it waits `coalesce` seconds, so that a burst of commits is claimed as one
        batch rather than one small transaction per webhook.
        """
        next_purge = asyncio.get_running_loop().time()
        while not self._stopping:
            if asyncio.get_running_loop().time() >= next_purge:
                next_purge += purge_every
                with contextlib.suppress(SQLAlchemyError):
                    await self.purge()
            try:
                n = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive a database hiccup
                logger.exception("outbox dispatch failed; retrying")
                n = 0
                await asyncio.sleep(poll_interval)
            if n < self.batch_size and not self._stopping:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), poll_interval)
                    await asyncio.sleep(coalesce)

    async def _claim(self) -> list[Event]:
        now = utcnow()
        due = (
            select(OutboxEvent.id)
            .where(OutboxEvent.completed_at.is_(None), OutboxEvent.available_at <= now)
            .order_by(OutboxEvent.id)
            .limit(self.batch_size)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(OutboxEvent)
            .where(OutboxEvent.id.in_(due.scalar_subquery()))
            .values(available_at=now + self.lease, attempts=OutboxEvent.attempts + 1)
            .returning(
                OutboxEvent.id,
                OutboxEvent.tenant_id,
                OutboxEvent.topic,
                OutboxEvent.payload,
                OutboxEvent.attempts,
                OutboxEvent.created_at,
                OutboxEvent.handled,
            )
        )
        async with self.db.transaction() as session:
            rows = (await session.execute(claim)).all()
        events = [
            Event(
                row.id,
                row.tenant_id,
                row.topic,
                row.payload,
                row.attempts,
                row.created_at,
                tuple(row.handled or ()),
            )
            for row in rows
        ]
        return sorted(events, key=lambda e: e.id)

    async def _run_lane(self, lane: list[Event]) -> list[_Outcome]:
        outcomes = []
        for event in lane:
            async with self._semaphore:
                outcomes.append(await self._run_event(event))
        return outcomes

    async def _run_event(self, event: Event) -> _Outcome:
        handled = list(event.handled)
        error: str | None = None
        delay: float | None = None
        for handler in self.subscribers.get(event.topic, ()):
            name = handler_name(handler)
            if name in handled:
                continue
            try:
                await handler(event)
            except RetryLater as e:
                error, delay = f"{name}: {e}", e.delay
            except Exception as e:  # a broken handler must not stall the others
                logger.exception("outbox handler %s failed on event %s (%s)", name, event.id, event.topic)
                error = f"{name}: {type(e).__name__}: {e}"
            else:
                handled.append(name)
        return _Outcome(event, handled, error, delay)

    async def _record(self, outcomes: Sequence[_Outcome]) -> None:
        now = utcnow()
        done = [o.event.id for o in outcomes if o.error is None]
        async with self.db.transaction() as session:
            if done:
                await session.execute(
                    update(OutboxEvent)
                    .where(OutboxEvent.id.in_(done))
                    .values(completed_at=now, last_error=None)
                )
            for o in outcomes:
                if o.error is None:
                    continue
                values: dict[str, Any] = {"handled": o.handled, "last_error": o.error[:2000]}
                if o.event.attempts >= self.max_attempts:
                    logger.error("outbox event %s (%s) gave up: %s", o.event.id, o.event.topic, o.error)
                    values["completed_at"] = now
                else:
                    wait = backoff(o.event.attempts, at_least=o.delay)
                    values["available_at"] = now + timedelta(seconds=wait)
                await session.execute(
                    update(OutboxEvent).where(OutboxEvent.id == o.event.id).values(**values)
                )

    async def _next_due(self) -> datetime | None:
        async with self.db.sessionmaker() as session:
            stmt = select(func.min(OutboxEvent.available_at)).where(OutboxEvent.completed_at.is_(None))
            return (await session.execute(stmt)).scalar()


@dataclass(slots=True)
class _Outcome:
    event: Event
    handled: list[str]
    error: str | None
    delay: float | None
