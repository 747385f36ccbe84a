"""Webhook ingest: a real `parley serve` against a bare aiohttp + asyncpg app, measured in the same run.

Both servers run as subprocesses on loopback and get the same signed Twilio inbound-SMS webhooks
from this process (the load generator) at a fixed concurrency: first a warm-up, then the measured
requests. The baseline parses the form and inserts one row in a transaction; Parley verifies the
signature, resolves the contact, finds or opens the conversation, stores the message and its
outbox events. Afterwards the stored rows are counted: a run that loses messages fails.

    python3 bench/ingest.py [--requests 5000] [--concurrency 64] [--database-url postgresql://...]

See bench/README.md for what the figures mean. Exit status: 0 targets held, 1 lost or failed
requests, 2 targets missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import asyncpg
import uvloop

# The repository before bench/: bench/routing.py must not stand in for the routing package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "twilio_sms" / "inbound__sms.txt"
PG_CTL = REPO / "tests" / "support" / "pg_ctl"

TARGET_RATIO = 0.3
TARGET_P99_MS = 100.0
PHASE_TIMEOUT = 180.0  # seconds for one warm-up or measured phase
START_TIMEOUT = 60.0
INBOX_NUMBER = "+15017122661"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
BODIES = (
    "Hi, is my order on its way?",
    "Can I change my delivery address?",
    "Thanks!",
    "What are your opening hours on Saturday?",
    "My package arrived damaged, what should I do?",
    "ok",
)

# Instrumentation of the Parley server, set only by this script (see `_serve_instrumented`).
PROFILE_ENV = "PARLEY_BENCH_PROFILE"
COUNT_ENV = "PARLEY_BENCH_COUNT_QUERIES"


# --- workload -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Webhook:
    params: dict[str, str]
    sender: str


def build_workload(count: int, senders: int, seed: int) -> list[Webhook]:
    """`count` inbound SMS like the Twilio fixture, each with its own MessageSid, from `senders` numbers."""
    template = dict(parse_qsl(FIXTURE.read_text().strip(), keep_blank_values=True))
    rng = random.Random(seed)
    numbers = [f"+1415555{i:04d}" for i in range(senders)]
    webhooks = []
    for _ in range(count):
        sid = f"SM{rng.getrandbits(128):032x}"
        sender = rng.choice(numbers)
        params = dict(template)
        params.update(
            MessageSid=sid,
            SmsSid=sid,
            SmsMessageSid=sid,
            From=sender,
            To=INBOX_NUMBER,
            Body=rng.choice(BODIES),
        )
        webhooks.append(Webhook(params, sender))
    return webhooks


def sign(webhooks: Sequence[Webhook], url: str, auth_token: str) -> list[tuple[bytes, dict[str, str]]]:
    """Form bodies and headers, with `X-Twilio-Signature` as Twilio computes it for `url`."""
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(auth_token)
    return [
        (
            urlencode(w.params).encode(),
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": validator.compute_signature(url, w.params),
            },
        )
        for w in webhooks
    ]


# --- load generator -------------------------------------------------------------------------------


@dataclass(slots=True)
class Phase:
    requests: int
    errors: int
    elapsed: float
    latencies: list[float]  # seconds, sorted
    client_cpu: float  # seconds of this process
    server_cpu: float  # seconds of the server process
    postgres_cpu: float  # seconds of all `postgres` processes on this machine
    machine_busy: float  # fraction of all cores busy
    first_errors: list[str]

    @property
    def rate(self) -> float:
        return (self.requests - self.errors) / self.elapsed

    def percentile(self, q: float) -> float:
        """Latency in milliseconds at quantile `q` (nearest rank)."""
        if not self.latencies:
            return float("nan")
        index = min(len(self.latencies) - 1, max(0, round(q * len(self.latencies)) - 1))
        return self.latencies[index] * 1000


async def run_load(
    session: aiohttp.ClientSession,
    url: str,
    requests: Sequence[tuple[bytes, dict[str, str]]],
    concurrency: int,
    server_pid: int,
) -> Phase:
    """POST every request, `concurrency` at a time, each worker keeping its connection alive."""
    pending = iter(requests)
    latencies: list[float] = []
    errors: list[str] = []

    async def worker() -> None:
        for body, headers in pending:  # one shared iterator: each request is sent once
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if not 200 <= response.status < 300:
                        errors.append(f"HTTP {response.status}")
            except (aiohttp.ClientError, TimeoutError) as e:
                errors.append(f"{type(e).__name__}: {e}")
            latencies.append(time.perf_counter() - started)

    client_before = _self_cpu()
    server_before = _process_cpu(server_pid)
    postgres_before = _postgres_cpu()
    machine_before = _machine_jiffies()
    started = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), PHASE_TIMEOUT)
    elapsed = time.perf_counter() - started
    busy, total = (after - before for after, before in zip(_machine_jiffies(), machine_before, strict=True))
    return Phase(
        requests=len(requests),
        errors=len(errors),
        elapsed=elapsed,
        latencies=sorted(latencies),
        client_cpu=_self_cpu() - client_before,
        server_cpu=_process_cpu(server_pid) - server_before,
        postgres_cpu=sum(cpu - postgres_before.get(pid, 0.0) for pid, cpu in _postgres_cpu().items()),
        machine_busy=busy / total if total else 0.0,
        first_errors=[f"{n}x {e}" for e, n in Counter(errors).most_common(3)],
    )


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _postgres_cpu() -> dict[int, float]:
    """CPU seconds of every process named `postgres` (the server and its backends), by pid."""
    cpu = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    cpu[int(entry.name)] = _process_cpu(int(entry.name))
    return cpu


def _process_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def machine_busy_now(seconds: float = 1.0) -> float:
    """The fraction of all cores busy over the next `seconds` (before the servers start: other work)."""
    before = _machine_jiffies()
    await asyncio.sleep(seconds)
    busy, total = (after - b for after, b in zip(_machine_jiffies(), before, strict=True))
    return busy / total if total else 0.0


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all cores since boot; (0, 0) where /proc/stat is missing."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


# --- PostgreSQL -----------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres_server(configured: str | None) -> Iterator[str]:
    """A PostgreSQL server URL (no database part): the configured one, or a throwaway server."""
    if configured:
        yield configured
        return
    from pytest_postgresql.executors.proc import PostgreSQLExecutor

    # tests/support/pg_ctl runs the pg_ctl it finds there (as the postgres user when we are root).
    os.environ.setdefault("PARLEY_PG_BINDIR", postgres_bindir())
    base = Path(tempfile.mkdtemp(prefix="parley-bench-pg-"))
    base.chmod(0o777)  # the server may run as the postgres user (see tests/support/pg_ctl)
    port = free_port()
    executor = PostgreSQLExecutor(
        executable=str(PG_CTL),
        host="127.0.0.1",
        port=port,
        datadir=str(base / "data"),
        unixsocketdir=str(base),
        logfile=str(base / "postgresql.log"),
        startparams="-w",
        dbname="postgres",
        postgres_options=(
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        ),
    )
    print(f"starting a throwaway PostgreSQL on 127.0.0.1:{port} (fsync off)…", flush=True)
    try:
        executor.start()
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        with contextlib.suppress(Exception):  # not started, or already gone
            executor.stop()
        shutil.rmtree(base, ignore_errors=True)


def postgres_bindir() -> str:
    """Where the PostgreSQL server binaries are: Debian keeps them out of PATH, per version."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    if candidates:
        return str(candidates[-1].parent)
    found = shutil.which("pg_ctl")
    if found is None:
        raise SystemExit("no PostgreSQL binaries: install postgresql or pass --database-url")
    return str(Path(found).resolve().parent)


def database_dsn(server_url: str, name: str) -> str:
    """A plain `postgresql://` DSN for database `name` on the server (for asyncpg and for Parley)."""
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    return url.set(drivername="postgresql", database=name).render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def fresh_database(server_url: str, prefix: str) -> AsyncIterator[str]:
    """Create a uniquely named database, yield its DSN, drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = database_dsn(server_url, "postgres")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield database_dsn(server_url, name)
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def server_facts(server_url: str) -> str:
    conn = await asyncpg.connect(database_dsn(server_url, "postgres"))
    try:
        version = await conn.fetchval("SHOW server_version")
        fsync = await conn.fetchval("SHOW fsync")
        sync_commit = await conn.fetchval("SHOW synchronous_commit")
    finally:
        await conn.close()
    return f"PostgreSQL {version} (fsync={fsync}, synchronous_commit={sync_commit})"


async def count_rows(dsn: str, table: str, where: str = "TRUE") -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}"))  # noqa: S608 - ours
    finally:
        await conn.close()


# --- servers under test ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server subprocess with its log; stopped with SIGINT (aiohttp's graceful shutdown)."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], port: int, log_dir: Path) -> None:
        self.name = name
        self.port = port
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            argv, env=dict(env), stdout=self._log, stderr=subprocess.STDOUT, cwd=log_dir
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, session: aiohttp.ClientSession, path: str = "/readyz") -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(self.base_url + path) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {START_TIMEOUT:.0f}s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def server_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without any PARLEY_* variable (no Redis, no Rasa), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(extra)
    return env


def _serve_baseline(dsn: str, port: int) -> None:
    """The baseline: parse the form, insert one row in a transaction, answer empty TwiML."""
    from aiohttp import web

    pool_key = web.AppKey("pool", asyncpg.Pool)

    async def database(app: web.Application) -> Any:
        pool = await asyncpg.create_pool(dsn, min_size=20, max_size=20)
        await pool.execute(
            "CREATE TABLE IF NOT EXISTS messages (id bigserial PRIMARY KEY, sender text NOT NULL,"
            " recipient text NOT NULL, body text NOT NULL, sid text NOT NULL)"
        )
        app[pool_key] = pool
        yield
        await pool.close()

    async def ingest(request: web.Request) -> web.Response:
        form = await request.post()
        async with request.app[pool_key].acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO messages (sender, recipient, body, sid) VALUES ($1, $2, $3, $4)",
                form["From"],
                form["To"],
                form["Body"],
                form["MessageSid"],
            )
        return web.Response(text=EMPTY_TWIML, content_type="text/xml")

    async def ready(request: web.Request) -> web.Response:
        await request.app[pool_key].execute("SELECT 1")
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.cleanup_ctx.append(database)
    app.router.add_post("/webhooks/{inbox_id}", ingest)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host="127.0.0.1", port=port, loop=uvloop.new_event_loop(), access_log=None, print=None)


def _serve_instrumented(port: int) -> None:
    """`parley serve` under cProfile and/or with SQL counting, toggled by SIGUSR1 (on) / SIGUSR2 (off).

    Only this benchmark starts it, through PARLEY_BENCH_PROFILE (a .prof path) and
    PARLEY_BENCH_COUNT_QUERIES (a .json path).
    """
    import cProfile

    from sqlalchemy import event
    from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    import gateway.app
    from parley.cli import main as parley_main

    profile_path = os.environ.get(PROFILE_ENV)
    count_path = os.environ.get(COUNT_ENV)
    profiler = cProfile.Profile() if profile_path else None
    counts: Counter[str] = Counter()
    state = {"on": False}

    def count(key: str) -> None:
        if state["on"]:
            counts[key] += 1

    if count_path:

        @event.listens_for(Engine, "before_cursor_execute")
        def _statement(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
            verb = statement.lstrip().split(None, 1)[0].upper()
            table = next((w for w in statement.split() if w.islower() and w.isidentifier()), "")
            count(f"statement: {verb} {table}".rstrip() + (" (executemany)" if many else ""))

        event.listen(Engine, "begin", lambda conn: count("transaction: BEGIN"))
        event.listen(Engine, "commit", lambda conn: count("transaction: COMMIT"))
        event.listen(Engine, "rollback", lambda conn: count("transaction: ROLLBACK"))
        event.listen(Pool, "connect", lambda conn, record: count("pool: new connection"))
        event.listen(Pool, "checkout", lambda conn, record, proxy: count("pool: checkout"))
        original_ping: Any = PGDialect_asyncpg.do_ping

        def do_ping(self: Any, dbapi_connection: Any) -> Any:
            count("pool: pre-ping")
            return original_ping(self, dbapi_connection)

        PGDialect_asyncpg.do_ping = do_ping  # type: ignore[method-assign]

    def start() -> None:
        counts.clear()
        state["on"] = True
        if profiler is not None:
            profiler.enable()

    def stop() -> None:
        if profiler is not None and profile_path:
            profiler.disable()
            profiler.dump_stats(profile_path)
        state["on"] = False
        if count_path:
            Path(count_path).write_text(json.dumps(counts))
        print("instrumentation written", flush=True)

    create_app = gateway.app.create_app

    def instrumented_app(*args: Any, **kwargs: Any) -> Any:
        app = create_app(*args, **kwargs)

        async def install(app: Any) -> None:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR1, start)
            loop.add_signal_handler(signal.SIGUSR2, stop)

        app.on_startup.append(install)
        return app

    gateway.app.create_app = instrumented_app  # `parley serve` imports it when it runs
    parley_main(["serve", "--host", "127.0.0.1", "--port", str(port)], standalone_mode=False)


# --- the two systems ------------------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    name: str
    phase: Phase
    stored: int
    expected: int
    notes: list[str]
    problems: list[str]  # anything but "all stored, exactly once": the run fails


async def bench_baseline(
    server_url: str, workload: Sequence[Webhook], warmup: int, concurrency: int, log_dir: Path
) -> Result:
    async with fresh_database(server_url, "parley_bench_baseline") as dsn:
        port = free_port()
        argv = [sys.executable, str(SCRIPT), "--serve-baseline", dsn, "--port", str(port)]
        server = Server("baseline", argv, server_env({}), port, log_dir)
        try:
            url = f"{server.base_url}/webhooks/1"
            requests = sign(workload, url, "baseline-does-not-check")
            async with _client(concurrency) as session:
                await server.wait_ready(session)
                phase = await _warm_then_measure(session, url, requests, warmup, concurrency, server)
        finally:
            server.stop()
        stored = await count_rows(dsn, "messages")
    return Result("baseline", phase, stored, len(workload), [], [])


async def bench_parley(
    server_url: str,
    workload: Sequence[Webhook],
    warmup: int,
    concurrency: int,
    log_dir: Path,
    *,
    profile: Path | None,
    count_queries: bool,
) -> Result:
    from parley.crypto import SecretBox

    secret_key = secrets.token_urlsafe(32)
    auth_token = secrets.token_hex(16)
    notes: list[str] = []
    problems: list[str] = []
    async with fresh_database(server_url, "parley_bench") as dsn:
        port = free_port()
        env = server_env(
            {
                "PARLEY_DATABASE_URL": dsn,
                "PARLEY_DATA_DIR": str(log_dir / "parley-data"),
                "PARLEY_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "PARLEY_SECRET_KEY": secret_key,
                "PARLEY_LOG_LEVEL": "WARNING",
            }
        )
        counts_path = log_dir / "parley-queries.json"
        instrumented = profile is not None or count_queries
        if profile is not None:
            env[PROFILE_ENV] = str(profile)
        if count_queries:
            env[COUNT_ENV] = str(counts_path)
        if instrumented:
            argv = [sys.executable, str(SCRIPT), "--serve-instrumented", "--port", str(port)]
        else:
            parley = shutil.which("parley") or "parley"
            argv = [parley, "serve", "--host", "127.0.0.1", "--port", str(port)]
        server = Server("parley", argv, env, port, log_dir)
        try:
            async with _client(concurrency) as session:
                await server.wait_ready(session)  # `parley serve` has migrated the database by now
                inbox_id = await create_inbox(dsn, SecretBox(secret_key), auth_token)
                url = f"{server.base_url}/webhooks/{inbox_id}"
                requests = sign(workload, url, auth_token)
                phase = await _warm_then_measure(
                    session, url, requests, warmup, concurrency, server, instrument=instrumented
                )
            if instrumented:
                await _wait_for_line(server, "instrumentation written")
        finally:
            server.stop()
        stored = await count_rows(dsn, "messages")
        contacts = await count_rows(dsn, "contacts")
        conversations = await count_rows(dsn, "conversations")
        received = await count_rows(dsn, "outbox_events", "topic = 'message.received'")
        senders = len({w.sender for w in workload})
        notes.append(
            f"contacts {contacts}, conversations {conversations} (distinct senders {senders});"
            f" message.received events {received}"
        )
        if contacts != senders or conversations != senders:
            problems.append("expected one contact and one open conversation per sender")
        if received != stored:
            problems.append("expected one message.received outbox event per stored message")
        if count_queries and counts_path.exists():
            notes.extend(_query_report(json.loads(counts_path.read_text()), len(workload) - warmup))
    if profile is not None:
        notes.extend(_profile_report(profile))
    return Result("parley", phase, stored, len(workload), notes, problems)


async def create_inbox(dsn: str, box: Any, auth_token: str) -> int:
    """A tenant and a Twilio SMS inbox, written with Parley's own code (as tests/conftest.py does)."""
    from inbox.models import Inbox
    from parley.auth import create_tenant_admin
    from parley.db import Database
    from parley.settings import normalise_database_url

    db = Database(normalise_database_url(dsn), pool_size=1)
    try:
        async with db.transaction() as session:
            user = await create_tenant_admin(
                session, email="admin@bench.example.com", password="correct horse", tenant_name="bench"
            )
            inbox = Inbox(
                tenant_id=user.tenant_id,
                name="Bench SMS",
                channel="twilio_sms",
                settings={
                    "account_sid": "AC" + "0123456789abcdef" * 2,
                    "phone_number": INBOX_NUMBER,
                    "api_base_url": "http://127.0.0.1:9",  # never called: the benchmark sends nothing out
                },
                secrets_encrypted=box.seal({"auth_token": auth_token}),
            )
            session.add(inbox)
            await session.flush()
            return int(inbox.id)
    finally:
        await db.dispose()


def _client(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60))


async def _warm_then_measure(
    session: aiohttp.ClientSession,
    url: str,
    requests: Sequence[tuple[bytes, dict[str, str]]],
    warmup: int,
    concurrency: int,
    server: Server,
    *,
    instrument: bool = False,
) -> Phase:
    warm = await run_load(session, url, requests[:warmup], concurrency, server.process.pid)
    if warm.errors:
        raise RuntimeError(
            f"{server.name}: {warm.errors} errors during warm-up ({warm.first_errors}):\n{server.log_tail()}"
        )
    if instrument:
        server.signal(signal.SIGUSR1)
        await asyncio.sleep(0.3)
    phase = await run_load(session, url, requests[warmup:], concurrency, server.process.pid)
    if instrument:
        server.signal(signal.SIGUSR2)
    return phase


async def _wait_for_line(server: Server, line: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while line not in server.log_tail(200):
        if time.monotonic() > deadline or server.process.poll() is not None:
            raise RuntimeError(f"{server.name} did not write its instrumentation:\n{server.log_tail()}")
        await asyncio.sleep(0.2)


def _query_report(counts: Mapping[str, int], requests: int) -> list[str]:
    lines = [f"database work per measured request ({requests} requests):"]
    for key, n in sorted(counts.items(), key=lambda kv: (kv[0].split(":")[0], -kv[1])):
        lines.append(f"  {n / requests:7.3f}  {key}")
    return lines


def _profile_report(path: Path, top: int = 25) -> list[str]:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(top)
    return [f"cProfile of the measured phase ({path}), top {top} by own time:", *out.getvalue().splitlines()]


# --- report ---------------------------------------------------------------------------------------


def report(results: Sequence[Result], concurrency: int) -> int:
    print()
    print(
        f"{'system':<10}{'requests':>10}{'errors':>8}{'msgs/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'stored':>14}"
    )
    for r in results:
        p = r.phase
        print(
            f"{r.name:<10}{p.requests:>10}{p.errors:>8}{p.rate:>10.0f}{p.percentile(0.50):>9.1f}"
            f"{p.percentile(0.99):>9.1f}{f'{r.stored}/{r.expected}':>14}"
        )
    print()
    for r in results:
        p = r.phase
        print(
            f"{r.name}: {p.elapsed:.2f}s at concurrency {concurrency};"
            f" CPU: server {p.server_cpu / p.elapsed:.0%} of a core"
            f" ({p.server_cpu / p.requests * 1e6:.0f} µs a request),"
            f" PostgreSQL {p.postgres_cpu / p.elapsed:.0%}, load generator {p.client_cpu / p.elapsed:.0%},"
            f" machine {p.machine_busy:.0%} of {os.cpu_count()} cores"
        )
        print(
            f"  latency ms: p90 {p.percentile(0.90):.1f}, p99.9 {p.percentile(0.999):.1f},"
            f" max {p.percentile(1.0):.1f}"
        )
        for error in p.first_errors:
            print(f"  error: {error}")
        for note in r.notes:
            print(f"  {note}")

    by_name = {r.name: r for r in results}
    status = 0
    for r in results:
        if r.stored != r.expected or r.phase.errors:
            r.problems.insert(0, f"answered {r.phase.errors} errors and stored {r.stored} of {r.expected}")
        for problem in r.problems:
            print(f"FAILED: {r.name}: {problem}")
            status = 1
    if "parley" in by_name and "baseline" in by_name:
        parley, baseline = by_name["parley"].phase, by_name["baseline"].phase
        ratio = parley.rate / baseline.rate
        p99 = parley.percentile(0.99)
        print()
        print(f"ratio (parley / baseline msgs/s) = {ratio:.2f}")
        ratio_ok, p99_ok = ratio >= TARGET_RATIO, p99 < TARGET_P99_MS
        print(
            f"targets: ratio >= {TARGET_RATIO}: {'held' if ratio_ok else 'MISSED'};"
            f" parley p99 < {TARGET_P99_MS:.0f} ms: {'held' if p99_ok else 'MISSED'} ({p99:.1f} ms)"
        )
        if status == 0 and not (ratio_ok and p99_ok):
            status = 2
    return status


async def bench(args: argparse.Namespace) -> int:
    configured = args.database_url or os.environ.get("PARLEY_BENCH_DATABASE_URL")
    workload = build_workload(args.warmup + args.requests, args.senders, args.seed)
    measured_senders = {w.sender for w in workload[args.warmup :]}
    new_in_measured = measured_senders - {w.sender for w in workload[: args.warmup]}
    idle = await machine_busy_now()
    if idle > 0.1:
        print(
            f"warning: other processes keep {idle:.0%} of the machine busy; expect low, noisy figures",
            flush=True,
        )
    with (
        postgres_server(configured) as server_url,
        tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp,
    ):
        log_dir = Path(tmp)
        print(
            f"{await server_facts(server_url)}; {os.cpu_count()} cores; {args.warmup} warm-up + "
            f"{args.requests} measured webhooks at concurrency {args.concurrency}, from {args.senders} "
            f"numbers ({len(new_in_measured)} first seen in the measured phase)",
            flush=True,
        )
        results = []
        if not args.skip_baseline:
            results.append(await bench_baseline(server_url, workload, args.warmup, args.concurrency, log_dir))
            print(f"baseline: {results[-1].phase.rate:.0f} msgs/s", flush=True)
        results.append(
            await bench_parley(
                server_url,
                workload,
                args.warmup,
                args.concurrency,
                log_dir,
                profile=args.profile.resolve() if args.profile else None,
                count_queries=args.count_queries,
            )
        )
        print(f"parley: {results[-1].phase.rate:.0f} msgs/s", flush=True)
    return report(results, args.concurrency)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=5000, help="measured webhooks per system")
    parser.add_argument("--warmup", type=int, default=500, help="webhooks sent first and not counted")
    parser.add_argument("--concurrency", type=int, default=64, help="connections (and requests) in flight")
    parser.add_argument("--senders", type=int, default=500, help="distinct sender phone numbers")
    parser.add_argument("--seed", type=int, default=1, help="seed of the workload's randomness")
    parser.add_argument(
        "--database-url",
        help="PostgreSQL server URL to create fresh databases on (default: $PARLEY_BENCH_DATABASE_URL, "
        "else a throwaway server)",
    )
    parser.add_argument(
        "--profile", type=Path, help="cProfile Parley's measured phase into this .prof file (slows it down)"
    )
    parser.add_argument(
        "--count-queries", action="store_true", help="count Parley's SQL statements and pool use per request"
    )
    parser.add_argument("--skip-baseline", action="store_true", help="measure Parley only (no ratio)")
    parser.add_argument("--serve-baseline", metavar="DSN", help=argparse.SUPPRESS)
    parser.add_argument("--serve-instrumented", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_baseline:
        _serve_baseline(args.serve_baseline, args.port)
        return
    if args.serve_instrumented:
        _serve_instrumented(args.port)
        return
    if args.requests < 1 or args.warmup < 0 or args.concurrency < 1 or args.senders < 1:
        parser.error("--requests, --concurrency and --senders must be positive, --warmup not negative")
    sys.exit(uvloop.run(bench(args)))


if __name__ == "__main__":
    main()
