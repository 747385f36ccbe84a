"""Signing in to the web UI: the form, sessions, lockout, CSRF, password reset by email, headers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import expect
from sqlalchemy import select
from yarl import URL

from parley.db import Database
from parley.models import Role, User, WebSession
from parley.sessions import MAX_FAILURES
from tests.conftest import free_port
from tests.support.smtp import SMTP_PASSWORD, SMTP_USER, Smarthost
from tests.ui.conftest import Browsing, ParleyServer, make_agent, screenshot

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def browser_like() -> aiohttp.ClientSession:
    """An HTTP client that keeps cookies like a browser does, also for 127.0.0.1."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def login_csrf(http: aiohttp.ClientSession, server: ParleyServer) -> str:
    async with http.get(f"{server.url}/login") as response:
        assert response.status == 200
    cookie = http.cookie_jar.filter_cookies(URL(server.url)).get("parley_login_csrf")
    assert cookie is not None
    return cookie.value


async def sign_in_http(http: aiohttp.ClientSession, server: ParleyServer, email: str, password: str) -> int:
    token = await login_csrf(http, server)
    async with http.post(
        f"{server.url}/login",
        data={"email": email, "password": password, "login_csrf": token, "next": "/account"},
        allow_redirects=False,
    ) as response:
        return response.status


def csrf_of(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', html)
    assert found is not None
    return found.group(1)


async def test_an_agent_signs_in_and_out(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", name="Ada Agent")
    page = await browsing.new_page()
    await page.goto(f"{parley_server.url}/account")
    # Not signed in: the sign-in page, remembering where the agent was going.
    await expect(page).to_have_url(re.compile(r"/login\?next=(%2F|/)account$"))
    await screenshot(page, "sign-in")
    await page.get_by_label("Email").fill(agent.email)
    await page.get_by_label("Password").fill(agent.password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(f"{parley_server.url}/account")
    await expect(page.get_by_role("link", name="Ada Agent")).to_be_visible()
    cookies = {c["name"]: c for c in await page.context.cookies()}
    session = cookies["parley_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"

    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(f"{parley_server.url}/login")
    async with db.sessionmaker() as s:
        ended = (await s.execute(select(WebSession.revoked_at))).scalars().all()
    assert len(ended) == 1 and ended[0] is not None
    # The old cookie, replayed, signs nobody in.
    async with (
        aiohttp.ClientSession(cookies={"parley_session": session["value"]}) as http,
        http.get(f"{parley_server.url}/account", allow_redirects=False) as response,
    ):
        assert response.status == 303
        assert response.headers["Location"].startswith("/login")


async def test_wrong_passwords_lock_the_account(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme")
    page = await browsing.new_page()
    await page.goto(f"{parley_server.url}/login")
    for _ in range(MAX_FAILURES - 1):
        await page.get_by_label("Email").fill(agent.email)
        await page.get_by_label("Password").fill("not the password")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("alert")).to_have_text("Wrong email or password.")
    await page.get_by_label("Password").fill("still not it")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("locked until")
    # Locked: even the right password is refused now.
    await page.get_by_label("Password").fill(agent.password)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_contain_text("locked until")
    async with db.sessionmaker() as s:
        user = (await s.execute(select(User).where(User.id == agent.user_id))).scalar_one()
        sessions = (await s.execute(select(WebSession))).scalars().all()
    assert user.locked_until is not None and not sessions


async def test_an_unknown_email_gets_the_same_answer(db: Database, parley_server: ParleyServer) -> None:
    async with browser_like() as http:
        assert await sign_in_http(http, parley_server, "nobody@nowhere.example", "whatever-it-is") == 401


async def test_state_changes_need_the_csrf_token(db: Database, parley_server: ParleyServer) -> None:
    agent = await make_agent(db, "acme")
    async with browser_like() as http:
        # The sign-in form itself: without the double-submit token it is refused.
        async with http.post(
            f"{parley_server.url}/login", data={"email": agent.email, "password": agent.password}
        ) as response:
            assert response.status == 403
        assert await sign_in_http(http, parley_server, agent.email, agent.password) == 303
        async with http.get(f"{parley_server.url}/account") as response:
            csrf = csrf_of(await response.text())
        forged = {"name": "Mallory", "time_zone": "UTC"}
        async with http.post(f"{parley_server.url}/account", data=forged) as response:
            assert response.status == 403
        async with http.post(
            f"{parley_server.url}/account", data={**forged, "csrf_token": "0" * 64}
        ) as response:
            assert response.status == 403
        async with http.post(
            f"{parley_server.url}/account",
            data={"name": "Ada", "time_zone": "Europe/Paris", "csrf_token": csrf},
        ) as response:
            assert response.status == 200
        # The REST API takes the same session; changes need the token in a header.
        async with http.get(f"{parley_server.url}/api/v1/me") as response:
            assert (await response.json())["name"] == "Ada"
        async with http.put(
            f"{parley_server.url}/api/v1/me/presence", json={"presence": "online"}
        ) as response:
            assert response.status == 403
        async with http.put(
            f"{parley_server.url}/api/v1/me/presence",
            json={"presence": "online"},
            headers={"X-CSRF-Token": csrf},
        ) as response:
            assert response.status == 200
            assert (await response.json())["presence"] == "online"


async def test_pages_carry_a_strict_content_security_policy(
    db: Database, parley_server: ParleyServer
) -> None:
    agent = await make_agent(db, "acme")
    async with browser_like() as http:
        await sign_in_http(http, parley_server, agent.email, agent.password)
        for path in ("/login", "/password/forgot", "/account"):
            async with http.get(f"{parley_server.url}{path}") as response:
                csp = response.headers["Content-Security-Policy"]
                html = await response.text()
            assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
            assert "frame-ancestors 'none'" in csp
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Cache-Control"] == "no-store"
            # Nothing inline that the policy would have to allow.
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), path
            assert not re.search(r"\son[a-z]+\s*=", html), path
            assert not re.search(r"\sstyle\s*=", html), path


@pytest.fixture
def smarthost() -> Iterator[Smarthost]:
    host = Smarthost(free_port())
    host.start()
    yield host
    host.stop()


async def test_a_forgotten_password_is_reset_by_a_one_time_link(
    db: Database, database_url: str, tmp_path: Path, smarthost: Smarthost, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", role=Role.SUPERVISOR)
    server = ParleyServer(
        database_url,
        tmp_path,
        env={"PARLEY_SMTP_URL": f"smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{smarthost.port}"},
    )
    await server.start()
    try:
        # A browser that stays signed in with the old password: the reset signs it out.
        old = await browsing.signed_in(server, agent, path="/account")
        page = await browsing.new_page()
        await page.goto(f"{server.url}/login")
        await page.get_by_role("link", name="Forgot your password?").click()
        await page.get_by_label("Your email").fill(agent.email.upper())
        await page.get_by_role("button", name="Send me a link").click()
        await expect(page.get_by_role("status")).to_contain_text("If an account exists")
        assert len(smarthost.received) == 1
        mail = smarthost.received[0].message
        assert mail["To"] == agent.email
        body = mail.get_content()
        link = re.search(r"http://\S+/password/reset/\S+", body)
        assert link is not None

        await page.goto(link.group(0))
        await page.get_by_label("New password").fill("a brand new passphrase")
        await page.get_by_label("The same again").fill("a brand new passfrase")
        await page.get_by_role("button", name="Set password").click()
        await expect(page.get_by_role("alert")).to_have_text("The two passwords differ.")
        # The browser enforces the length too, but the server is what decides.
        async with (
            browser_like() as http,
            http.post(link.group(0), data={"password": "short", "confirm": "short"}) as response,
        ):
            assert response.status == 422
            assert "at least 8 characters" in await response.text()
        await page.get_by_label("New password").fill("a brand new passphrase")
        await page.get_by_label("The same again").fill("a brand new passphrase")
        await page.get_by_role("button", name="Set password").click()
        await expect(page).to_have_url(re.compile(r"/login\?reset=1$"))

        # The link is spent; the old session is gone; the new password works, the old does not.
        await page.goto(link.group(0))
        await expect(page.get_by_role("heading", name="This link no longer works")).to_be_visible()
        await old.reload()
        await expect(old).to_have_url(re.compile(r"/login\?next="))
        async with browser_like() as http:
            assert await sign_in_http(http, server, agent.email, agent.password) == 401
            assert await sign_in_http(http, server, agent.email, "a brand new passphrase") == 303

        # Nobody learns from the form whether an address has an account, and nothing is sent for it.
        await page.goto(f"{server.url}/password/forgot")
        await page.get_by_label("Your email").fill("stranger@elsewhere.example")
        await page.get_by_role("button", name="Send me a link").click()
        await expect(page.get_by_role("status")).to_contain_text("If an account exists")
        assert len(smarthost.received) == 1
    finally:
        await server.stop()


async def test_next_never_leaves_the_site(db: Database, parley_server: ParleyServer) -> None:
    agent = await make_agent(db, "acme")
    async with browser_like() as http:
        token = await login_csrf(http, parley_server)
        async with http.post(
            f"{parley_server.url}/login",
            data={
                "email": agent.email,
                "password": agent.password,
                "login_csrf": token,
                "next": "//evil.example/x",
            },
            allow_redirects=False,
        ) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/inbox"
