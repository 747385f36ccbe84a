"""Live fan-out: N connected agent WebSockets receiving a new inbound message, against a bare broadcast.

A real `parley serve` (its own subprocess, uvloop, in-process outbox dispatcher and LocalHub; with
`--redis-url`, a RedisHub and a `parley worker` subprocess that dispatches, as deployed at scale)
gets N authenticated `/live` sockets from this process. Each round commits one inbound SMS through
the signed Twilio webhook; every socket's `message.received` frame is timed from the moment the
webhook was sent. The baseline, measured in the same run, is a bare aiohttp app holding the same
number of WebSockets that broadcasts a frame of the same size when it receives the same form POST.
Memory per connection is the server's RSS growth while the sockets open, divided by N.

    python3 bench/fanout.py [--connections 2000] [--messages 20] [--redis-url redis://127.0.0.1:6379/0]

Loopback only, bounded (each round times out), stops by itself. See bench/README.md.
Exit status: 0, or 1 if a socket missed a message or a connection failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import aiohttp
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SCRIPT = Path(__file__).resolve()
FIXTURE = SCRIPT.parent.parent / "tests" / "fixtures" / "twilio_sms" / "inbound__sms.txt"
START_TIMEOUT = 60.0
ROUND_TIMEOUT = 30.0
CONNECT_CONCURRENCY = 50
INBOX_NUMBER = "+15017122661"
SENDER = "+14155550100"


# --- measurements ---------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


@dataclass
class Result:
    name: str
    connections: int
    connect_seconds: float
    rss_before: int
    rss_after: int
    latencies: list[float] = field(default_factory=list)  # seconds, all sockets, all rounds
    missed: int = 0
    frame_bytes: int = 0

    @property
    def per_connection(self) -> float:
        return (self.rss_after - self.rss_before) / max(self.connections, 1)

    def line(self) -> str:
        ms = sorted(x * 1000 for x in self.latencies)
        return (
            f"{self.name:<9} {self.connections:>6} {self.connect_seconds:>8.1f}s "
            f"{self.per_connection / 1024:>8.1f} KiB "
            f"{percentile(ms, 0.5):>9.1f} {percentile(ms, 0.99):>9.1f} "
            f"{(ms[-1] if ms else float('nan')):>9.1f} {self.missed:>7}"
        )


class Sockets:
    """N client sockets, each timing the frames that carry `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.readers: list[asyncio.Task[None]] = []
        self.arrivals: list[float] = []
        self.expected = 0
        self.all_arrived = asyncio.Event()

    async def open(
        self,
        session: aiohttp.ClientSession,
        url: str,
        count: int,
        headers_for: Callable[[int], Mapping[str, str]],
        first_frame: str | None,
    ) -> None:
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(i: int) -> None:
            async with gate:
                ws = await session.ws_connect(url, headers=headers_for(i), heartbeat=None, autoping=True)
                if first_frame is not None:  # the server caught up and is live
                    while first_frame not in (await ws.receive(timeout=60)).data:
                        pass
                self.sockets.append(ws)
                self.readers.append(asyncio.create_task(self._read(ws)))

        await asyncio.gather(*(one(i) for i in range(count)))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT and self.marker in message.data:
                self.arrivals.append(time.perf_counter())
                if len(self.arrivals) >= self.expected:
                    self.all_arrived.set()

    async def round(self, send: Callable[[], Awaitable[None]]) -> tuple[list[float], int]:
        """Send once; the latency of every socket's frame, and how many sockets missed it."""
        self.arrivals = []
        self.expected = len(self.sockets)
        self.all_arrived.clear()
        started = time.perf_counter()
        await send()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_arrived.wait(), ROUND_TIMEOUT)
        return [t - started for t in self.arrivals], self.expected - len(self.arrivals)

    async def close(self) -> None:
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)


# --- servers --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(
        self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path, port: int = 0
    ) -> None:
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

    async def wait_ready(self, session: aiohttp.ClientSession, path: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited:\n{self.log_path.read_text(errors='replace')[-3000:]}"
                )
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(self.base_url + path) as response:
                    if response.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.name} not ready:\n{self.log_path.read_text(errors='replace')[-3000:]}"
                )
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


def server_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update(extra)
    return env


def _serve_baseline(port: int) -> None:
    """The baseline: WebSockets at /ws; POST /broadcast parses the form and sends its frame to all."""
    from aiohttp import web

    sockets: set[web.WebSocketResponse] = set()

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=25.0, compress=False)
        await ws.prepare(request)
        sockets.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            sockets.discard(ws)
        return ws

    async def broadcast(request: web.Request) -> web.Response:
        form = await request.post()
        frame = str(form["frame"])
        for ws in list(sockets):
            with contextlib.suppress(ConnectionError):
                await ws.send_str(frame)
        return web.Response(text="ok")

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    app.router.add_post("/broadcast", broadcast)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host="127.0.0.1", port=port, loop=uvloop.new_event_loop(), access_log=None, print=None)


async def setup_parley(
    database_url: str, secret_key: str, auth_token: str, agents: int
) -> tuple[int, list[str]]:
    """A tenant, a Twilio SMS inbox and `agents` agents with API tokens, written with Parley's own code."""
    from inbox.models import Inbox
    from parley.auth import create_tenant_admin, issue_token
    from parley.crypto import SecretBox
    from parley.db import Database
    from parley.models import Role
    from parley.settings import normalise_database_url

    db = Database(normalise_database_url(database_url), pool_size=1)
    try:
        async with db.transaction() as session:
            admin = await create_tenant_admin(
                session, email="admin@bench.example.com", password="correct horse", tenant_name="bench"
            )
            inbox = Inbox(
                tenant_id=admin.tenant_id,
                name="Bench SMS",
                channel="twilio_sms",
                settings={
                    "account_sid": "AC" + "0123456789abcdef" * 2,
                    "phone_number": INBOX_NUMBER,
                    "api_base_url": "http://127.0.0.1:9",  # never called: nothing is sent out
                },
                secrets_encrypted=SecretBox(secret_key).seal({"auth_token": auth_token}),
            )
            session.add(inbox)
            tokens = []
            for i in range(agents):
                user = await create_tenant_admin(
                    session,
                    email=f"agent{i}@bench.example.com",
                    password="correct horse",
                    tenant_name="bench",
                    role=Role.AGENT,
                )
                tokens.append(await issue_token(session, user))
            await session.flush()
            return int(inbox.id), tokens
    finally:
        await db.dispose()


def signed_webhook(url: str, auth_token: str, n: int) -> tuple[bytes, dict[str, str]]:
    from twilio.request_validator import RequestValidator

    sid = f"SM{secrets.token_hex(16)}"
    params = dict(parse_qsl(FIXTURE.read_text().strip(), keep_blank_values=True))
    params.update(
        MessageSid=sid,
        SmsSid=sid,
        SmsMessageSid=sid,
        From=SENDER,
        To=INBOX_NUMBER,
        Body=f"Is my order on its way? ({n})",
    )
    signature = RequestValidator(auth_token).compute_signature(url, params)
    return urlencode(params).encode(), {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": signature,
    }


# --- the two systems ------------------------------------------------------------------------------


async def bench_parley(args: argparse.Namespace, log_dir: Path) -> Result:
    secret_key = secrets.token_urlsafe(32)
    auth_token = secrets.token_hex(16)
    port = free_port()
    database_url = args.database_url or f"sqlite:///{log_dir / 'parley.db'}"
    env = server_env(
        {
            "PARLEY_DATABASE_URL": database_url,
            "PARLEY_DATA_DIR": str(log_dir / "parley-data"),
            "PARLEY_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "PARLEY_SECRET_KEY": secret_key,
            "PARLEY_LOG_LEVEL": "WARNING",
        }
    )
    if args.redis_url:
        env["PARLEY_REDIS_URL"] = args.redis_url
    parley = shutil.which("parley") or "parley"
    server = Server(
        "parley", [parley, "serve", "--host", "127.0.0.1", "--port", str(port)], env, log_dir, port
    )
    worker: Server | None = None
    sockets = Sockets('"message.received"')
    try:
        async with _client() as session:
            await server.wait_ready(session, "/readyz")  # migrated by now
            inbox_id, tokens = await setup_parley(database_url, secret_key, auth_token, args.agents)
            if args.redis_url:  # with Redis the gateway does not dispatch: a worker does
                worker = Server("worker", [parley, "worker", "--concurrency", "1"], env, log_dir)
            url = f"{server.base_url}/webhooks/{inbox_id}"
            counter = iter(range(10**9))

            async def send() -> None:
                body, headers = signed_webhook(url, auth_token, next(counter))
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status >= 300:
                        raise RuntimeError(f"webhook answered {response.status}")

            await asyncio.sleep(1.0)
            before = rss_bytes(server.process.pid)
            started = time.perf_counter()
            await sockets.open(
                session,
                f"{server.base_url}/live",
                args.connections,
                lambda i: {"Authorization": f"Bearer {tokens[i % len(tokens)]}"},
                '"ready"',
            )
            connect_seconds = time.perf_counter() - started
            await asyncio.sleep(2.0)
            result = Result(
                "parley", len(sockets.sockets), connect_seconds, before, rss_bytes(server.process.pid)
            )
            await _rounds(sockets, send, args, result)
            result.frame_bytes = len(
                json.dumps(
                    {"type": "event", "id": 123456, "topic": "message.received",
                     "payload": {"conversation_id": 1, "inbox_id": 1, "message_id": 123456, "contact_id": 1}},
                    separators=(",", ":"),
                )
            )  # fmt: skip
            await sockets.close()
    finally:
        if worker is not None:
            worker.stop()
        server.stop()
    return result


async def bench_baseline(args: argparse.Namespace, log_dir: Path, frame_bytes: int) -> Result:
    port = free_port()
    argv = [sys.executable, str(SCRIPT), "--serve-baseline", "--port", str(port)]
    server = Server("baseline", argv, server_env({}), log_dir, port)
    frame = json.dumps({"type": "event", "topic": "message.received", "pad": ""})
    frame = frame.replace('"pad": ""', '"pad": "' + "x" * max(0, frame_bytes - len(frame)) + '"')
    sockets = Sockets('"message.received"')
    try:
        async with _client() as session:
            await server.wait_ready(session, "/readyz")

            async def send() -> None:
                body = urlencode({"From": SENDER, "To": INBOX_NUMBER, "frame": frame}).encode()
                headers = {"Content-Type": "application/x-www-form-urlencoded"}
                async with session.post(
                    f"{server.base_url}/broadcast", data=body, headers=headers
                ) as response:
                    await response.read()

            await asyncio.sleep(1.0)
            before = rss_bytes(server.process.pid)
            started = time.perf_counter()
            await sockets.open(session, f"{server.base_url}/ws", args.connections, lambda i: {}, None)
            connect_seconds = time.perf_counter() - started
            await asyncio.sleep(2.0)
            result = Result(
                "baseline", len(sockets.sockets), connect_seconds, before, rss_bytes(server.process.pid)
            )
            await _rounds(sockets, send, args, result)
            await sockets.close()
    finally:
        server.stop()
    return result


async def _rounds(
    sockets: Sockets, send: Callable[[], Awaitable[None]], args: argparse.Namespace, result: Result
) -> None:
    for n in range(args.warmup + args.messages):
        latencies, missed = await sockets.round(send)
        if n >= args.warmup:
            result.latencies.extend(latencies)
            result.missed += missed
        await asyncio.sleep(0.2)  # let the server settle between messages (not timed)


def _client() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))  # the servers inherit it
        if target < needed:
            raise SystemExit(f"open-file limit {hard} is below the {needed} this run needs")


async def main(args: argparse.Namespace) -> int:
    raise_fd_limit(2 * args.connections + 512)
    log_dir = Path(tempfile.mkdtemp(prefix="parley-fanout-"))
    print(
        f"{args.connections} sockets, {args.messages} messages (+{args.warmup} warm-up), "
        f"hub: {'Redis ' + args.redis_url if args.redis_url else 'in-process'}; logs in {log_dir}",
        flush=True,
    )
    try:
        parley = await bench_parley(args, log_dir)
        baseline = None if args.skip_baseline else await bench_baseline(args, log_dir, parley.frame_bytes)
    except BaseException:
        print(f"failed; server logs kept in {log_dir}", file=sys.stderr)
        raise
    print()
    print("system    sockets  connect   mem/conn     p50 ms    p99 ms    max ms  missed")
    for result in (baseline, parley):
        if result is not None:
            print(result.line())
    if baseline is not None:
        p50 = percentile(sorted(parley.latencies), 0.5) / percentile(sorted(baseline.latencies), 0.5)
        p99 = percentile(sorted(parley.latencies), 0.99) / percentile(sorted(baseline.latencies), 0.99)
        memory = (
            parley.per_connection / baseline.per_connection if baseline.per_connection > 0 else float("nan")
        )
        print(
            f"\nratio parley / baseline: p50 latency {p50:.2f}x, p99 latency {p99:.2f}x, "
            f"memory a connection {memory:.2f}x"
        )
    shutil.rmtree(log_dir, ignore_errors=True)
    failed = parley.missed or parley.connections < args.connections
    return 1 if failed else 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20, help="measured messages")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--agents", type=int, default=100, help="distinct agents the sockets belong to")
    parser.add_argument("--database-url", default=None, help="default: an SQLite file in a temp dir")
    parser.add_argument("--redis-url", default=None, help="RedisHub and a `parley worker` dispatching")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    if arguments.serve_baseline:
        _serve_baseline(arguments.port)
    else:
        sys.exit(uvloop.run(main(arguments)))
