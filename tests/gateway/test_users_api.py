"""`/api/v1/users` on both databases: roles, tenancy, the last-admin rule, deactivation, invitations."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.app import create_app
from gateway.keys import MAILER
from parley.auth import issue_token
from parley.db import Database
from parley.mailer import Mailer
from parley.models import ApiToken, Role, User, WebSession
from parley.sessions import start_session
from parley.settings import Settings
from tests.conftest import TenantAccess, make_tenant

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


class RecordingMailer(Mailer):
    """Keeps what would have been sent."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.sent: list[tuple[str, str, str]] = []

    async def send(self, to: str, subject: str, text: str, html: str | None = None) -> None:
        self.sent.append((to, subject, text))


@dataclass
class Users:
    client: TestClient[Any, Any]
    db: Database
    admin: TenantAccess
    mailer: RecordingMailer
    others: dict[str, TenantAccess] = field(default_factory=dict)

    async def call(
        self, method: str, path: str, *, who: TenantAccess | None = None, body: Any = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        async with self.client.request(
            method, f"/api/v1{path}", data=data, headers=(who or self.admin).headers
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def member(self, role: Role, email: str, *, who: TenantAccess | None = None) -> TenantAccess:
        """A user of the admin's tenant with `role`, and a token for them."""
        status, user = await self.call(
            "POST", "/users", who=who, body={"email": email, "role": role, "password": "a long passphrase"}
        )
        assert status == 201, user
        async with self.db.transaction() as session:
            row = (await session.execute(select(User).where(User.id == user["id"]))).scalar_one()
            token = await issue_token(session, row)
        return TenantAccess(self.admin.tenant_id, row.id, token)

    async def user(self, user_id: int) -> User:
        async with self.db.sessionmaker() as session:
            return (await session.execute(select(User).where(User.id == user_id))).scalar_one()


@pytest_asyncio.fixture
async def users(aiohttp_client: ClientFactory, db: Database, settings: Settings) -> AsyncIterator[Users]:
    admin = await make_tenant(db, "acme")
    app = create_app(settings)
    mailer = RecordingMailer(settings)
    app[MAILER] = mailer
    client = await aiohttp_client(app)
    yield Users(client, db, admin, mailer)


async def test_an_admin_adds_a_user_who_gets_a_link_to_choose_a_password(users: Users) -> None:
    status, created = await users.call(
        "POST", "/users", body={"email": " Ann@Example.COM ", "name": "Ann", "role": "supervisor"}
    )
    assert status == 201, created
    assert created["email"] == "ann@example.com"
    assert created["role"] == "supervisor"
    assert created["active"] is True
    assert created["invite_sent"] is True
    [(to, _subject, text)] = users.mailer.sent
    assert to == "ann@example.com"
    link = re.search(r"(http://\S+/password/reset/\S+)", text)
    assert link is not None, text
    path = link.group(1).split("/", 3)[3]
    # The link is a working reset link: choose a password, then sign in with it.
    async with users.client.get(f"/{path}") as page:
        assert page.status == 200
    async with users.client.post(
        f"/{path}",
        data={"password": "ann's own passphrase", "confirm": "ann's own passphrase"},
        allow_redirects=False,
    ) as done:
        assert done.status == 303, await done.text()
    async with users.client.get("/login") as login:
        csrf = login.cookies["parley_login_csrf"].value
    async with users.client.post(
        "/login",
        data={"email": "ann@example.com", "password": "ann's own passphrase", "login_csrf": csrf},
        allow_redirects=False,
    ) as signed_in:
        assert signed_in.status == 303

    status, listed = await users.call("GET", "/users")
    assert status == 200
    assert {u["email"] for u in listed["data"]} == {"admin@acme.example.com", "ann@example.com"}


async def test_an_initial_password_is_used_and_no_mail_is_sent(users: Users) -> None:
    status, created = await users.call(
        "POST", "/users", body={"email": "bob@example.com", "password": "bob's passphrase", "role": "agent"}
    )
    assert status == 201, created
    assert created["invite_sent"] is False
    assert users.mailer.sent == []
    status, short = await users.call("POST", "/users", body={"email": "cy@example.com", "password": "short"})
    assert status == 422
    assert short["error"]["details"][0]["field"] == "body.password"


async def test_an_email_already_used_is_a_conflict_even_in_another_tenant(users: Users) -> None:
    await make_tenant(users.db, "globex", email="taken@globex.example.com")
    for email in ("admin@acme.example.com", "TAKEN@globex.example.com"):
        status, body = await users.call("POST", "/users", body={"email": email})
        assert status == 409, body
        assert body["error"]["code"] == "email_taken"
    status, body = await users.call("POST", "/users", body={"email": "not an email"})
    assert status == 422
    assert body["error"]["details"][0]["field"] == "body.email"


async def test_only_admins_change_users_and_everyone_else_is_refused(users: Users) -> None:
    target = await users.member(Role.AGENT, "target@acme.example.com")
    for role in (Role.SUPERVISOR, Role.AGENT, Role.MARKETER, Role.BOT_DESIGNER):
        who = await users.member(role, f"{role}@acme.example.com")
        status, body = await users.call("POST", "/users", who=who, body={"email": f"x-{role}@example.com"})
        assert status == 403, (role, body)
        status, body = await users.call("PATCH", f"/users/{target.user_id}", who=who, body={"role": "admin"})
        assert status == 403, (role, body)
        status, body = await users.call("GET", "/users", who=who)
        assert status == 200, (role, body)
    assert (await users.user(target.user_id)).role == Role.AGENT


async def test_another_tenants_user_is_not_found(users: Users) -> None:
    other = await make_tenant(users.db, "globex")
    for method, body in (("GET", None), ("PATCH", {"name": "Mallory"}), ("PATCH", {"active": False})):
        status, answer = await users.call(method, f"/users/{other.user_id}", body=body)
        assert status == 404, answer
    status, listed = await users.call("GET", "/users")
    assert other.user_id not in {u["id"] for u in listed["data"]}
    assert (await users.user(other.user_id)).active is True
    # And the other tenant's admin cannot touch this tenant's admin either.
    status, _ = await users.call("PATCH", f"/users/{users.admin.user_id}", who=other, body={"active": False})
    assert status == 404


async def test_the_last_active_admin_cannot_be_demoted_or_deactivated(users: Users) -> None:
    me = users.admin.user_id
    for body in ({"role": "supervisor"}, {"active": False}, {"role": "agent", "active": False}):
        status, answer = await users.call("PATCH", f"/users/{me}", body=body)
        assert status == 409, (body, answer)
        assert answer["error"]["code"] == "last_admin"
    assert (await users.user(me)).role == Role.ADMIN
    # With a second admin, the first may step down, and then the second is the last one.
    second = await users.member(Role.ADMIN, "second@acme.example.com")
    status, answer = await users.call("PATCH", f"/users/{me}", body={"role": "supervisor"})
    assert status == 200, answer
    assert answer["role"] == "supervisor"
    status, answer = await users.call("PATCH", f"/users/{second.user_id}", who=second, body={"active": False})
    assert status == 409
    # A deactivated admin does not count towards the active admins.
    # (the first admin's token was minted as an admin: stepping down revoked it)
    status, _ = await users.call("GET", "/me")
    assert status == 401
    third = await users.member(Role.ADMIN, "third@acme.example.com", who=second)
    status, _ = await users.call("PATCH", f"/users/{third.user_id}", who=second, body={"active": False})
    assert status == 200
    status, answer = await users.call("PATCH", f"/users/{second.user_id}", who=second, body={"role": "agent"})
    assert status == 409, answer


async def test_deactivating_ends_sessions_and_tokens_and_sets_offline(users: Users) -> None:
    agent = await users.member(Role.AGENT, "agent@acme.example.com")
    status, _ = await users.call("PUT", "/me/presence", who=agent, body={"presence": "online"})
    assert status == 200
    async with users.db.transaction() as session:
        row = (await session.execute(select(User).where(User.id == agent.user_id))).scalar_one()
        cookie = await start_session(session, row)
    async with users.client.get("/api/v1/me", cookies={"parley_session": cookie}) as me:
        assert me.status == 200

    status, answer = await users.call("PATCH", f"/users/{agent.user_id}", body={"active": False})
    assert status == 200, answer
    assert answer["active"] is False
    assert answer["presence"] == "offline"

    status, _ = await users.call("GET", "/me", who=agent)
    assert status == 401
    async with users.client.get("/api/v1/me", cookies={"parley_session": cookie}) as me:
        assert me.status == 401
    async with users.db.sessionmaker() as session:
        sessions = await session.scalars(select(WebSession).where(WebSession.user_id == agent.user_id))
        assert all(s.revoked_at is not None for s in sessions)
        tokens = await session.scalars(select(ApiToken).where(ApiToken.user_id == agent.user_id))
        assert all(t.revoked_at is not None for t in tokens)
    # Signing in is refused too, and reactivating does not bring the old token back.
    async with users.client.get("/login") as login:
        csrf = login.cookies["parley_login_csrf"].value
    async with users.client.post(
        "/login",
        data={"email": "agent@acme.example.com", "password": "a long passphrase", "login_csrf": csrf},
        allow_redirects=False,
    ) as refused:
        assert refused.status == 401
    status, answer = await users.call("PATCH", f"/users/{agent.user_id}", body={"active": True})
    assert status == 200 and answer["active"] is True
    status, _ = await users.call("GET", "/me", who=agent)
    assert status == 401


async def test_a_role_change_revokes_tokens_of_the_old_role(users: Users) -> None:
    supervisor = await users.member(Role.SUPERVISOR, "sup@acme.example.com")
    status, _ = await users.call("GET", "/me", who=supervisor)
    assert status == 200
    status, answer = await users.call(
        "PATCH", f"/users/{supervisor.user_id}", body={"role": "agent", "name": "Sam"}
    )
    assert status == 200, answer
    assert (answer["role"], answer["name"]) == ("agent", "Sam")
    # The token was minted as a supervisor: it must not keep a supervisor's powers.
    status, _ = await users.call("GET", "/me", who=supervisor)
    assert status == 401
