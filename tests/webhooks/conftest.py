"""A local webhook receiver, and the gateway configured to deliver to it (loopback allowed)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, select

from gateway.app import create_app
from gateway.keys import NOTIFIER
from parley.db import Database
from parley.models import OutboxEvent
from parley.settings import Settings, WebhookSettings
from tests.conftest import TenantAccess, eventually, make_tenant, make_twilio_inbox
from tests.fakes.twilio_api import FakeTwilioApi, load_fixture, post_signed


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every POST and answers from `script` (status, headers), then `default`."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    default: int = 200

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(Received(dict(request.headers), await request.read(), time.monotonic()))
        status, headers = self.script.pop(0) if self.script else (self.default, {})
        return web.Response(status=status, headers=headers, text=f"answer {len(self.received)}")


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    found.url = str(server.make_url("/hook"))
    yield found
    await server.close()


@dataclass
class Hooks:
    client: TestClient[Any, Any]
    db: Database
    admin: TenantAccess
    inbox_id: int
    fake: FakeTwilioApi
    base_url: str
    receiver: Receiver

    async def call(
        self, method: str, path: str, *, who: TenantAccess | None = None, body: Any = None, **params: Any
    ) -> tuple[int, Any]:
        async with self.client.request(
            method,
            f"/api/v1{path}",
            json=body,
            params=params or None,
            headers=(who or self.admin).headers,
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def subscribe(self, event_types: list[str], **extra: Any) -> dict[str, Any]:
        status, created = await self.call(
            "POST", "/webhooks", body={"url": self.receiver.url, "event_types": event_types, **extra}
        )
        assert status == 201, created
        return dict(created)

    async def inbound_sms(self, sid: str = "SM" + "1" * 32, body: str = "Hello there") -> None:
        sids = ("MessageSid", "SmsSid", "SmsMessageSid")
        params = [
            (k, sid if k in sids else body if k == "Body" else v) for k, v in load_fixture("inbound__sms")
        ]
        async with aiohttp.ClientSession() as session:
            result = await post_signed(
                session, f"{self.base_url}/webhooks/{self.inbox_id}", params, self.fake.auth_token
            )
        assert result.status == 200, result.text

    async def deliveries(self, webhook_id: int, **params: Any) -> list[dict[str, Any]]:
        status, listed = await self.call("GET", f"/webhooks/{webhook_id}/deliveries", **params)
        assert status == 200, listed
        return list(listed["data"])

    def wake(self) -> None:
        self.client.app[NOTIFIER].notify()

    async def settle(self) -> None:
        """Let the dispatcher finish what the test set off (see tests/crm/conftest.py)."""
        self.wake()

        async def idle() -> bool:
            async with self.db.sessionmaker() as session:
                left = await session.execute(
                    select(func.count()).select_from(OutboxEvent).where(OutboxEvent.completed_at.is_(None))
                )
                return int(left.scalar_one()) == 0

        await eventually(idle, timeout=60)


def fast_policy(**changes: Any) -> WebhookSettings:
    """Loopback receivers allowed; retries quick (the outbox's own backoff still applies)."""
    values: dict[str, Any] = {
        "allow_private_targets": True,
        "retry_base": 0.05,
        "retry_cap": 5.0,
        "disable_after_seconds": 0.0,
    }
    return WebhookSettings(**{**values, **changes})


HooksFactory = Callable[..., Awaitable[Hooks]]


@pytest_asyncio.fixture
async def make_hooks(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    db: Database,
    settings: Settings,
    public_port: int,
    fake_twilio: FakeTwilioApi,
    receiver: Receiver,
) -> AsyncIterator[HooksFactory]:
    made: list[Hooks] = []

    async def make(**policy: Any) -> Hooks:
        admin = await make_tenant(db, "acme")
        inbox_id = await make_twilio_inbox(
            db, admin.tenant_id, fake_twilio.base_url, fake_twilio.account_sid, fake_twilio.auth_token
        )
        configured = dataclasses.replace(settings, webhooks=fast_policy(**policy))
        client = await aiohttp_client(
            create_app(configured), server_kwargs={"port": public_port, "host": "127.0.0.1"}
        )
        hooks = Hooks(client, db, admin, inbox_id, fake_twilio, f"http://127.0.0.1:{public_port}", receiver)
        made.append(hooks)
        return hooks

    yield make
    for hooks in made:
        try:
            await hooks.settle()
        except AssertionError:
            await asyncio.sleep(0)
