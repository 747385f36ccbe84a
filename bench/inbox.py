"""The agent inbox at scale on PostgreSQL: the conversation list and search.

Loads 50 tenants with 100,000 conversations and 1,000,000 messages (times `--scale`) by COPY into
a throwaway database, then measures sequentially, each against a bare indexed SQL query returning
the same rows, in the same run:

- the conversation list: a tenant's open conversations, newest first, 25 rows with the contact's
  name and the last message's preview, as the inbox lists them (`inbox.listing.list_conversations`);
- search: `inbox.search.search()` for message text and for contacts, over a handful of realistic
  terms (words, a prefix being typed, a phrase, an exclusion, a very common word, names).

    python3 bench/inbox.py [--database-url postgresql://postgres@127.0.0.1:5432] [--scale 0.05]

Prints p50/p95 and the ratios; exit status 0 when every p95 is under the 50 ms target, 2 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

SCRIPT = Path(__file__).resolve()
sys.path[:0] = [str(SCRIPT.parent.parent), str(SCRIPT.parent)]

from ingest import fresh_database, machine_busy_now, postgres_server, server_facts  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402

from inbox.listing import ConversationFilters, list_conversations  # noqa: E402
from inbox.models import ConversationStatus  # noqa: E402
from inbox.search import search  # noqa: E402
from parley.db import Database  # noqa: E402
from parley.migrate import upgrade  # noqa: E402

TENANTS = 50
CONVERSATIONS = 100_000
MESSAGES = 1_000_000
PAGE = 25
RESULTS = 20
TARGET_P95_MS = 50.0
PREVIEW = 80

# --- the conversation list under test -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListRow:
    conversation_id: int
    contact_name: str | None
    preview: str
    last_message_at: datetime | None


async def list_as_the_ui_does(session: AsyncSession, tenant_id: int, limit: int) -> list[ListRow]:
    """The inbox's list (`inbox.listing.list_conversations`, what `/inbox` and `GET /conversations`
    run): a tenant's open conversations, newest activity first, with everything a row shows (contact,
    inbox, assignee, last message preview, labels, the agent's unread count, waiting since)."""
    page = await list_conversations(
        session,
        tenant_id=tenant_id,
        user_id=0,  # nobody's read marks: every customer message counts as unread, the costliest case
        view="all",
        filters=ConversationFilters(status=ConversationStatus.OPEN),
        sort="newest",
        limit=limit,
    )
    return [
        ListRow(r.conversation.id, r.contact_name, r.last_message_preview[:PREVIEW], r.last_message_at)
        for r in page.rows
    ]


LIST_CONVERSATIONS: Callable[[AsyncSession, int, int], Awaitable[list[ListRow]]] = list_as_the_ui_does

BARE_LIST = f"""
    SELECT c.id, ct.name, left(lm.body, {PREVIEW}) AS preview, c.last_message_at
    FROM conversations c
    JOIN contacts ct ON ct.id = c.contact_id
    LEFT JOIN LATERAL (
        SELECT body FROM messages m WHERE m.conversation_id = c.id ORDER BY m.id DESC LIMIT 1
    ) lm ON true
    WHERE c.tenant_id = $1 AND c.status = 'open'
    ORDER BY coalesce(c.last_message_at, c.created_at) DESC, c.id DESC
    LIMIT {PAGE}"""  # noqa: S608 - constants

# --- search: the bare queries ---------------------------------------------------------------------

_TSQUERY = (
    "(SELECT websearch_to_tsquery('parley_search'::regconfig, $2)"
    " && to_tsquery('parley_search'::regconfig, coalesce($3, '')) AS q) AS query"
)
_MESSAGE_VECTOR = "m.search_vector"
_CONTACT_VECTOR = (
    "to_tsvector('parley_search'::regconfig, "
    "coalesce(c.name, '') || ' ' || coalesce(c.email, '') || ' ' || coalesce(c.phone, ''))"
)
BARE_MESSAGES = f"""
    SELECT m.id FROM messages m, {_TSQUERY}
    WHERE m.tenant_id = $1 AND {_MESSAGE_VECTOR} @@ query.q
    ORDER BY ts_rank({_MESSAGE_VECTOR}, query.q) DESC, m.created_at DESC, m.id DESC
    LIMIT $4"""  # noqa: S608 - constants
_CONTACT_WORDS = f"""
    SELECT c.id, ts_rank({_CONTACT_VECTOR}, query.q) AS score FROM contacts c, {_TSQUERY}
    WHERE c.tenant_id = $1 AND {_CONTACT_VECTOR} @@ query.q"""  # noqa: S608 - constants
# A one-token query also matches emails, addresses and company names by substring ($4, a LIKE pattern).
_CONTACT_SUBSTRINGS = """
    UNION ALL SELECT id, 0 FROM contacts WHERE tenant_id = $1 AND email ILIKE $4
    UNION ALL SELECT contact_id, 0 FROM channel_identities WHERE tenant_id = $1 AND address ILIKE $4
    UNION ALL SELECT c.id, 0 FROM contacts c JOIN companies co ON co.id = c.company_id
        WHERE co.tenant_id = $1 AND c.tenant_id = $1 AND co.name ILIKE $4"""


def bare_contacts(branches: str) -> str:
    return f"""
    SELECT h.id FROM (SELECT id, max(score) AS score FROM ({branches}) u GROUP BY id) h
    JOIN contacts c ON c.id = h.id
    ORDER BY h.score DESC, c.updated_at DESC, c.id DESC
    LIMIT {RESULTS}"""  # noqa: S608 - constants


# What agents type, with the text for websearch_to_tsquery and the prefix the last word becomes.
MESSAGE_TERMS: list[tuple[str, str, str | None]] = [
    ("invoice", "", "'invoice':*"),
    ("refund", "", "'refund':*"),
    ("invo", "", "'invo':*"),  # still typing
    ("delivery address", "delivery ", "'address':*"),
    ('"credit card"', '"credit card"', None),
    ("password -reset", "password -reset", None),
    ("thanks", "", "'thanks':*"),  # in about one message in five: the worst case
]
CONTACT_TERMS: list[tuple[str, str, str | None]] = [
    ("anna müller", "anna ", "'müller':*"),
    ("garcía", "", "'garcía':*"),
    ("søren", "", "'søren':*"),
]

# --- the data ---------------------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return text.split()


FIRST = words(
    "Anna José Zoë Søren Émile Noah Mia Liam Olivia Chloé Lukas Aiko Wei Fatima Omar Ines Marta Ivan"
)
LAST = words("Müller García Nguyen Smith Dubois Rossi Kowalski Schmidt Yamamoto Silva Öztürk Jensen Brown")
FILLER = words(
    "hello hi please thanks thank you my the a an is are was it i we our your can could would to for of in "
    "on at with about from this that there here still not yet again today tomorrow yesterday week since "
    "order account help need want know when where why how what just already after before some any more "
    "problem issue question sorry ok great fine good bad wrong right soon asap urgent quick back new old "
    "number email phone app website page link button screen error message team support agent customer"
)
TOPICS = words(
    "invoice refund delivery address password reset login subscription cancel upgrade downgrade "
    "payment charge receipt shipping tracking parcel package return exchange warranty discount coupon "
    "price plan trial billing card credit debit bank transfer paypal voucher appointment booking "
    "reservation schedule confirmation delay damaged missing broken replacement size colour stock"
)

PAIRS = {"card": "credit card", "address": "delivery address", "reset": "password reset"}


def body_of(rng: random.Random) -> str:
    words = rng.choices(FILLER, k=rng.randint(5, 24))
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        topic = rng.choice(TOPICS)
        # Some words come in pairs.
        topic = PAIRS.get(topic, topic) if rng.random() < 0.5 else topic
        words.insert(rng.randrange(len(words) + 1), topic)
    if rng.random() < 0.05:
        words.append(f"#{rng.randint(10000, 99999)}")
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice((".", "?", "!", ""))


def copy_rows(scale: float, seed: int, now: datetime) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """(table, rows) batches, parents first: tenants … messages, ids assigned here."""
    rng = random.Random(seed)
    per_tenant = max(1, round(CONVERSATIONS * scale / TENANTS))
    messages_per = MESSAGES / CONVERSATIONS
    yield "tenants", [(t, f"bench-{t}", now) for t in range(1, TENANTS + 1)]
    yield (
        "inboxes",
        [
            (t * 2 + k, t, name, channel, "{}", "", now, now)
            for t in range(1, TENANTS + 1)
            for k, (name, channel) in enumerate((("SMS", "twilio_sms"), ("Chat", "webchat")))
        ],
    )
    yield (
        "companies",
        [
            (
                t * 20 + k,
                t,
                f"{rng.choice(LAST)} {rng.choice(('GmbH', 'S.A.', 'Ltd', 'Inc'))}",
                None,
                "{}",
                now,
                now,
            )
            for t in range(1, TENANTS + 1)
            for k in range(20)
        ],
    )
    contacts, identities, conversations, messages = [], [], [], []
    message_id = 0
    for t in range(1, TENANTS + 1):
        for k in range(per_tenant):
            cid = (t - 1) * per_tenant + k + 1  # one contact per conversation
            first, last = rng.choice(FIRST), rng.choice(LAST)
            phone = f"+1{rng.choice(('212', '415', '646', '303'))}{2_000_000 + cid:07d}"
            company = t * 20 + rng.randrange(20) if rng.random() < 0.5 else None
            email = f"{first.lower()}.{last.lower()}{cid}@example.com"
            contacts.append((cid, t, f"{first} {last}", email, phone, "{}", now, now, company, "lead", 0.0))
            identities.append((cid, t, cid, "phone", phone, now))
            opened = now - timedelta(minutes=rng.randint(60, 90 * 24 * 60))
            status = rng.choices(("open", "pending", "resolved"), (3, 1, 6))[0]
            count = max(1, round(rng.uniform(0.2, 1.8) * messages_per))
            at = opened
            for n in range(count):
                message_id += 1
                at += timedelta(seconds=rng.randint(5, 3600))
                inbound = n % 2 == 0
                messages.append(
                    (
                        message_id,
                        t,
                        t * 2,
                        cid,
                        "inbound" if inbound else "outbound",
                        "contact" if inbound else "user",
                        body_of(rng),
                        "[]",
                        "received" if inbound else "delivered",
                        0,
                        "{}",
                        at,
                        at,
                    )
                )
            resolved = at if status == "resolved" else None
            conversations.append((cid, t, t * 2, cid, cid, status, at, at, opened, at, resolved))
    yield "contacts", contacts
    yield "channel_identities", identities
    yield "conversations", conversations
    for start in range(0, len(messages), 100_000):
        yield "messages", messages[start : start + 100_000]


COLUMNS = {
    "tenants": ["id", "name", "created_at"],
    "inboxes": [
        "id",
        "tenant_id",
        "name",
        "channel",
        "settings",
        "secrets_encrypted",
        "created_at",
        "updated_at",
    ],
    "companies": ["id", "tenant_id", "name", "domain", "attributes", "created_at", "updated_at"],
    "contacts": [
        "id",
        "tenant_id",
        "name",
        "email",
        "phone",
        "attributes",
        "created_at",
        "updated_at",
        "company_id",
        "lifecycle_stage",
        "score",
    ],
    "channel_identities": ["id", "tenant_id", "contact_id", "kind", "address", "created_at"],
    "conversations": [
        "id",
        "tenant_id",
        "inbox_id",
        "contact_id",
        "identity_id",
        "status",
        "last_message_at",
        "last_inbound_at",
        "created_at",
        "updated_at",
        "resolved_at",
    ],
    "messages": [
        "id",
        "tenant_id",
        "inbox_id",
        "conversation_id",
        "direction",
        "sender_type",
        "body",
        "attachments",
        "status",
        "attempts",
        "extra",
        "created_at",
        "updated_at",
    ],
}


async def load(dsn: str, scale: float, seed: int) -> dict[str, int]:
    """COPY the world in; the search indexes are dropped for the load and built once afterwards."""
    conn = await asyncpg.connect(dsn)
    try:
        search_indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE indexname LIKE 'ix_search_%'"
        )
        for row in search_indexes:
            await conn.execute(f'DROP INDEX "{row["indexname"]}"')
        counts: dict[str, int] = {}
        began = time.perf_counter()
        for table, rows in copy_rows(scale, seed, datetime.now(UTC)):
            await conn.copy_records_to_table(table, records=rows, columns=COLUMNS[table])
            counts[table] = counts.get(table, 0) + len(rows)
        print(f"  copied {counts} in {time.perf_counter() - began:.0f} s", flush=True)
        began = time.perf_counter()
        await conn.execute("SET maintenance_work_mem = '256MB'")
        for row in search_indexes:
            await conn.execute(row["indexdef"])
        for table in COLUMNS:
            await conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"  # noqa: S608
            )
            await conn.execute(f"VACUUM ANALYZE {table}")
        print(f"  search indexes built, vacuumed and analysed in {time.perf_counter() - began:.0f} s")
        return counts
    finally:
        await conn.close()


# --- measuring --------------------------------------------------------------------------------------


def pct(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(samples: int, run: Callable[[int], Awaitable[object]]) -> list[float]:
    for n in range(min(20, samples)):  # warm-up: plans, caches, prepared statements
        await run(n)
    taken = []
    for n in range(samples):
        began = time.perf_counter()
        await run(n)
        taken.append(time.perf_counter() - began)
    return taken


@dataclass
class Line:
    name: str
    ours: list[float]
    bare: list[float]

    def figures(self) -> dict[str, float]:
        return {
            "p50": pct(self.ours, 0.5),
            "p95": pct(self.ours, 0.95),
            "bare_p50": pct(self.bare, 0.5),
            "bare_p95": pct(self.bare, 0.95),
        }

    def render(self) -> str:
        f = self.figures()
        return (
            f"{self.name:<34} p50 {f['p50']:7.2f} ms  p95 {f['p95']:7.2f} ms"
            f"   | bare p50 {f['bare_p50']:6.2f} ms  p95 {f['bare_p95']:6.2f} ms"
            f"   | ratio p50 {f['p50'] / f['bare_p50']:4.1f}x  p95 {f['p95'] / f['bare_p95']:4.1f}x"
        )


async def run(args: argparse.Namespace) -> int:
    busy = await machine_busy_now()
    print(
        f"machine busy before the run: {busy:.0%} of all cores"
        + ("  (not a quiet machine)" if busy > 0.1 else "")
    )
    with postgres_server(args.database_url) as server:
        print(await server_facts(server))
        async with fresh_database(server, "parley_bench_inbox") as dsn:
            db = Database(f"postgresql+asyncpg://{dsn.split('://', 1)[1]}", pool_size=2)
            try:
                await upgrade(db.engine)
                print(f"loading scale {args.scale:g} into {dsn.rsplit('/', 1)[1]}", flush=True)
                counts = await load(dsn, args.scale, args.seed)
                lines = await measure_all(db, dsn, args.samples, args.seed)
            finally:
                await db.dispose()
    print()
    print(
        f"{TENANTS} tenants, {counts['conversations']:,} conversations, {counts['messages']:,} messages, "
        f"{args.samples} samples a line (sequential)"
    )
    for line in lines:
        print(line.render())
    worst = max(pct(line.ours, 0.95) for line in lines)
    met = worst < TARGET_P95_MS
    print(f"target p95 < {TARGET_P95_MS:g} ms: {'met' if met else 'MISSED'} (worst p95 {worst:.2f} ms)")
    print(
        json.dumps({"scale": args.scale, "counts": counts, **{line.name: line.figures() for line in lines}})
    )
    return 0 if met else 2


async def measure_all(db: Database, dsn: str, samples: int, seed: int) -> list[Line]:
    rng = random.Random(seed)
    tenants = [rng.randint(1, TENANTS) for _ in range(samples)]
    pg = await asyncpg.connect(dsn)
    try:
        bare_list = await pg.prepare(BARE_LIST)
        bare_messages = await pg.prepare(BARE_MESSAGES)
        bare_contact_words = await pg.prepare(bare_contacts(_CONTACT_WORDS))
        bare_contact_token = await pg.prepare(bare_contacts(_CONTACT_WORDS + _CONTACT_SUBSTRINGS))

        async def list_ours(n: int) -> list[ListRow]:
            async with db.sessionmaker() as session:
                return await LIST_CONVERSATIONS(session, tenants[n], PAGE)

        async def list_bare(n: int) -> list[ListRow]:
            return [ListRow(*row) for row in await bare_list.fetch(tenants[n])]

        for n in range(5):  # both return the same rows
            ours, bare = await list_ours(n), await list_bare(n)
            assert ours == bare and ours, (ours[:2], bare[:2])
        lines = [
            Line(
                "conversation list (25 open)",
                await measure(samples, list_ours),
                await measure(samples, list_bare),
            )
        ]

        for kind, terms, bare in (
            ("messages", MESSAGE_TERMS, bare_messages),
            ("contacts", CONTACT_TERMS, bare_contact_words),
        ):

            async def ours(n: int, kind: str = kind, terms: list[Any] = terms) -> list[int]:
                typed = terms[n % len(terms)][0]
                async with db.sessionmaker() as session:
                    found = await search(session, tenants[n], typed, kinds={kind}, limit=RESULTS)  # type: ignore[arg-type]
                if kind == "messages":
                    return [hit.message_id for hit in found.messages]
                return [hit.contact_id for hit in found.contacts]

            async def bare_run(n: int, terms: list[Any] = terms, bare: Any = bare) -> list[int]:
                typed, head, prefix = terms[n % len(terms)]
                if bare is bare_messages:  # the same strategy: whole words first, the prefix to fill up
                    rows = [row[0] for row in await bare.fetch(tenants[n], typed, None, RESULTS)]
                    if prefix is not None and len(rows) < RESULTS:
                        more = await bare.fetch(tenants[n], head, prefix, RESULTS + len(rows))
                        rows += [row[0] for row in more if row[0] not in rows][: RESULTS - len(rows)]
                    return rows
                params = [tenants[n], head, prefix]
                if bare is bare_contact_words and " " not in typed.strip() and len(typed.strip()) >= 3:
                    bare = bare_contact_token
                    params.append(f"%{typed.strip()}%")
                return [row[0] for row in await bare.fetch(*params)]

            found = dict.fromkeys((term[0] for term in terms), 0)
            for n in range(4 * len(terms)):  # both find the same rows, in the same order
                got, expected = await ours(n), await bare_run(n)
                assert got == expected, (kind, terms[n % len(terms)][0], got, expected)
                found[terms[n % len(terms)][0]] += len(got)
            print(f"  {kind} found, over 4 tenants a term: {found}")
            whole = Line(
                f"search {kind} ({len(terms)} terms)",
                await measure(samples, ours),
                await measure(samples, bare_run),
            )
            lines.append(whole)
            for i, term in enumerate(terms):  # the same samples, per term
                picked = range(i, samples, len(terms))
                lines.append(
                    Line(f"  {term[0]}", [whole.ours[n] for n in picked], [whole.bare[n] for n in picked])
                )
        return lines
    finally:
        await pg.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url", help="a PostgreSQL server URL, no database (default: a throwaway server)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the 100k/1M world (e.g. 0.05)")
    parser.add_argument("--samples", type=int, default=700, help="measured calls a line")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
