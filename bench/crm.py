"""CRM at scale on PostgreSQL: identity resolution for an inbound message, and contact search.

Generates a tenant with N contacts and 3 identities each (phone, email, WhatsApp user id) with
COPY into a throwaway database on a PostgreSQL server, then measures, in the same run:

- resolution: the pipeline's sender lookup (`gateway.pipeline._LOOKUP`: identity → contact, open
  conversation, duplicate check), against the bare indexed lookup
  `SELECT contact_id FROM channel_identities WHERE tenant_id, kind, address`;
- search: `GET /contacts?q=` as the API runs it (`gateway.api.contacts.search_contacts`: a phone in
  national format or a mixed-case email, normalised, through SQLAlchemy and the ORM), against the
  bare indexed join of identities and contacts for the already-normalised address; and a name
  substring search, which has no index to use (reported, not compared).

    python3 bench/crm.py [--contacts 1000000] [--samples 2000] [--server postgresql://postgres@127.0.0.1:5432]

Prints percentiles and ratios; asserts nothing about times. The database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crm_core.identities import match_key
from gateway.api.contacts import search_contacts
from gateway.api.schemas import ContactQuery
from gateway.pipeline import _LOOKUP
from parley.db import Database
from parley.migrate import upgrade

AREA_CODES = ("212", "415", "646", "718", "917", "303", "617", "312", "213", "206")
CHUNK = 100_000


def phone_of(i: int) -> str:
    return f"+1{AREA_CODES[i % 10]}{2_000_000 + i // 10:07d}"


def national(e164: str) -> str:
    return f"({e164[2:5]}) {e164[5:8]}-{e164[8:]}"


def email_of(i: int) -> str:
    return f"user{i}@company{i % 5000}.example"


def contact_rows(tenant_id: int, start: int, stop: int, now: datetime) -> Iterator[tuple[object, ...]]:
    for i in range(start, stop):
        yield (i, tenant_id, f"Contact {i}", email_of(i), phone_of(i), "{}", now, now, "lead", 0.0)


def identity_rows(tenant_id: int, start: int, stop: int, now: datetime) -> Iterator[tuple[object, ...]]:
    for i in range(start, stop):
        phone, email = phone_of(i), email_of(i)
        yield (3 * i, tenant_id, i, "phone", phone, now, match_key("phone", phone))
        yield (3 * i + 1, tenant_id, i, "email", email, now, match_key("email", email))
        yield (3 * i + 2, tenant_id, i, "whatsapp_user_id", f"US.{10**18 + i}", now, None)


async def generate(dsn: str, contacts: int) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        now = datetime.now(UTC)
        tenant_id = await conn.fetchval(
            "INSERT INTO tenants (name, created_at) VALUES ('bench', $1) RETURNING id", now
        )
        await conn.execute(
            "INSERT INTO crm_settings (tenant_id, default_region, mql_threshold, score_half_life_days, "
            "updated_at) VALUES ($1, 'US', 50, 30, $2)",
            tenant_id,
            now,
        )
        for start in range(1, contacts + 1, CHUNK):
            stop = min(start + CHUNK, contacts + 1)
            await conn.copy_records_to_table(
                "contacts",
                records=contact_rows(tenant_id, start, stop, now),
                columns=[
                    "id",
                    "tenant_id",
                    "name",
                    "email",
                    "phone",
                    "attributes",
                    "created_at",
                    "updated_at",
                    "lifecycle_stage",
                    "score",
                ],
            )
            await conn.copy_records_to_table(
                "channel_identities",
                records=identity_rows(tenant_id, start, stop, now),
                columns=["id", "tenant_id", "contact_id", "kind", "address", "created_at", "match_key"],
            )
            print(f"  {stop - 1:>9,} contacts, {3 * (stop - 1):>9,} identities", flush=True)
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('contacts', 'id'), (SELECT max(id) FROM contacts))"
        )
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence('channel_identities', 'id'), "
            "(SELECT max(id) FROM channel_identities))"
        )
        await conn.execute("VACUUM ANALYZE contacts")
        await conn.execute("VACUUM ANALYZE channel_identities")
        return int(tenant_id)
    finally:
        await conn.close()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def measure(samples: int, run: Callable[[int], Awaitable[object]]) -> list[float]:
    for n in range(min(50, samples)):  # warm-up: plans, caches, prepared statements
        await run(n)
    taken = []
    for n in range(samples):
        began = time.perf_counter()
        await run(n)
        taken.append(time.perf_counter() - began)
    return taken


def report(name: str, ours: list[float], bare: list[float] | None, q: float) -> None:
    label = f"p{int(q * 100)}"
    line = f"{name:<34} p50 {pct(ours, 0.5):7.3f} ms   {label} {pct(ours, q):7.3f} ms"
    if bare is not None:
        line += (
            f"   | bare p50 {pct(bare, 0.5):6.3f} ms  {label} {pct(bare, q):6.3f} ms"
            f"   | ratio p50 {pct(ours, 0.5) / pct(bare, 0.5):5.1f}x"
            f"  {label} {pct(ours, q) / pct(bare, q):5.1f}x"
        )
    print(line)


async def bench(server: str, contacts: int, samples: int, keep: bool) -> None:
    name = f"parley_bench_crm_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{server.replace('postgresql+asyncpg', 'postgresql')}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{server.replace('postgresql+asyncpg', 'postgresql')}/{name}"
    db = Database(f"postgresql+asyncpg://{dsn.split('://', 1)[1]}", pool_size=4)
    try:
        await upgrade(db.engine)
        began = time.perf_counter()
        print(f"generating {contacts:,} contacts and {3 * contacts:,} identities in {name}")
        tenant_id = await generate(dsn, contacts)
        print(f"generated and analysed in {time.perf_counter() - began:.0f} s")
        rng = random.Random(7)
        picks = [rng.randint(1, contacts) for _ in range(samples)]
        kinds = [
            ("phone", phone_of(i))
            if n % 3 == 0
            else ("email", email_of(i))
            if n % 3 == 1
            else ("whatsapp_user_id", f"US.{10**18 + i}")
            for n, i in enumerate(picks)
        ]

        pg = await asyncpg.connect(dsn)
        bare_lookup = await pg.prepare(
            "SELECT contact_id FROM channel_identities WHERE tenant_id = $1 AND kind = $2 AND address = $3"
        )
        bare_search = await pg.prepare(
            "SELECT c.* FROM contacts c JOIN channel_identities ci ON ci.contact_id = c.id "
            "WHERE ci.tenant_id = $1 AND ci.kind = $2 AND ci.address = $3"
        )

        async def resolve_ours(n: int) -> object:
            kind, address = kinds[n]
            async with db.engine.connect() as conn:
                params = {
                    "inbox_id": 1,
                    "pmid": f"SM{n}",
                    "tenant_id": tenant_id,
                    "kind": kind,
                    "address": address,
                }
                row = (await conn.execute(_LOOKUP, params)).one()
            assert row.contact_id == picks[n]
            return row

        async def resolve_bare(n: int) -> object:
            kind, address = kinds[n]
            return await bare_lookup.fetchval(tenant_id, kind, address)

        # What people type into the search box: national phone numbers, emails in any case.
        typed = [national(phone_of(i)) if n % 2 else email_of(i).upper() for n, i in enumerate(picks)]
        normal = [("phone", phone_of(i)) if n % 2 else ("email", email_of(i)) for n, i in enumerate(picks)]

        async def search_ours(n: int) -> object:
            async with db.sessionmaker() as session:
                rows, _ = await search_contacts(session, tenant_id, ContactQuery(q=typed[n], limit=20))
            assert [c.id for c in rows] == [picks[n]], (typed[n], [c.id for c in rows])
            return rows

        async def search_bare(n: int) -> object:
            return await bare_search.fetch(tenant_id, *normal[n])

        name_samples = max(10, samples // 50)

        async def search_name(n: int) -> object:
            async with db.sessionmaker() as session:
                rows, _ = await search_contacts(
                    session, tenant_id, ContactQuery(q=f"contact {picks[n]}", limit=20)
                )
            return rows

        resolution = (await measure(samples, resolve_ours), await measure(samples, resolve_bare))
        search = (await measure(samples, search_ours), await measure(samples, search_bare))
        by_name = await measure(name_samples, search_name)
        await pg.close()

        print()
        print(f"{contacts:,} contacts, {3 * contacts:,} identities, {samples} samples each (sequential)")
        report("identity resolution (inbound)", *resolution, q=0.99)
        report("contact search by phone/email", *search, q=0.95)
        report(f"contact search by name ({name_samples} samples)", by_name, None, q=0.95)
        print(
            json.dumps(
                {
                    "contacts": contacts,
                    "resolution_ms": {
                        "p50": pct(resolution[0], 0.5),
                        "p99": pct(resolution[0], 0.99),
                        "bare_p50": pct(resolution[1], 0.5),
                        "bare_p99": pct(resolution[1], 0.99),
                    },
                    "search_ms": {
                        "p95": pct(search[0], 0.95),
                        "bare_p95": pct(search[1], 0.95),
                        "p50": pct(search[0], 0.5),
                        "bare_p50": pct(search[1], 0.5),
                    },
                    "name_search_ms": {"p50": pct(by_name, 0.5), "p95": pct(by_name, 0.95)},
                    "mean_resolution_ms": statistics.fmean(resolution[0]) * 1000,
                }
            )
        )
    finally:
        await db.dispose()
        if not keep:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument(
        "--server", default="postgresql://postgres@127.0.0.1:5432", help="a server URL, no database"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    args = parser.parse_args()
    asyncio.run(bench(args.server.rstrip("/"), args.contacts, args.samples, args.keep))


if __name__ == "__main__":
    main()
