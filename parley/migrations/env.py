"""Alembic environment: one migration history for every package's models, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

import crm_core.import_models
import crm_core.models
import gateway.outbound_webhooks.models
import inbox.models
import parley.audit
import parley.models
import routing.models
from parley.db import Base
from parley.migrate import include_name

# Every table must be known to autogenerate.
_ = (crm_core.models, inbox.models, parley.audit, parley.models, routing.models)
_webhooks_imports = (crm_core.import_models, gateway.outbound_webhooks.models)
target_metadata = Base.metadata
config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_run_async(config.get_main_option("sqlalchemy.url") or ""))
