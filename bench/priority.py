"""Priority scoring: rescoring many conversations against reading the signals it needs.

Measures, in the same run, on N unresolved conversations of one tenant (each with two or three
customer messages, a tenth of the contacts tagged VIP, a fifth with an open deal):

- select: `routing.prioritizer.load_signals` for every conversation in batches of 500, the bare
  reads scoring needs (the baseline);
- first: `recompute` of every conversation, writing each one's score and reasons and announcing the
  priority changes (a fresh database: everything is new);
- steady: `recompute` again at the same moment: nothing changes, nothing is written (the sweep's
  usual case);
- assess: the pure scorer alone, per conversation.

    python3 bench/priority.py [--conversations 10000] [--database-url sqlite+aiosqlite:///tmp/p.db]

Prints times, per-conversation latencies and ratios; asserts nothing about times. An SQLite file is
deleted afterwards; with a PostgreSQL URL, give an empty throwaway database.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Table, insert, select

from crm_core.models import ChannelIdentity, Contact, ContactTag, Deal, Pipeline, PipelineStage
from inbox.models import Conversation, Inbox, Message
from parley.db import Database, utcnow
from parley.migrate import upgrade
from parley.models import Tenant
from routing.prioritizer import BATCH, load_signals, recompute
from routing.priority import ScoringConfig, assess

CHUNK = 5000
WORDS = ["hello", "my order", "is late", "urgent", "refund", "thanks", "not working", "where is", "asap"]


async def _bulk(session: Any, model: Any, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), CHUNK):
        await session.execute(insert(cast(Table, model.__table__)), rows[start : start + CHUNK])


async def seed(db: Database, n: int) -> tuple[int, list[int]]:
    rng = random.Random(7)
    now = utcnow()
    async with db.transaction() as session:
        tenant = Tenant(name="bench")
        session.add(tenant)
        await session.flush()
        inbox = Inbox(tenant_id=tenant.id, name="SMS", channel="twilio_sms", settings={})
        pipeline = Pipeline(tenant_id=tenant.id, name="Sales")
        session.add_all([inbox, pipeline])
        await session.flush()
        stage = PipelineStage(tenant_id=tenant.id, pipeline_id=pipeline.id, name="Talking", position=0)
        session.add(stage)
        await session.flush()
        tid = tenant.id
        stages = ["lead", "mql", "customer", "opportunity", "visitor"]
        await _bulk(
            session,
            Contact,
            [
                {
                    "id": i,
                    "tenant_id": tid,
                    "name": f"C{i}",
                    "attributes": {},
                    "lifecycle_stage": rng.choice(stages),
                    "score": 0.0,
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(1, n + 1)
            ],
        )
        await _bulk(
            session,
            ChannelIdentity,
            [
                {"id": i, "tenant_id": tid, "contact_id": i, "kind": "phone", "address": f"+1555{i:07d}"}
                for i in range(1, n + 1)
            ],
        )
        await _bulk(
            session,
            ContactTag,
            [{"contact_id": i, "tag": "vip", "tenant_id": tid} for i in range(1, n + 1) if i % 10 == 0],
        )
        await _bulk(
            session,
            Deal,
            [
                {
                    "tenant_id": tid,
                    "pipeline_id": pipeline.id,
                    "stage_id": stage.id,
                    "position": i,
                    "title": f"Deal {i}",
                    "amount_minor": rng.randrange(10_000, 10_000_000),
                    "currency": rng.choice(["EUR", "USD", "JPY"]),
                    "contact_id": i,
                    "source": "api",
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(1, n + 1)
                if i % 5 == 0
            ],
        )
        await _bulk(
            session,
            Conversation,
            [
                {
                    "id": i,
                    "tenant_id": tid,
                    "inbox_id": inbox.id,
                    "contact_id": i,
                    "identity_id": i,
                    "status": "open",
                    "priority": "none",
                    "priority_source": "computed",
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(1, n + 1)
            ],
        )
        messages = []
        for i in range(1, n + 1):
            for k in range(rng.randrange(2, 4)):
                messages.append(
                    {
                        "tenant_id": tid,
                        "inbox_id": inbox.id,
                        "conversation_id": i,
                        "direction": "inbound",
                        "sender_type": "contact",
                        "body": " ".join(rng.sample(WORDS, 3)),
                        "attachments": [],
                        "status": "received",
                        "attempts": 0,
                        "extra": {"intent": {"name": "complaint"}} if i % 7 == 0 and k == 0 else {},
                        "private": False,
                        "created_at": now - timedelta(minutes=rng.randrange(0, 60)),
                        "updated_at": now,
                    }
                )
        await _bulk(session, Message, messages)
    async with db.sessionmaker() as session:
        ids = list((await session.scalars(select(Conversation.id).order_by(Conversation.id))).all())
    return tid, ids


async def run(database_url: str, n: int) -> None:
    db = Database(database_url)
    await upgrade(db.engine)
    tenant_id, ids = await seed(db, n)
    now = utcnow()
    config = ScoringConfig.from_dict()
    batches = [ids[i : i + BATCH] for i in range(0, len(ids), BATCH)]

    async def select_all() -> float:
        t0 = time.perf_counter()
        async with db.sessionmaker() as session:
            for batch in batches:
                await load_signals(session, tenant_id, batch, now)
        return time.perf_counter() - t0

    async def recompute_all() -> tuple[float, int]:
        t0 = time.perf_counter()
        moved = 0
        for batch in batches:
            async with db.transaction() as session:
                moved += len(await recompute(session, tenant_id, batch, now=now, config=config))
        return time.perf_counter() - t0, moved

    await select_all()  # warm caches
    selects = [await select_all() for _ in range(3)]
    first, moved = await recompute_all()
    steady_runs = [await recompute_all() for _ in range(3)]
    steady = [t for t, _ in steady_runs]
    assert all(m == 0 for _, m in steady_runs), "a rescore at the same moment must change nothing"

    async with db.sessionmaker() as session:
        signals = await load_signals(session, tenant_id, ids[:BATCH], now)
    t0 = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        for s in signals.values():
            assess(s, config)
    assess_us = (time.perf_counter() - t0) / (rounds * len(signals)) * 1e6

    base = statistics.median(selects)
    steady_m = statistics.median(steady)
    print(f"{n} conversations on {db.dialect}; {moved} changed priority on the first rescore")
    print(f"select signals (baseline): {base * 1e3:.0f} ms, {base / n * 1e6:.0f} µs a conversation")
    print(
        f"first rescore (writes all): {first * 1e3:.0f} ms, {first / n * 1e6:.0f} µs a conversation "
        f"(x{first / base:.2f} the select)"
    )
    print(
        f"steady rescore (no change): {steady_m * 1e3:.0f} ms, {steady_m / n * 1e6:.0f} µs a conversation "
        f"(x{steady_m / base:.2f} the select)"
    )
    print(f"assess alone: {assess_us:.1f} µs a conversation")
    await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    if args.database_url:
        asyncio.run(run(args.database_url, args.conversations))
        return
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(f"sqlite+aiosqlite:///{tmp}/priority-bench.db", args.conversations))


if __name__ == "__main__":
    main()
