"""SLAs: business-time arithmetic, the inbox list sorted by next SLA due, and the sweep.

Measures, in the same run:

- arithmetic: `add_business_time` on an office calendar (Europe/Paris, 09:00-18:00 on weekdays,
  French public holidays) for durations up to two weeks, against the same call on the
  round-the-clock calendar (plain datetime addition);
- sort: the first page (50) of a tenant's unresolved conversations ordered by
  `routing.sla.next_due_subquery()`, against the same page ordered by id;
- sweep: `SlaClocks.sweep()` marking a tenth of the clocks as warned and breached, per clock.

    python3 bench/sla.py [--conversations 20000] [--database-url sqlite+aiosqlite:///tmp/sla-bench.db]

Prints medians and ratios; asserts nothing about times. An SQLite file is deleted afterwards; with
a PostgreSQL URL, give an empty throwaway database.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Table, insert, select

from crm_core.models import ChannelIdentity, Contact
from inbox.models import Conversation, ConversationStatus, Inbox
from parley.db import Database
from parley.migrate import upgrade
from parley.models import Tenant
from routing.calendars import WEEKDAYS, BusinessCalendar, add_business_time
from routing.models import SlaClock, SlaPolicy
from routing.sla import SlaClocks, next_due_subquery

PAGE = 50
CHUNK = 5000


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def arithmetic(samples: int) -> None:
    office = BusinessCalendar.build(
        time_zone="Europe/Paris", hours={d: [["09:00", "18:00"]] for d in WEEKDAYS[:5]}, country="FR"
    )
    always = BusinessCalendar.always()
    rng = random.Random(7)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    cases = [
        (
            base + timedelta(minutes=rng.randrange(365 * 24 * 60)),
            timedelta(minutes=rng.randrange(1, 14 * 9 * 60)),
        )
        for _ in range(samples)
    ]
    results = {}
    for name, calendar in (("office", office), ("always", always)):
        add_business_time(calendar, *cases[0])  # warm the holiday cache
        timings = []
        for start, duration in cases:
            t0 = time.perf_counter()
            add_business_time(calendar, start, duration)
            timings.append(time.perf_counter() - t0)
        results[name] = _median_us(timings)
    print(
        f"add_business_time: office calendar {results['office']:.1f} µs, round the clock "
        f"{results['always']:.2f} µs (x{results['office'] / results['always']:.0f})"
    )


async def populate(db: Database, conversations: int, now: datetime) -> int:
    async with db.transaction() as session:
        tenant = Tenant(name="bench")
        session.add(tenant)
        await session.flush()
        inbox = Inbox(tenant_id=tenant.id, name="Support", channel="twilio_sms", settings={})
        session.add(inbox)
        await session.flush()
        policy = SlaPolicy(
            tenant_id=tenant.id, name="Standard", first_response_minutes=60, resolution_minutes=600
        )
        session.add(policy)
        await session.flush()
        tenant_id, inbox_id, policy_id = tenant.id, inbox.id, policy.id
    rng = random.Random(11)
    table = {m: cast(Table, m.__table__) for m in (Contact, ChannelIdentity, Conversation, SlaClock)}
    for start in range(0, conversations, CHUNK):
        ids = range(start + 1, min(start + CHUNK, conversations) + 1)
        async with db.transaction() as session:
            conn = await session.connection()
            await conn.execute(
                insert(table[Contact]),
                [{"id": i, "tenant_id": tenant_id, "name": f"C{i}", "attributes": {}} for i in ids],
            )
            await conn.execute(
                insert(table[ChannelIdentity]),
                [
                    {
                        "id": i,
                        "tenant_id": tenant_id,
                        "contact_id": i,
                        "kind": "phone",
                        "address": f"+1555{i:07d}",
                    }
                    for i in ids
                ],
            )
            await conn.execute(
                insert(table[Conversation]),
                [
                    {
                        "id": i,
                        "tenant_id": tenant_id,
                        "inbox_id": inbox_id,
                        "contact_id": i,
                        "identity_id": i,
                        "status": ConversationStatus.OPEN,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in ids
                ],
            )
            clocks = []
            for i in ids:
                # A tenth already due (the sweep's work), the rest within the next ten hours.
                offset = -rng.randrange(1, 600) if i % 10 == 0 else rng.randrange(1, 600)
                for kind, extra in (("first_response", 0), ("resolution", 540)):
                    due = now + timedelta(minutes=offset + extra)
                    clocks.append(
                        {
                            "tenant_id": tenant_id,
                            "conversation_id": i,
                            "policy_id": policy_id,
                            "kind": kind,
                            "target_minutes": 60,
                            "started_at": now - timedelta(hours=1),
                            "paused_total_seconds": 0.0,
                            "warn_at": due - timedelta(minutes=12),
                            "due_at": due,
                        }
                    )
            await conn.execute(insert(table[SlaClock]), clocks)
    return tenant_id


async def timed(db: Database, stmt: Any, runs: int) -> float:
    timings = []
    async with db.sessionmaker() as session:
        for _ in range(runs):
            t0 = time.perf_counter()
            rows = (await session.execute(stmt)).all()
            timings.append(time.perf_counter() - t0)
            assert len(rows) == PAGE
    return statistics.median(timings)


async def database(url: str, conversations: int, runs: int) -> None:
    db = Database(url)
    await upgrade(db.engine)
    now = datetime.now(UTC)
    try:
        t0 = time.perf_counter()
        tenant_id = await populate(db, conversations, now)
        print(
            f"populated {conversations} conversations, {2 * conversations} clocks "
            f"in {time.perf_counter() - t0:.1f} s"
        )
        unresolved = select(Conversation.id).where(
            Conversation.tenant_id == tenant_id, Conversation.status != ConversationStatus.RESOLVED
        )
        by_id = await timed(db, unresolved.order_by(Conversation.id.desc()).limit(PAGE), runs)
        by_due = await timed(
            db, unresolved.order_by(next_due_subquery().asc().nulls_last(), Conversation.id).limit(PAGE), runs
        )
        print(
            f"first page of {PAGE} by next SLA due: {by_due * 1e3:.2f} ms; by id: {by_id * 1e3:.2f} ms "
            f"(x{by_due / by_id:.1f})"
        )
        t0 = time.perf_counter()
        emitted = await SlaClocks(db, clock=lambda: now).sweep()
        elapsed = time.perf_counter() - t0
        print(
            f"sweep: {emitted} warnings and breaches in {elapsed * 1e3:.0f} ms "
            f"({elapsed / emitted * 1e6:.0f} µs each)"
        )
        t0 = time.perf_counter()
        again = await SlaClocks(db, clock=lambda: now).sweep()
        print(f"an idle sweep (nothing due): {(time.perf_counter() - t0) * 1e3:.2f} ms, {again} emitted")
    finally:
        await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    arithmetic(args.samples)
    if args.database_url:
        asyncio.run(database(args.database_url, args.conversations, args.runs))
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(database(f"sqlite+aiosqlite:///{tmp}/sla-bench.db", args.conversations, args.runs))


if __name__ == "__main__":
    main()
