"""Signed-in requests to the web UI through the aiohttp test client, for the contact and admin views.

Each person gets a real web session (`parley.sessions.start_session`); requests carry its cookie
and, when they change something, the CSRF token the page would carry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from html import unescape
from typing import Any

from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.app import create_app
from gateway.keys import MAILER
from parley.auth import create_tenant_admin
from parley.db import Database
from parley.mailer import Mailer
from parley.models import Role, User
from parley.sessions import csrf_token, digest, start_session
from parley.settings import Settings
from tests.conftest import SECRET_KEY

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


class RecordingMailer(Mailer):
    """Keeps what would have been sent."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.sent: list[tuple[str, str, str]] = []

    async def send(self, to: str, subject: str, text: str, html: str | None = None) -> None:
        self.sent.append((to, subject, text))


@dataclass(frozen=True, slots=True)
class Person:
    user_id: int
    tenant_id: int
    role: Role
    cookie: str

    @property
    def csrf(self) -> str:
        return csrf_token(SECRET_KEY, digest(self.cookie))


@dataclass
class Page:
    status: int
    text: str
    headers: Any

    def has(self, fragment: str) -> bool:
        return fragment in self.text

    def texts(self) -> str:
        """The page's visible text, roughly: tags dropped, entities decoded."""
        return unescape(re.sub(r"<[^>]+>", " ", self.text))


@dataclass
class UiClient:
    client: TestClient[Any, Any]
    db: Database
    mailer: RecordingMailer

    async def person(self, role: Role, tenant: str = "acme", email: str | None = None) -> Person:
        async with self.db.transaction() as session:
            user = await create_tenant_admin(
                session,
                email=email or f"{role}@{tenant}.example.com",
                password="correct horse",
                tenant_name=tenant,
                role=role,
            )
            cookie = await start_session(session, user)
        return Person(user.id, user.tenant_id, role, cookie)

    async def get(self, who: Person, path: str, *, htmx: bool = False) -> Page:
        headers = {"Cookie": f"parley_session={who.cookie}"}
        if htmx:
            headers["HX-Request"] = "true"
        async with self.client.get(path, headers=headers, allow_redirects=False) as response:
            return Page(response.status, await response.text(), response.headers)

    async def post(
        self, who: Person, path: str, data: dict[str, str], *, htmx: bool = False, csrf: bool = True
    ) -> Page:
        headers = {"Cookie": f"parley_session={who.cookie}"}
        if htmx:
            headers["HX-Request"] = "true"
        form = {**data, "csrf_token": who.csrf} if csrf else data
        async with self.client.post(path, data=form, headers=headers, allow_redirects=False) as response:
            return Page(response.status, await response.text(), response.headers)

    async def api(self, who: Person, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call /api/v1 as the page's own scripts do: the session cookie and the CSRF header."""
        headers = {"Cookie": f"parley_session={who.cookie}", "X-CSRF-Token": who.csrf}
        async with self.client.request(
            method, f"/api/v1{path}", json=body, headers=headers, allow_redirects=False
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def user(self, user_id: int) -> User:
        async with self.db.sessionmaker() as session:
            return (await session.execute(select(User).where(User.id == user_id))).scalar_one()


async def make_ui_client(aiohttp_client: ClientFactory, db: Database, settings: Settings) -> UiClient:
    app = create_app(settings)
    mailer = RecordingMailer(settings)
    app[MAILER] = mailer
    return UiClient(await aiohttp_client(app), db, mailer)
