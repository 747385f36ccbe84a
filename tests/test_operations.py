"""Health, readiness and metrics endpoints, and the `parley` command line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from parley.auth import authenticate_token
from parley.db import Database
from parley.settings import Settings
from tests.conftest import free_port

PARLEY = [sys.executable, "-m", "parley"]


async def test_health_readiness_and_metrics(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], db: Database, settings: Settings
) -> None:
    client = await aiohttp_client(create_app(settings))
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["database"] == db.dialect
    await client.post("/webhooks/12345", data={"From": "+1"})
    metrics = await (await client.get("/metrics")).text()
    assert 'parley_webhooks_total{channel="unknown",outcome="no_inbox"}' in metrics
    assert "parley_http_request_seconds_bucket" in metrics


async def test_readiness_fails_when_the_database_is_gone(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-dir" / "parley.db"
    settings = Settings(database_url=f"sqlite+aiosqlite:///{missing}", data_dir=tmp_path, secret_key="k")
    client = await aiohttp_client(create_app(settings))
    response = await client.get("/readyz")
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "not_ready"


@pytest.mark.parametrize(
    "args", [[], ["serve"], ["migrate"], ["worker"], ["beat"], ["admin", "create"], ["token", "create"]]
)
def test_every_command_has_help(args: list[str]) -> None:
    result = subprocess.run([*PARLEY, *args, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


async def test_admin_and_token_commands_create_a_working_token(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "PARLEY_DATABASE_URL": database_url, "PARLEY_DATA_DIR": str(tmp_path)}

    def parley(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PARLEY, *args], capture_output=True, text=True, env=env, check=False)

    created = await asyncio.to_thread(
        parley,
        "admin",
        "create",
        "--email",
        "Ada@Example.com",
        "--password",
        "long enough",
        "--tenant",
        "acme",
    )
    assert created.returncode == 0, created.stderr
    again = await asyncio.to_thread(
        parley, "admin", "create", "--email", "ada@example.com", "--password", "whatever1"
    )
    assert again.returncode != 0 and "already exists" in again.stderr
    issued = await asyncio.to_thread(parley, "token", "create", "--email", "ada@example.com")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    db = Database(database_url)
    try:
        async with db.transaction() as session:
            principal = await authenticate_token(session, token)
            forged = await authenticate_token(session, token[:-2] + "xx")
    finally:
        await db.dispose()
    assert principal is not None and principal.role == "admin"
    assert forged is None
    unknown = await asyncio.to_thread(parley, "token", "create", "--email", "nobody@example.com")
    assert unknown.returncode != 0 and "no user" in unknown.stderr


async def test_serve_starts_on_the_embedded_defaults(tmp_path: Path) -> None:
    """`parley serve` with no configuration: an SQLite file and a key file in the working directory."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    process = await asyncio.create_subprocess_exec(
        *PARLEY,
        "serve",
        "--port",
        str(port),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                        body = await response.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("parley serve did not come up")
        assert body == {"status": "ready", "database": "sqlite"}
        assert (tmp_path / "parley.db").exists()
        assert (tmp_path / "parley-secret.key").stat().st_mode & 0o077 == 0  # private to its owner
    finally:
        process.terminate()
        await process.wait()
