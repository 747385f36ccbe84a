"""The widget in a real browser: headless Chromium (Debian's) on a host page with a strict CSP.

The host page is served from one loopback port and the gateway from another, so the widget runs
cross-origin as on a customer's site; the page's Content-Security-Policy allows the gateway's
origin and nothing else (no inline script or style), and any violation fails the test.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page, WebSocketRoute, async_playwright, expect
from sqlalchemy import func, select

from channels.webchat import typing_topic
from crm_core.models import ChannelIdentity, Contact
from gateway.app import create_app
from gateway.keys import HUB
from inbox.models import Conversation, Message
from parley.db import Database
from parley.settings import Settings
from tests.conftest import TenantAccess, eventually, make_tenant, message_row
from tests.fakes.server import serve_on_loopback
from tests.test_webchat_end_to_end import IDENTITY_SECRET, make_webchat_inbox

CHROMIUM = Path("/usr/bin/chromium")
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

pytestmark = [
    # The database is covered on both backends by the protocol tests; the browser is what is new here.
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

MAX_UPLOAD = 4096


@dataclass
class HostSite:
    """The customer's web site: one page embedding the widget, served with a strict CSP."""

    origin: str = ""
    html: str = ""
    csp: str = ""

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.html, content_type="text/html", headers={"Content-Security-Policy": self.csp}
        )

    def embed(self, gateway_url: str, inbox_id: int, attributes: dict[str, str]) -> None:
        """The page: the script tag and nothing else; the CSP allows the gateway and nothing else."""
        extra = "".join(f' {name}="{value}"' for name, value in attributes.items())
        self.html = (
            "<!doctype html><html><head><meta charset=utf-8><title>Shop</title></head><body><h1>Our shop</h1>"
            f'<script src="{gateway_url}/widget.js" data-inbox="{inbox_id}"{extra}></script></body></html>'
        )
        ws_url = gateway_url.replace("http://", "ws://")
        self.csp = (
            f"default-src 'none'; script-src {gateway_url}; connect-src {gateway_url} {ws_url}; "
            f"img-src {gateway_url}; style-src 'none'; base-uri 'none'; form-action 'none'"
        )


@dataclass
class Setup:
    client: TestClient[Any, Any]
    db: Database
    tenant: TenantAccess
    gateway_url: str
    site: HostSite
    inbox_id: int
    browser: Browser
    csp_violations: list[str]

    async def open_page(self) -> Page:
        page = await self.browser.new_page()
        page.on("console", self._watch_console)
        await page.goto(f"{self.site.origin}/")
        return page

    def _watch_console(self, message: Any) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.csp_violations.append(message.text)

    async def agent_online(self) -> None:
        response = await self.client.put(
            "/api/v1/me/presence", data=json.dumps({"presence": "online"}), headers=self.tenant.headers
        )
        assert response.status == 200

    async def reply(self, conversation_id: int, body: str) -> int:
        response = await self.client.post(
            f"/api/v1/conversations/{conversation_id}/messages",
            data=json.dumps({"body": body}),
            headers=self.tenant.headers,
        )
        assert response.status == 201, await response.text()
        return int((await response.json())["id"])

    async def conversation(self) -> Conversation:
        async with self.db.sessionmaker() as session:
            return (await session.execute(select(Conversation))).scalar_one()

    async def count(self, model: Any) -> int:
        async with self.db.sessionmaker() as session:
            return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():  # noqa: ASYNC240 - once per test, before anything runs
        pytest.fail("no Chromium at /usr/bin/chromium: run scripts/test-deps.sh")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        await launched.close()


async def start(
    aiohttp_client: ClientFactory,
    db: Database,
    settings: Settings,
    port: int,
    browser: Browser,
    *,
    attributes: dict[str, str] | None = None,
    allow_site: bool = True,
    **inbox_settings: Any,
) -> AsyncIterator[Setup]:
    tenant = await make_tenant(db, "acme")
    client = await aiohttp_client(create_app(settings), server_kwargs={"port": port, "host": "127.0.0.1"})
    gateway_url = f"http://127.0.0.1:{port}"
    site = HostSite()
    site_app = web.Application()
    site_app.router.add_get("/", site.page)
    runner, site.origin = await serve_on_loopback(site_app)
    origins = [site.origin] if allow_site else ["https://elsewhere.example.com"]
    inbox_id = await make_webchat_inbox(
        client, tenant, origins, max_upload_bytes=MAX_UPLOAD, **inbox_settings
    )
    site.embed(gateway_url, inbox_id, attributes or {})
    try:
        yield Setup(client, db, tenant, gateway_url, site, inbox_id, browser, [])
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def setup(
    aiohttp_client: ClientFactory, db: Database, settings: Settings, public_port: int, browser: Browser
) -> AsyncIterator[Setup]:
    async for ready in start(aiohttp_client, db, settings, public_port, browser, pre_chat_form=True):
        yield ready
        assert ready.csp_violations == []


def part(page: Page, name: str) -> Any:
    return page.locator(f"[data-part={name}]")


async def test_a_visitor_chats_with_an_agent_across_a_reload(setup: Setup, tmp_path: Path) -> None:
    await setup.agent_online()
    page = await setup.open_page()
    await part(page, "launcher").click()
    await expect(part(page, "greeting")).to_have_text("Hi! Ask us anything.")
    await expect(part(page, "offline")).to_be_hidden()  # an agent is online

    # The pre-chat form comes first; the composer after it.
    await expect(part(page, "prechat")).to_be_visible()
    await expect(part(page, "composer")).to_be_hidden()
    await part(page, "prechat-name").fill("Ann Lee")
    await part(page, "prechat-email").fill("Ann@Example.com")
    await part(page, "prechat-submit").click()
    await expect(part(page, "composer")).to_be_visible()

    hostile = '<img src=x onerror="window.__owned=1"><b>bold?</b>'
    await part(page, "input").fill(hostile)
    await part(page, "send").click()
    first = part(page, "message").first
    await expect(first).to_have_text(hostile)
    await expect(first).to_have_attribute("data-pending", "false")  # stored: it has an id now
    assert await page.locator("[data-part=log] b, [data-part=log] img").count() == 0

    async def contact_saved() -> bool:
        async with setup.db.sessionmaker() as session:
            contact = (await session.execute(select(Contact))).scalar_one_or_none()
            return contact is not None and (contact.name, contact.email) == ("Ann Lee", "ann@example.com")

    await eventually(contact_saved)
    conversation = await setup.conversation()

    # The agent types, then answers; HTML from the agent is text too.
    response = await setup.client.post(
        f"/api/v1/conversations/{conversation.id}/typing",
        data=json.dumps({"typing": True}),
        headers=setup.tenant.headers,
    )
    assert response.status == 204
    await expect(part(page, "typing")).to_be_visible()
    reply_id = await setup.reply(conversation.id, "Hi Ann! <script>window.__owned=2</script>")
    reply = page.locator(f"[data-part=message][data-id='{reply_id}']")
    await expect(reply).to_have_text("Hi Ann! <script>window.__owned=2</script>")
    await expect(reply).to_have_attribute("data-direction", "outbound")
    await expect(part(page, "typing")).to_be_hidden()
    assert await page.evaluate("window.__owned") is None

    # The panel is open and the page visible: the widget reports the reply as read.
    async def read() -> bool:
        return (await message_row(setup.db, reply_id)).status == "read"

    await eventually(read)

    # The visitor typing is announced to agents on the hub (their screens are a later issue).
    async with setup.client.app[HUB].subscribe(typing_topic(setup.tenant.tenant_id)) as agents:
        await part(page, "input").fill("typing")
        seen = await asyncio.wait_for(agents.get(), 10)
    assert (seen["conversation_id"], seen["typing"]) == (conversation.id, True)
    await part(page, "input").fill("")

    # A small attachment.
    receipt = tmp_path / "receipt.png"
    receipt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    await part(page, "file").set_input_files(str(receipt))
    link = page.locator("[data-part=message] a[data-part=attachment]")
    await expect(link).to_have_text("receipt.png")
    href = await link.get_attribute("href")
    assert href is not None and re.fullmatch(rf"{setup.gateway_url}/media/\d+/[\w-]{{22}}", href)

    # Too big: refused with a clear message, nothing stored.
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (MAX_UPLOAD + 1))
    await part(page, "file").set_input_files(str(big))
    await expect(part(page, "error")).to_contain_text("too large")
    assert await setup.count(Message) == 3

    # Reload: the conversation is still there, from the server, once each.
    await page.reload()
    await part(page, "launcher").click()
    await expect(part(page, "message")).to_have_count(3)
    await expect(part(page, "message").nth(0)).to_have_text(hostile)
    await expect(part(page, "message").nth(1)).to_have_text("Hi Ann! <script>window.__owned=2</script>")
    await expect(part(page, "prechat")).to_be_hidden()  # given once
    await part(page, "input").fill("Still there?")
    await part(page, "send").click()
    await expect(part(page, "message")).to_have_count(4)

    async def four_messages_in_one_conversation() -> bool:
        async with setup.db.sessionmaker() as session:
            messages, conversations = (
                await session.execute(
                    select(func.count(), func.count(func.distinct(Message.conversation_id)))
                )
            ).one()
        return (messages, conversations) == (4, 1)

    await eventually(four_messages_in_one_conversation)
    await page.close()


async def test_with_nobody_online_the_widget_says_so_and_a_pre_chat_email_is_enough(setup: Setup) -> None:
    page = await setup.open_page()
    await part(page, "launcher").click()
    await expect(part(page, "offline")).to_be_visible()
    await expect(part(page, "offline-text")).to_have_text(
        "We're away right now. Leave your email and we'll reply there."
    )
    await expect(part(page, "offline-form")).to_be_visible()
    await part(page, "prechat-name").fill("Bob")
    await part(page, "prechat-email").fill("bob@example.com")
    await part(page, "prechat-submit").click()
    await expect(part(page, "offline-form")).to_be_hidden()  # the email is known now
    await part(page, "input").fill("Is the shop open on Sunday?")
    await part(page, "send").click()
    await expect(part(page, "message").first).to_have_attribute("data-pending", "false")
    await page.reload()
    await part(page, "launcher").click()
    await expect(part(page, "offline-text")).to_be_visible()
    await expect(part(page, "offline-form")).to_be_hidden()
    # An agent comes online: the open widget stops saying nobody is there.
    await setup.agent_online()
    await expect(part(page, "offline")).to_be_hidden()
    async with setup.db.sessionmaker() as session:
        kinds = sorted((await session.execute(select(ChannelIdentity.kind))).scalars())
    assert kinds == ["email", "web_visitor"]
    await page.close()


async def test_offline_email_prompt_links_to_the_existing_contact(
    aiohttp_client: ClientFactory, db: Database, settings: Settings, public_port: int, browser: Browser
) -> None:
    async for ready in start(aiohttp_client, db, settings, public_port, browser):
        async with db.transaction() as session:
            known = Contact(
                tenant_id=ready.tenant.tenant_id, name="Bob", email="bob@example.com", attributes={}
            )
            session.add(known)
            await session.flush()
            session.add(
                ChannelIdentity(
                    tenant_id=ready.tenant.tenant_id,
                    contact_id=known.id,
                    kind="email",
                    address="bob@example.com",
                )
            )
        page = await ready.open_page()
        await part(page, "launcher").click()
        await expect(part(page, "offline-form")).to_be_visible()
        await part(page, "input").fill("Is the shop open on Sunday?")
        await part(page, "send").click()
        await expect(part(page, "message").first).to_have_attribute("data-pending", "false")
        await part(page, "offline-email").fill("BOB@example.com")
        await part(page, "offline-submit").click()
        await expect(part(page, "offline-thanks")).to_be_visible()

        async def linked(ready: Setup = ready, owner: int = known.id) -> bool:
            return (await ready.conversation()).contact_id == owner

        await eventually(linked)
        assert await ready.count(ChannelIdentity) == 2  # Bob's email and the visitor, now Bob's
        assert ready.csp_violations == []
        await page.close()


async def test_a_forged_session_in_storage_is_dropped_for_a_new_one(setup: Setup) -> None:
    page = await setup.open_page()
    await part(page, "launcher").click()
    await expect(part(page, "greeting")).to_have_text("Hi! Ask us anything.")
    key = f"parley.webchat.{setup.inbox_id}"
    issued = json.loads(await page.evaluate(f"localStorage.getItem('{key}')"))["token"]
    forged = issued[:-4] + ("AAAA" if not issued.endswith("AAAA") else "BBBB")
    await page.evaluate(f"localStorage.setItem('{key}', JSON.stringify({{token: '{forged}'}}))")
    await page.reload()
    await part(page, "launcher").click()
    await expect(part(page, "greeting")).to_have_text("Hi! Ask us anything.")

    async def new_token() -> bool:
        stored = json.loads(await page.evaluate(f"localStorage.getItem('{key}')"))
        return bool(stored.get("token")) and stored["token"] not in (forged, issued)

    await eventually(new_token)
    await page.close()


async def test_a_wrong_identity_hash_on_the_page_gets_no_chat(
    aiohttp_client: ClientFactory, db: Database, settings: Settings, public_port: int, browser: Browser
) -> None:
    wrong = hmac.new(b"not-the-inbox-secret", b"user-42", hashlib.sha256).hexdigest()
    attributes = {"data-identifier": "user-42", "data-identifier-hash": wrong}
    async for ready in start(aiohttp_client, db, settings, public_port, browser, attributes=attributes):
        page = await ready.open_page()
        await part(page, "launcher").click()
        await expect(part(page, "error")).to_have_text("identifier_hash does not match the identifier")
        await expect(part(page, "greeting")).to_have_text("Chat with us")  # never welcomed
        assert await ready.count(ChannelIdentity) == 0
        await page.close()


async def test_a_correct_identity_hash_identifies_the_user(
    aiohttp_client: ClientFactory, db: Database, settings: Settings, public_port: int, browser: Browser
) -> None:
    right = hmac.new(IDENTITY_SECRET.encode(), b"user-42", hashlib.sha256).hexdigest()
    attributes = {"data-identifier": "user-42", "data-identifier-hash": right}
    async for ready in start(aiohttp_client, db, settings, public_port, browser, attributes=attributes):
        page = await ready.open_page()
        await part(page, "launcher").click()
        await part(page, "input").fill("Logged in")
        await part(page, "send").click()
        await expect(part(page, "message").first).to_have_attribute("data-pending", "false")
        async with db.sessionmaker() as session:
            address = (await session.execute(select(ChannelIdentity.address))).scalar_one()
        assert address == f"{ready.inbox_id}:u:user-42"
        await page.close()


async def test_a_site_the_inbox_does_not_allow_gets_no_chat(
    aiohttp_client: ClientFactory, db: Database, settings: Settings, public_port: int, browser: Browser
) -> None:
    async for ready in start(aiohttp_client, db, settings, public_port, browser, allow_site=False):
        page = await ready.open_page()
        refused: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def watch(message: Any, refused: asyncio.Future[str] = refused) -> None:
            if "403" in message.text and not refused.done():
                refused.set_result(message.text)

        page.on("console", watch)
        await part(page, "launcher").click()
        assert "403" in await asyncio.wait_for(refused, 10)
        await expect(part(page, "greeting")).to_have_text("Chat with us")
        assert await ready.count(ChannelIdentity) == 0
        await page.close()


async def test_after_a_dropped_connection_the_widget_catches_up_without_duplicates(setup: Setup) -> None:
    await setup.agent_online()
    page = await setup.browser.new_page()
    page.on("console", setup._watch_console)
    sockets: list[tuple[WebSocketRoute, WebSocketRoute]] = []
    hellos: list[dict[str, Any]] = []

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame["type"] == "hello":
                hellos.append(frame)
            server.send(message)

        ws.on_message(from_page)
        sockets.append((ws, server))

    await page.route_web_socket(re.compile(r".*/webchat/\d+/ws$"), route)
    await page.goto(f"{setup.site.origin}/")
    await part(page, "launcher").click()
    await part(page, "prechat-name").fill("Ann")
    await part(page, "prechat-email").fill("ann@example.com")
    await part(page, "prechat-submit").click()
    await part(page, "input").fill("Hello")
    await part(page, "send").click()
    await expect(part(page, "message").first).to_have_attribute("data-pending", "false")
    conversation = await setup.conversation()
    before = await setup.reply(conversation.id, "Hi, one moment")
    await expect(part(page, "message")).to_have_count(2)

    # The network drops; the agent answers meanwhile; the widget reconnects on its own.
    page_side, server_side = sockets[-1]
    await page_side.close(code=4000, reason="network lost")
    await server_side.close()
    missed = await setup.reply(conversation.id, "Found it: order 1234 ships today")
    await eventually(lambda: _sent(setup, missed))
    await expect(page.locator(f"[data-part=message][data-id='{missed}']")).to_have_text(
        "Found it: order 1234 ships today", timeout=15_000
    )
    assert len(sockets) == 2
    assert hellos[-1]["since"] == before  # it asked only for what came after the last message it had
    await expect(part(page, "message")).to_have_count(3)
    await page.close()


async def _sent(setup: Setup, message_id: int) -> bool:
    return (await message_row(setup.db, message_id)).status == "sent"
