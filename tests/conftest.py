"""Shared fixtures: every database test runs on SQLite and on a real PostgreSQL.

PostgreSQL comes from `PARLEY_TEST_DATABASE_URL` when set (a server URL; each test gets a fresh
database on it), otherwise from a throwaway server that pytest-postgresql's executor starts from
the local binaries. Redis likewise: `PARLEY_TEST_REDIS_URL`, else pytest-redis starts one.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from pytest_postgresql.executors.proc import PostgreSQLExecutor
from pytest_redis import factories as redis_factories
from sqlalchemy import select
from sqlalchemy.engine import make_url

from inbox.models import Inbox, Message
from parley.auth import create_tenant_admin, issue_token
from parley.crypto import SecretBox
from parley.db import Database
from parley.migrate import upgrade
from parley.models import Role
from parley.settings import Settings, normalise_database_url

pytest_plugins = ["tests.fakes.twilio_api"]

SECRET_KEY = "test-secret-key-not-for-production"
PG_CTL = str(Path(__file__).parent / "support" / "pg_ctl")

redis_proc = redis_factories.redis_proc(port=None)

# What the dispatcher's handlers write in reaction to an inbound message (routing queues it, scoring
# sets its priority, the CRM moves the contact's lifecycle), at a moment that depends on timing:
# tests about what the pipeline itself wrote leave these out.
FOLLOW_UP_TOPICS = frozenset(
    {"conversation.queued", "conversation.assigned", "conversation.updated", "contact.lifecycle_changed"}
)


def free_port() -> int:
    """A port to listen on later. Chosen below the kernel's ephemeral range (32768 and up), which
    outgoing connections draw from: a port the kernel handed out as free could be taken by one of
    them before the server under test binds it."""
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


def postgres_bindir() -> str:
    """Where the PostgreSQL server binaries are: Debian keeps them out of PATH, per version."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if candidates:
        return str(candidates[-1].parent)
    found = shutil.which("pg_ctl")
    if found is None:
        pytest.fail("no PostgreSQL binaries: run scripts/test-deps.sh or set PARLEY_TEST_DATABASE_URL")
    return str(Path(found).resolve().parent)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server URL (no database part) for the whole session."""
    configured = os.environ.get("PARLEY_TEST_DATABASE_URL")
    if configured:
        yield normalise_database_url(configured)
        return
    os.environ["PARLEY_PG_BINDIR"] = postgres_bindir()
    base = Path(tempfile.mkdtemp(prefix="parley-pg-"))
    base.chmod(0o777)  # the server may run as the postgres user (see tests/support/pg_ctl)
    port = free_port()
    executor = PostgreSQLExecutor(
        executable=PG_CTL,
        host="127.0.0.1",
        port=port,
        datadir=str(base / "data"),
        unixsocketdir=str(base),
        logfile=str(base / "postgresql.log"),
        startparams="-w",
        dbname="parley",
        postgres_options=(
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        ),
    )
    executor.start()
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}"
    finally:
        executor.stop()
        shutil.rmtree(base, ignore_errors=True)


async def _connect_when_ready(dsn: str, timeout: float = 60.0) -> asyncpg.Connection:
    """Connect, waiting while a just-started server still answers "the database system is starting up"."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await asyncpg.connect(dsn)
        except (asyncpg.CannotConnectNowError, ConnectionError, OSError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database URL: an SQLite file, or a new database on the test server."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'parley.db'}"
        return
    server = make_url(request.getfixturevalue("postgres_server"))
    name = f"parley_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = server.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    conn = await _connect_when_ready(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield server.set(database=name).render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def public_port() -> int:
    """The port the app under test listens on, known before it starts (for callback URLs)."""
    return free_port()


@pytest.fixture
def settings(database_url: str, tmp_path: Path, public_port: int) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path,
        secret_key=SECRET_KEY,
        public_url=f"http://127.0.0.1:{public_port}",
    )


@pytest_asyncio.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """The migrated test database."""
    database = Database(settings.database_url)
    await upgrade(database.engine)
    yield database
    await database.dispose()


@dataclass(frozen=True, slots=True)
class TenantAccess:
    tenant_id: int
    user_id: int
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def make_tenant(
    db: Database, name: str, *, role: Role = Role.ADMIN, email: str | None = None
) -> TenantAccess:
    """A tenant with one user of `role` and an API token for them."""
    async with db.transaction() as session:
        user = await create_tenant_admin(
            session,
            email=email or f"{role}@{name}.example.com",
            password="correct horse",
            tenant_name=name,
            role=role,
        )
        token = await issue_token(session, user)
    return TenantAccess(user.tenant_id, user.id, token)


async def make_twilio_inbox(
    db: Database, tenant_id: int, api_base_url: str, account_sid: str, auth_token: str
) -> int:
    """A Twilio SMS inbox pointed at a (fake) Twilio API."""
    async with db.transaction() as session:
        inbox = Inbox(
            tenant_id=tenant_id,
            name="Support line",
            channel="twilio_sms",
            settings={
                "account_sid": account_sid,
                "phone_number": "+15017122661",
                "api_base_url": api_base_url,
            },
            secrets_encrypted=SecretBox(SECRET_KEY).seal({"auth_token": auth_token}),
        )
        session.add(inbox)
        await session.flush()
        return inbox.id


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """A Redis URL: `PARLEY_TEST_REDIS_URL`, or a throwaway server started by pytest-redis."""
    configured = os.environ.get("PARLEY_TEST_REDIS_URL")
    if configured:
        return configured
    proc = request.getfixturevalue("redis_proc")
    return f"redis://{proc.host}:{proc.port}/0"


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 15.0) -> None:
    """Wait until `check()`, plain or awaitable, is true: dispatchers and fakes work in the background."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        outcome = check()
        if await outcome if inspect.isawaitable(outcome) else outcome:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def message_row(db: Database, message_id: int) -> Message:
    async with db.sessionmaker() as session:
        return (await session.execute(select(Message).where(Message.id == message_id))).scalar_one()
