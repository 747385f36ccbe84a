"""Contact CSV import: Parley's import of N rows against a bare executemany of the same contacts.

Generates a CSV as people send them (national and international phones, mixed-case emails, 5 %
of rows repeating an earlier contact's email, 2 % invalid), then, in the same run:

- parley: `crm_core.csv_import.ContactImporter` on the uploaded file: decode, sniff, validate each
  row (phonenumbers, email-validator), resolve existing identities, create/update contacts,
  identities and tags in batches, record progress and errors, write one outbox event per contact;
- baseline: the same rows already normalised, inserted into `contacts` and `channel_identities`
  with one executemany per table per batch of 500 (no validation, no resolution, no events).

    python3 bench/csv_import.py [--rows 50000] [--database-url postgresql+asyncpg://...]

The default database is an SQLite file in a temporary directory. Prints times and the ratio;
asserts nothing about times.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crm_core.csv_import import BATCH_ROWS, ContactImporter, preview
from crm_core.identities import match_key
from crm_core.import_models import ContactImport, ImportStatus
from crm_core.models import ChannelIdentity, Contact
from parley.db import Database, utcnow
from parley.migrate import upgrade
from parley.models import Tenant


def phone(i: int) -> tuple[str, str]:
    """As written in the file, and as E.164."""
    number = f"415{2_000_000 + i:07d}"
    e164 = f"+1{number}"
    return (f"({number[:3]}) {number[3:6]}-{number[6:]}" if i % 2 else e164), e164


def make_csv(rows: int) -> tuple[bytes, list[tuple[str, str, str]]]:
    lines = ["Name,Email,Phone,Tags"]
    clean: list[tuple[str, str, str]] = []
    for i in range(rows):
        if i % 50 == 49:
            lines.append(f"Broken {i},not-an-email,12,")
            continue
        j = i - 7 if i % 20 == 19 else i  # a repeat of an earlier contact
        written, e164 = phone(j)
        email = f"User{j}@Example{j % 100}.com"
        lines.append(f"Contact {i},{email},{written},{'vip' if i % 3 == 0 else ''}")
        if j == i:
            clean.append((f"Contact {i}", email.lower(), e164))
    return ("\n".join(lines) + "\n").encode(), clean


async def tenant(db: Database, name: str) -> int:
    async with db.transaction() as session:
        t = Tenant(name=name)
        session.add(t)
        await session.flush()
        return t.id


async def parley_import(db: Database, data: bytes) -> tuple[float, ContactImport]:
    tenant_id = await tenant(db, "parley")
    started = time.perf_counter()
    read = preview(data)
    async with db.transaction() as session:
        job = ContactImport(
            tenant_id=tenant_id, filename="bench.csv", content=read.text, encoding=read.encoding,
            delimiter=read.delimiter, header=read.header, total_rows=read.total_rows,
            mapping={"Name": "name", "Email": "email", "Phone": "phone", "Tags": "tags"},
            region="US", status=ImportStatus.QUEUED, next_row=0, created_count=0, updated_count=0,
            error_count=0, errors=[],
        )  # fmt: skip
        session.add(job)
    await ContactImporter(db, rows_per_run=read.total_rows).run(job.id, tenant_id)
    elapsed = time.perf_counter() - started
    async with db.sessionmaker() as session:
        done = await session.get(ContactImport, job.id)
    assert done is not None and done.status == ImportStatus.DONE
    return elapsed, done


async def baseline(db: Database, clean: list[tuple[str, str, str]]) -> float:
    tenant_id = await tenant(db, "baseline")
    started = time.perf_counter()
    for start in range(0, len(clean), BATCH_ROWS):
        batch = clean[start : start + BATCH_ROWS]
        now = utcnow()
        async with db.transaction() as session:
            ids = (
                (
                    await session.execute(
                        insert(Contact).returning(Contact.id, sort_by_parameter_order=True),
                        [
                            {
                                "tenant_id": tenant_id,
                                "name": n,
                                "email": e,
                                "phone": p,
                                "attributes": {},
                                "lifecycle_stage": "lead",
                                "score": 0.0,
                                "created_at": now,
                                "updated_at": now,
                            }
                            for n, e, p in batch
                        ],
                    )
                )
                .scalars()
                .all()
            )
            await session.execute(
                insert(ChannelIdentity),
                [
                    {
                        "tenant_id": tenant_id,
                        "contact_id": cid,
                        "kind": kind,
                        "address": address,
                        "match_key": match_key(kind, address),
                        "created_at": now,
                    }
                    for cid, (_, e, p) in zip(ids, batch, strict=True)
                    for kind, address in (("email", e), ("phone", p))
                ],
            )
    return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{tmp}/bench.db"
        db = Database(url)
        await upgrade(db.engine)
        data, clean = make_csv(args.rows)
        base = await baseline(db, clean)
        ours, job = await parley_import(db, data)
        await db.dispose()
    print(f"database: {url.split(':', 1)[0]}, {args.rows} rows ({len(data) / 1e6:.1f} MB)")
    counts = f"created {job.created_count}, updated {job.updated_count}, refused {job.error_count}"
    print(f"parley import:       {ours:7.2f} s  {args.rows / ours:8.0f} rows/s  ({counts})")
    print(f"baseline executemany:{base:7.2f} s  {len(clean) / base:8.0f} rows/s  ({len(clean)} contacts)")
    print(f"ratio parley/baseline: x{ours / base:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
