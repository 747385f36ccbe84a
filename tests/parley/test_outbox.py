"""The outbox dispatcher: at-least-once delivery, per-handler progress, backoff, leases."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select, update

from parley.db import Database, utcnow
from parley.models import OutboxEvent
from parley.outbox import Dispatcher, Event, RetryLater, backoff, emit


async def emit_one(db: Database, topic: str = "thing.happened", **payload: object) -> int:
    async with db.transaction() as session:
        await emit(session, None, (topic, payload))
    async with db.sessionmaker() as session:
        return int(
            (await session.execute(select(OutboxEvent.id).order_by(OutboxEvent.id.desc()))).scalars().first()
        )


async def event_row(db: Database, event_id: int) -> OutboxEvent:
    async with db.sessionmaker() as session:
        return (await session.execute(select(OutboxEvent).where(OutboxEvent.id == event_id))).scalar_one()


async def test_an_event_emitted_in_a_rolled_back_transaction_is_never_published(db: Database) -> None:
    seen: list[Event] = []

    async def handler(event: Event) -> None:
        seen.append(event)

    try:
        async with db.transaction() as session:
            await emit(session, None, ("thing.happened", {"n": 1}))
            raise RuntimeError("the change failed")
    except RuntimeError:
        pass
    assert await Dispatcher(db, {"thing.happened": [handler]}).run_until_idle() == 0
    assert seen == []


async def test_each_handler_runs_once_and_a_failing_one_is_retried_alone(db: Database) -> None:
    calls = {"steady": 0, "flaky": 0}

    async def steady(event: Event) -> None:
        calls["steady"] += 1

    async def flaky(event: Event) -> None:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise RetryLater("provider busy", delay=0.0)

    event_id = await emit_one(db, n=1)
    dispatcher = Dispatcher(db, {"thing.happened": [steady, flaky]})
    await dispatcher.run_once()
    row = await event_row(db, event_id)
    assert row.completed_at is None and "provider busy" in (row.last_error or "")
    assert row.available_at > utcnow()  # backed off, not hot-looping

    async with db.transaction() as session:  # let the retry come due now
        await session.execute(update(OutboxEvent).values(available_at=utcnow()))
    await dispatcher.run_once()
    assert calls == {"steady": 1, "flaky": 2}
    row = await event_row(db, event_id)
    assert row.completed_at is not None and row.attempts == 2 and row.last_error is None


async def test_a_claimed_event_of_a_crashed_dispatcher_comes_due_again_after_its_lease(db: Database) -> None:
    seen: list[int] = []

    async def handler(event: Event) -> None:
        seen.append(event.id)

    event_id = await emit_one(db)
    crashed = Dispatcher(db, {"thing.happened": [handler]}, lease=60)
    assert len(await crashed._claim()) == 1  # claimed, then the process "dies"
    survivor = Dispatcher(db, {"thing.happened": [handler]})
    assert await survivor.run_once() == 0  # still leased
    async with db.transaction() as session:
        await session.execute(update(OutboxEvent).values(available_at=utcnow() - timedelta(seconds=1)))
    assert await survivor.run_once() == 1
    assert seen == [event_id]


async def test_an_event_that_keeps_failing_is_given_up_after_max_attempts(db: Database) -> None:
    async def broken(event: Event) -> None:
        raise ValueError("bug")

    event_id = await emit_one(db)
    dispatcher = Dispatcher(db, {"thing.happened": [broken]}, max_attempts=2)
    for _ in range(2):
        async with db.transaction() as session:
            await session.execute(update(OutboxEvent).values(available_at=utcnow()))
        await dispatcher.run_once()
    row = await event_row(db, event_id)
    assert row.completed_at is not None and "ValueError: bug" in (row.last_error or "")


async def test_events_of_one_conversation_are_handled_in_order(db: Database) -> None:
    order: list[int] = []

    async def handler(event: Event) -> None:
        order.append(int(event.payload["n"]))

    for n in range(10):
        await emit_one(db, conversation_id=7, n=n)
    await Dispatcher(db, {"thing.happened": [handler]}).run_until_idle()
    assert order == list(range(10))


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    first = [backoff(1) for _ in range(50)]
    fifth = [backoff(5) for _ in range(50)]
    assert all(0.5 <= d <= 1.0 for d in first)
    assert all(8.0 <= d <= 16.0 for d in fifth)
    assert len(set(fifth)) > 1  # jittered
    assert backoff(1, at_least=30) == 30
    assert backoff(40) <= 300


async def test_purge_deletes_only_events_completed_long_ago(db: Database) -> None:
    old, recent, pending = (await emit_one(db), await emit_one(db), await emit_one(db))
    async with db.transaction() as session:
        await session.execute(
            update(OutboxEvent).where(OutboxEvent.id == old).values(completed_at=utcnow() - timedelta(days=8))
        )
        await session.execute(
            update(OutboxEvent).where(OutboxEvent.id == recent).values(completed_at=utcnow())
        )
    assert await Dispatcher(db, {}).purge() == 1
    async with db.sessionmaker() as session:
        left = set((await session.execute(select(OutboxEvent.id))).scalars())
    assert left == {recent, pending}


async def test_stopping_lets_the_handler_in_hand_commit_before_run_forever_returns(db: Database) -> None:
    started = asyncio.Event()
    finished: list[int] = []

    async def slow(event: Event) -> None:
        started.set()
        async with db.transaction() as session:
            await asyncio.sleep(0.3)
            await emit(session, None, ("thing.followed", {"after": event.id}))
        finished.append(event.id)

    event_id = await emit_one(db)
    dispatcher = Dispatcher(db, {"thing.happened": [slow]})
    task = asyncio.create_task(dispatcher.run_forever(poll_interval=0.05))
    await asyncio.wait_for(started.wait(), 10)
    dispatcher.stop()
    await asyncio.wait_for(task, 10)  # returns by itself, after the handler
    assert finished == [event_id]
    assert (await event_row(db, event_id)).completed_at is not None
