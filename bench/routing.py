"""Routing: decision latency with 1,000 agents and 10,000 waiting conversations, and draining that backlog.

Each system gets a fresh PostgreSQL database with the same world: one tenant, 1,000 online agents
each holding 2 chat conversations (their capacity), and 10,000 conversations waiting in the queue
(priorities 0-2, waiting up to an hour). Then, measured:

1. **queue**: a new conversation arrives while everyone is full: `routing.assigner.route` (lock,
   read the policy and the contact's last agent, queue it, read the agents and their loads).
2. **assign**: one slot frees (a conversation is resolved) and the queue is served: the head of the
   10,000-long queue goes to the freed agent (`Assigner.drain`).
3. **drain**: every agent's capacity is raised by 10 at once and the whole backlog (10,000) is
   assigned in one drain, each conversation to an agent with room, in queue order.

The baseline runs the bare statements those decisions need (the same locks, reads and writes, as
literal SQL through asyncpg in one transaction each) with no decision logic: its "choice" is the
first agent with room. The ratio Parley/baseline is the cost of routing beyond the database work.

    python3 bench/routing.py [--decisions 300] [--agents 1000] [--waiting 10000] [--database-url postgresql://...]

PostgreSQL as in bench/ingest.py: `--database-url`, else `PARLEY_BENCH_DATABASE_URL`, else a
throwaway server from the local binaries. Exit status 0 (figures only; no targets enforced).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
sys.path[:0] = [str(REPO), str(SCRIPT.parent)]

from ingest import fresh_database, postgres_server, server_facts  # noqa: E402

CAPACITY = 2
RAISE = 10


# --- the world ------------------------------------------------------------------------------------


async def build_world(dsn: str, agents: int, waiting: int, spare_contacts: int) -> dict[str, int]:
    """Migrate and fill the database; return the ids the phases need."""
    from parley.db import Database
    from parley.migrate import upgrade

    db = Database(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
    await upgrade(db.engine)
    await db.dispose()
    conn = await asyncpg.connect(dsn)
    try:
        tenant = await conn.fetchval(
            "INSERT INTO tenants (name, created_at) VALUES ('bench', now()) RETURNING id"
        )
        inbox = await conn.fetchval(
            "INSERT INTO inboxes (tenant_id, name, channel, settings, secrets_encrypted, created_at,"
            " updated_at) VALUES ($1, 'Support', 'twilio_sms', '{}', '', now(), now()) RETURNING id",
            tenant,
        )
        await conn.execute(
            """
            INSERT INTO users (tenant_id, email, password_hash, role, presence, created_at)
            SELECT $1, 'agent' || g || '@bench.example.com', '-', 'agent', 'online', now()
            FROM generate_series(1, $2) AS g
            """,
            tenant,
            agents,
        )
        await conn.execute(
            """
            INSERT INTO agent_profiles (user_id, tenant_id, skills, languages, territories, capacity,
                                        time_zone, working_hours, updated_at)
            SELECT id, tenant_id, '{}', '[]', '[]', jsonb_build_object('chat', $2::int), 'UTC', '{}', now()
            FROM users WHERE tenant_id = $1
            """,
            tenant,
            CAPACITY,
        )
        held = agents * CAPACITY
        total = held + waiting + spare_contacts
        await conn.execute(
            """
            INSERT INTO contacts (tenant_id, name, attributes, created_at, updated_at)
            SELECT $1, 'Contact ' || g, '{}', now(), now() FROM generate_series(1, $2) AS g
            """,
            tenant,
            total,
        )
        await conn.execute(
            """
            INSERT INTO channel_identities (tenant_id, contact_id, kind, address, created_at)
            SELECT tenant_id, id, 'phone', '+1555' || lpad(id::text, 7, '0'), now()
            FROM contacts WHERE tenant_id = $1
            """,
            tenant,
        )
        # The first `held` contacts have a conversation with an agent, the next `waiting` one in the queue.
        await conn.execute(
            """
            WITH numbered AS (
                SELECT c.id AS contact_id, i.id AS identity_id, row_number() OVER (ORDER BY c.id) AS n
                FROM contacts c JOIN channel_identities i ON i.contact_id = c.id WHERE c.tenant_id = $1
            ), agents AS (
                SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM users WHERE tenant_id = $1
            )
            INSERT INTO conversations (tenant_id, inbox_id, contact_id, identity_id, status, assignee_id,
                                       created_at, updated_at)
            SELECT $1, $2, n.contact_id, n.identity_id, 'open',
                   CASE WHEN n.n <= $3 THEN a.id END,
                   now() - interval '1 hour' + n.n * interval '1 millisecond', now()
            FROM numbered n LEFT JOIN agents a ON a.k = (n.n - 1) % $5
            WHERE n.n <= $3 + $4
            """,
            tenant,
            inbox,
            held,
            waiting,
            agents,
        )
        await conn.execute(
            """
            INSERT INTO conversation_routing (conversation_id, tenant_id, contact_id, channel_kind, state,
                strategies, required_skills, priority, queued_at, assigned_at, updated_at)
            SELECT id, tenant_id, contact_id, 'chat',
                   CASE WHEN assignee_id IS NULL THEN 'waiting' ELSE 'assigned' END,
                   '[]', '{}', (id % 3)::int, created_at,
                   CASE WHEN assignee_id IS NULL THEN NULL ELSE created_at END, now()
            FROM conversations WHERE tenant_id = $1
            """,
            tenant,
        )
        await conn.execute("ANALYZE")
        first_spare = await conn.fetchval(
            "SELECT min(id) FROM contacts c WHERE tenant_id = $1"
            " AND NOT EXISTS (SELECT 1 FROM conversations v WHERE v.contact_id = c.id)",
            tenant,
        )
        return {"tenant": tenant, "inbox": inbox, "first_spare_contact": first_spare}
    finally:
        await conn.close()


async def open_conversation(conn: asyncpg.Connection, world: dict[str, int], n: int) -> int:
    """A new conversation from a contact who never wrote before (untimed: the pipeline's work)."""
    contact = world["first_spare_contact"] + n
    return int(
        await conn.fetchval(
            """
            INSERT INTO conversations (tenant_id, inbox_id, contact_id, identity_id, status, created_at,
                                       updated_at)
            SELECT $1, $2, $3, i.id, 'open', now(), now() FROM channel_identities i WHERE i.contact_id = $3
            RETURNING id
            """,
            world["tenant"],
            world["inbox"],
            contact,
        )
    )


async def free_one_slot(conn: asyncpg.Connection, world: dict[str, int]) -> None:
    """Resolve one assigned conversation (untimed: the agent's click)."""
    await conn.execute(
        """
        UPDATE conversations SET status = 'resolved', resolved_at = now()
        WHERE id = (SELECT id FROM conversations WHERE tenant_id = $1 AND assignee_id IS NOT NULL
                    AND status = 'open' ORDER BY id LIMIT 1)
        """,
        world["tenant"],
    )


async def raise_capacity(conn: asyncpg.Connection, world: dict[str, int]) -> None:
    await conn.execute(
        "UPDATE agent_profiles SET capacity = jsonb_build_object('chat', $2::int) WHERE tenant_id = $1",
        world["tenant"],
        CAPACITY + RAISE,
    )


async def waiting_count(conn: asyncpg.Connection, world: dict[str, int]) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM conversation_routing r JOIN conversations c ON c.id = r.conversation_id"
            " WHERE r.tenant_id = $1 AND r.state = 'waiting' AND c.assignee_id IS NULL"
            " AND c.status <> 'resolved'",
            world["tenant"],
        )
    )


async def over_capacity(conn: asyncpg.Connection, world: dict[str, int], capacity: int) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM (SELECT assignee_id FROM conversations WHERE tenant_id = $1"
            " AND assignee_id IS NOT NULL AND status <> 'resolved' GROUP BY assignee_id"
            " HAVING count(*) > $2) AS o",
            world["tenant"],
            capacity,
        )
    )


# --- the systems ----------------------------------------------------------------------------------


class Parley:
    """The real thing: `routing.assigner` through SQLAlchemy, as the outbox handlers call it."""

    name = "parley"

    def __init__(self, dsn: str, world: dict[str, int]) -> None:
        from parley.db import Database
        from routing.assigner import Assigner

        self.db = Database(dsn.replace("postgresql://", "postgresql+asyncpg://", 1), pool_size=4)
        self.assigner = Assigner(self.db)
        self.world = world

    async def queue(self, conversation_id: int) -> None:
        from routing.assigner import route

        async with self.db.transaction() as session:
            await route(session, self.world["tenant"], conversation_id)

    async def serve(self) -> int:
        return len(await self.assigner.drain(self.world["tenant"]))

    async def close(self) -> None:
        await self.db.dispose()


# The statements a routing decision needs, bare: same locks, reads and writes, no logic.
_LOCK = "SELECT id FROM tenants WHERE id = $1 FOR NO KEY UPDATE"
_CONVERSATION = (
    "SELECT c.*, i.channel, k.attributes FROM conversations c JOIN inboxes i ON i.id = c.inbox_id"
    " JOIN contacts k ON k.id = c.contact_id WHERE c.id = $1 AND c.tenant_id = $2"
)
_POLICY = "SELECT * FROM routing_policies WHERE inbox_id = $1"
_PREVIOUS = (
    "SELECT user_id FROM assignments WHERE contact_id = $1 AND user_id IS NOT NULL ORDER BY id DESC LIMIT 1"
)
_ROUTING_ROW = "SELECT * FROM conversation_routing WHERE conversation_id = $1 FOR UPDATE"
_INSERT_ROUTING = """
    INSERT INTO conversation_routing (conversation_id, tenant_id, contact_id, channel_kind, state, strategies,
        required_skills, priority, queued_at, updated_at)
    VALUES ($1, $2, $3, 'chat', 'waiting', '[]', '{}', 0, now(), now())
"""
_AGENTS = (
    "SELECT u.id, p.* FROM users u LEFT JOIN agent_profiles p ON p.user_id = u.id"
    " WHERE u.tenant_id = $1 AND u.presence = 'online' AND u.role IN ('agent', 'supervisor', 'admin')"
)
_TEAMS = "SELECT user_id, team_id FROM team_members WHERE tenant_id = $1"
_LOADS = (
    "SELECT c.assignee_id, i.channel, count(*) FROM conversations c JOIN inboxes i ON i.id = c.inbox_id"
    " WHERE c.tenant_id = $1 AND c.assignee_id = ANY($2::bigint[]) AND c.status <> 'resolved'"
    " GROUP BY c.assignee_id, i.channel"
)
_WAITING = """
    SELECT r.*, c.inbox_id FROM conversation_routing r JOIN conversations c ON c.id = r.conversation_id
    WHERE r.tenant_id = $1 AND r.state = 'waiting' AND c.assignee_id IS NULL AND c.status <> 'resolved'
    ORDER BY r.priority DESC, r.queued_at, r.conversation_id OFFSET $2 LIMIT 500 FOR NO KEY UPDATE OF c
"""
_ASSIGN = "UPDATE conversations SET assignee_id = $2, updated_at = now() WHERE id = $1"
_MARK = (
    "UPDATE conversation_routing SET state = 'assigned', assigned_at = now(), updated_at = now()"
    " WHERE conversation_id = $1"
)
_TOUCH = "UPDATE agent_profiles SET last_assigned_at = now() WHERE user_id = $1"
_HISTORY = (
    "INSERT INTO assignments (tenant_id, conversation_id, contact_id, user_id, reason, waited_seconds,"
    " assigned_at) VALUES ($1, $2, $3, $4, 'least_loaded', 0, now())"
)
_EVENT = (
    "INSERT INTO outbox_events (tenant_id, topic, payload, created_at, available_at, attempts, handled)"
    " VALUES ($1, $2, $3, now(), now(), 0, '[]')"
)


class Baseline:
    """The bare statements through asyncpg; the choice is the first agent with room."""

    name = "baseline"

    def __init__(self, dsn: str, world: dict[str, int]) -> None:
        self.dsn = dsn
        self.world = world
        self.conn: asyncpg.Connection | None = None

    async def _conn(self) -> asyncpg.Connection:
        if self.conn is None:
            self.conn = await asyncpg.connect(self.dsn)
        return self.conn

    async def _board(self, conn: asyncpg.Connection, tenant: int) -> tuple[list[Any], dict[int, int]]:
        agents = await conn.fetch(_AGENTS, tenant)
        await conn.fetch(_TEAMS, tenant)
        ids = [a["id"] for a in agents]
        loads = {row["assignee_id"]: row["count"] for row in await conn.fetch(_LOADS, tenant, ids)}
        room = {a["id"]: json.loads(a["capacity"])["chat"] - loads.get(a["id"], 0) for a in agents}
        return agents, {k: v for k, v in room.items() if v > 0}

    async def queue(self, conversation_id: int) -> None:
        conn = await self._conn()
        tenant = self.world["tenant"]
        async with conn.transaction():
            await conn.execute(_LOCK, tenant)
            row = await conn.fetchrow(_CONVERSATION, conversation_id, tenant)
            await conn.fetch(_POLICY, row["inbox_id"])
            await conn.fetchval(_PREVIOUS, row["contact_id"])
            await conn.fetchrow(_ROUTING_ROW, conversation_id)
            await conn.execute(_INSERT_ROUTING, conversation_id, tenant, row["contact_id"])
            _, room = await self._board(conn, tenant)
            if not room:
                await conn.execute(_EVENT, tenant, "conversation.queued", json.dumps({"conversation_id": 0}))

    async def serve(self) -> int:
        conn = await self._conn()
        tenant = self.world["tenant"]
        made = 0
        async with conn.transaction():
            await conn.execute(_LOCK, tenant)
            _, room = await self._board(conn, tenant)
            skipped = 0
            while room:
                rows = await conn.fetch(_WAITING, tenant, skipped)
                if not rows:
                    break
                choices = []
                for row in rows:
                    if not room:
                        break
                    agent = next(iter(room))
                    room[agent] -= 1
                    if not room[agent]:
                        del room[agent]
                    choices.append((row, agent))
                await conn.executemany(_ASSIGN, [(r["conversation_id"], a) for r, a in choices])
                await conn.executemany(_MARK, [(r["conversation_id"],) for r, _ in choices])
                await conn.executemany(_TOUCH, [(a,) for a in {a for _, a in choices}])
                await conn.executemany(
                    _HISTORY, [(tenant, r["conversation_id"], r["contact_id"], a) for r, a in choices]
                )
                await conn.executemany(
                    _EVENT,
                    [
                        (
                            tenant,
                            "conversation.assigned",
                            json.dumps({"conversation_id": r["conversation_id"]}),
                        )
                        for r, _ in choices
                    ],
                )
                made += len(choices)
                skipped += len(rows) - len(choices)
                if len(rows) < 500:
                    break
        return made

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


# --- measuring ------------------------------------------------------------------------------------


@dataclass
class Figures:
    queue_ms: list[float]
    assign_ms: list[float]
    drain_seconds: float
    drained: int
    waiting_left: int
    over_capacity: int


def _ms(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call()
    return time.perf_counter() - started, result


async def measure(system_class: Any, server: str, args: argparse.Namespace) -> Figures:
    async with fresh_database(server, f"bench_routing_{system_class.name}") as dsn:
        print(f"[{system_class.name}] building {args.agents} agents, {args.waiting} waiting…", flush=True)
        world = await build_world(dsn, args.agents, args.waiting, args.decisions + 50)
        system = system_class(dsn, world)
        helper = await asyncpg.connect(dsn)
        try:
            for n in range(10):  # warm-up: connections, statement caches
                await system.queue(await open_conversation(helper, world, n))
            queue_ms = []
            for n in range(10, 10 + args.decisions):
                conversation = await open_conversation(helper, world, n)
                seconds, _ = await _timed(lambda c=conversation: system.queue(c))
                queue_ms.append(seconds * 1000)
            assign_ms = []
            for _ in range(args.decisions):
                await free_one_slot(helper, world)
                seconds, made = await _timed(system.serve)
                assert made == 1, f"{system_class.name}: one freed slot assigned {made}"
                assign_ms.append(seconds * 1000)
            backlog = await waiting_count(helper, world)
            await raise_capacity(helper, world)
            drain_seconds, drained = await _timed(system.serve)
            left = await waiting_count(helper, world)
            over = await over_capacity(helper, world, CAPACITY + RAISE)
            print(
                f"[{system_class.name}] backlog {backlog}: drained {drained} in {drain_seconds:.2f} s, "
                f"{left} left waiting, {over} agents over capacity",
                flush=True,
            )
            return Figures(queue_ms, assign_ms, drain_seconds, drained, left, over)
        finally:
            await helper.close()
            await system.close()


def report(parley: Figures, baseline: Figures, args: argparse.Namespace, facts: str) -> None:
    print()
    print(f"routing: {args.agents} agents, {args.waiting} waiting, {args.decisions} decisions a phase")
    print(facts)
    print(f"{'':32}{'parley':>12}{'bare SQL':>12}{'ratio':>8}")

    def line(label: str, ours: float, theirs: float, unit: str) -> None:
        print(f"{label:32}{ours:>10.2f}{unit:>2}{theirs:>10.2f}{unit:>2}{ours / theirs:>8.2f}")

    for label, ours, theirs in (
        ("queue a new conversation", parley.queue_ms, baseline.queue_ms),
        ("assign a freed slot", parley.assign_ms, baseline.assign_ms),
    ):
        line(f"{label} p50", statistics.median(ours), statistics.median(theirs), "ms")
        line(f"{label} p99", _ms(ours, 0.99), _ms(theirs, 0.99), "ms")
    line(f"drain {parley.drained} waiting", parley.drain_seconds, baseline.drain_seconds, " s")
    print(
        f"drain rate: parley {parley.drained / parley.drain_seconds:,.0f}/s, "
        f"bare SQL {baseline.drained / baseline.drain_seconds:,.0f}/s; "
        f"left waiting: {parley.waiting_left} / {baseline.waiting_left}; "
        f"agents over capacity: {parley.over_capacity} / {baseline.over_capacity}"
    )


async def bench(args: argparse.Namespace) -> int:
    configured = args.database_url or os.environ.get("PARLEY_BENCH_DATABASE_URL")
    with postgres_server(configured) as server:
        facts = await server_facts(server)
        baseline = await measure(Baseline, server, args)
        parley = await measure(Parley, server, args)
    report(parley, baseline, args, facts)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=300)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--waiting", type=int, default=10000)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    sys.exit(asyncio.run(bench(args)))


if __name__ == "__main__":
    main()
