"""The migration history builds exactly the schema the models describe, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from parley.db import Base, Database
from parley.migrate import alembic_config, current_revision, include_name, upgrade


async def test_migrations_match_the_models(db: Database) -> None:
    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"include_name": include_name})
        return list(compare_metadata(context, Base.metadata))

    async with db.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_upgrade_is_idempotent_and_records_the_head(db: Database) -> None:
    await upgrade(db.engine)  # a second run (serve migrates at every start) changes nothing
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None and head[:4].isdigit()
    assert await current_revision(db.engine) == head

    def tables(connection: Connection) -> set[str]:
        return set(inspect(connection).get_table_names())

    async with db.engine.connect() as conn:
        assert {
            "tenants",
            "users",
            "api_tokens",
            "inboxes",
            "contacts",
            "channel_identities",
            "consents",
            "conversations",
            "messages",
            "outbox_events",
        } <= await conn.run_sync(tables)


# Indexes on expressions, which the comparison with the models cannot see (SQLAlchemy does not
# reflect them), and which a SQLite table rebuild in a later migration would silently drop.
EXPRESSION_INDEXES = {"ix_conversations_list_newest"}


async def test_expression_indexes_survive_every_later_migration(db: Database) -> None:
    if db.is_sqlite:
        query = "SELECT name FROM sqlite_master WHERE type = 'index'"
    else:
        query = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    async with db.engine.connect() as conn:
        present = set((await conn.execute(text(query))).scalars())
    assert present >= EXPRESSION_INDEXES
