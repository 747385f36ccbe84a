"""The agents' UI in a real browser against a real `parley serve`.

`parley_server` starts the `parley serve` command in a subprocess on the test's database (SQLite by
default; a test asks for PostgreSQL with `@pytest.mark.parametrize("database_url", ["postgresql"],
indirect=True)`), exactly as a user runs it. Browsers are Debian's Chromium driven by Playwright.
Every page a test opens is watched: a Content-Security-Policy violation or an uncaught script error
fails the test. `screenshot(page, name)` keeps a picture under the git-ignored `artifacts/screenshots/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Error, Page, async_playwright

from parley.auth import create_tenant_admin
from parley.db import Database
from parley.models import Role
from tests.conftest import SECRET_KEY, free_port

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
PASSWORD = "correct horse battery"


def plain_url(database_url: str) -> str:
    """The URL as a user would write it in PARLEY_DATABASE_URL."""
    return database_url.replace("+asyncpg", "").replace("+aiosqlite", "")


@dataclass
class ParleyServer:
    """One `parley serve` process."""

    database_url: str
    data_dir: Path
    port: int = field(default_factory=free_port)
    env: Mapping[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.data_dir / f"serve-{self.port}.log"

    async def start(self, timeout: float = 60.0) -> None:
        env = {
            **os.environ,
            "PARLEY_DATABASE_URL": plain_url(self.database_url),
            "PARLEY_DATA_DIR": str(self.data_dir),
            "PARLEY_SECRET_KEY": SECRET_KEY,
            "PARLEY_PUBLIC_URL": self.url,
            **self.env,
        }
        log = self.log.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "parley", "serve", "--host", "127.0.0.1", "--port", str(self.port),
            env=env, stdout=log, stderr=log, cwd=self.data_dir,
        )  # fmt: skip
        log.close()
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(
                        f"parley serve exited ({self.process.returncode}):\n{self.log.read_text()}"
                    )
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"parley serve did not get ready:\n{self.log.read_text()}")
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 20)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@dataclass
class ParleyWorker:
    """One `parley worker --beat` process: with Redis configured, it dispatches the outbox events."""

    database_url: str
    data_dir: Path
    redis_url: str
    env: Mapping[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None

    @property
    def log(self) -> Path:
        return self.data_dir / "worker.log"

    async def start(self, timeout: float = 60.0) -> None:
        env = {
            **os.environ,
            "PARLEY_DATABASE_URL": plain_url(self.database_url),
            "PARLEY_DATA_DIR": str(self.data_dir),
            "PARLEY_SECRET_KEY": SECRET_KEY,
            "PARLEY_REDIS_URL": self.redis_url,
            **self.env,
        }
        log = self.log.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "parley", "worker", "--concurrency", "1", "--beat",
            env=env, stdout=log, stderr=log, cwd=self.data_dir,
        )  # fmt: skip
        log.close()
        deadline = asyncio.get_running_loop().time() + timeout
        while "ready." not in self.log.read_text(errors="replace"):
            if self.process.returncode is not None or asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"parley worker did not start:\n{self.log.read_text()}")
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


@pytest_asyncio.fixture
async def parley_server(db: Database, database_url: str, tmp_path: Path) -> AsyncIterator[ParleyServer]:
    """`parley serve` on the (already migrated) test database."""
    server = ParleyServer(database_url, tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@dataclass
class Agent:
    """A user who signs in through the browser."""

    email: str
    password: str
    user_id: int
    tenant_id: int


async def make_agent(
    db: Database, tenant: str, *, role: Role = Role.AGENT, email: str | None = None, name: str | None = None
) -> Agent:
    """A user (and, if new, their tenant) with the test password."""
    address = email or f"{role}@{tenant}.example.com"
    async with db.transaction() as session:
        user = await create_tenant_admin(
            session, email=address, password=PASSWORD, tenant_name=tenant, role=role
        )
        user.name = name
        return Agent(address, PASSWORD, user.id, user.tenant_id)


class PageWatch:
    """What went wrong on a page: CSP violations and script errors."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def attach(self, page: Page) -> None:
        page.on("console", lambda message: self._console(page, message))
        page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))

    def _console(self, page: Page, message: ConsoleMessage) -> None:
        text = message.text
        if "Content Security Policy" in text or "Content-Security-Policy" in text:
            self.problems.append(f"CSP violation on {page.url} ({message.location}): {text}")


@dataclass
class Browsing:
    browser: Browser
    watch: PageWatch
    contexts: list[BrowserContext] = field(default_factory=list)

    async def new_page(self, *, width: int = 1366, height: int = 768, time_zone: str | None = None) -> Page:
        context = await self.browser.new_context(
            viewport={"width": width, "height": height}, timezone_id=time_zone, locale="en-GB"
        )
        self.contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(15_000)
        self.watch.attach(page)
        return page

    async def signed_in(
        self, server: ParleyServer, agent: Agent, *, path: str = "/inbox", **kwargs: object
    ) -> Page:
        """A new browser window in which `agent` signed in through the sign-in form."""
        page = await self.new_page(**kwargs)  # type: ignore[arg-type]
        await sign_in(page, server, agent, path=path)
        return page


async def sign_in(page: Page, server: ParleyServer, agent: Agent, *, path: str = "/inbox") -> None:
    await page.goto(f"{server.url}/login?next={path}")
    await page.get_by_label("Email").fill(agent.email)
    await page.get_by_label("Password").fill(agent.password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{server.url}{path}*")


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: run scripts/test-deps.sh (Debian's chromium package)")
    return CHROMIUM


@pytest_asyncio.fixture
async def browsing(chromium: Path) -> AsyncIterator[Browsing]:
    """Headless Chromium; fails the test on any CSP violation or script error in its pages."""
    watch = PageWatch()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        browsing = Browsing(browser, watch)
        try:
            yield browsing
        finally:
            for context in browsing.contexts:
                with contextlib.suppress(Error):
                    await context.close()
            await browser.close()
    assert not watch.problems, "\n".join(watch.problems)


async def screenshot(page: Page, name: str, *, full_page: bool = False) -> Path:
    """Save a screenshot for reviewers under artifacts/screenshots/ (git-ignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    return path
