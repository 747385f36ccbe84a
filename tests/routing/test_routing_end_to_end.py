"""A real signed Twilio SMS webhook reaches an agent: pipeline → `conversation.opened` → routing."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient
from sqlalchemy import select

from gateway.app import create_app
from inbox.models import Conversation
from parley.db import Database
from parley.models import OutboxEvent
from parley.settings import Settings
from tests.conftest import eventually, make_tenant, make_twilio_inbox
from tests.fakes.twilio_api import FakeTwilioApi, load_fixture, post_signed
from tests.routing.world import add_agent


async def test_an_inbound_sms_is_assigned_to_the_skilled_agent(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    db: Database,
    settings: Settings,
    public_port: int,
    fake_twilio: FakeTwilioApi,
) -> None:
    tenant = await make_tenant(db, "acme")
    inbox = await make_twilio_inbox(
        db, tenant.tenant_id, fake_twilio.base_url, fake_twilio.account_sid, fake_twilio.auth_token
    )
    await add_agent(db, tenant.tenant_id, capacity={"chat": 5})
    expert = await add_agent(db, tenant.tenant_id, capacity={"chat": 5}, skills={"orders": 2})
    client = await aiohttp_client(
        create_app(settings), server_kwargs={"port": public_port, "host": "127.0.0.1"}
    )
    status, _ = await _call(
        client, tenant.headers, "PUT", f"/inboxes/{inbox}/routing", {"required_skills": {"orders": 1}}
    )
    assert status == 200

    async with aiohttp.ClientSession() as http:
        result = await post_signed(
            http,
            f"http://127.0.0.1:{public_port}/webhooks/{inbox}",
            load_fixture("inbound__sms"),
            fake_twilio.auth_token,
        )
    assert result.status == 200

    async def assigned() -> bool:
        async with db.sessionmaker() as session:
            return (await session.execute(select(Conversation.assignee_id))).scalar_one() == expert

    await eventually(assigned)
    async with db.sessionmaker() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
        event = (
            await session.execute(
                select(OutboxEvent.payload).where(OutboxEvent.topic == "conversation.assigned")
            )
        ).scalar_one()
    assert event == {
        "conversation_id": conversation.id,
        "inbox_id": inbox,
        "contact_id": conversation.contact_id,
        "assignee_id": expert,
        "strategy": "skill",
        "waited_seconds": event["waited_seconds"],
    }
    status, entry = await _call(client, tenant.headers, "GET", f"/conversations/{conversation.id}/queue")
    assert (status, entry["state"]) == (200, "assigned")


async def _call(
    client: TestClient[Any, Any], headers: dict[str, str], method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with client.request(
        method, f"/api/v1{path}", data=None if body is None else json.dumps(body), headers=headers
    ) as response:
        return response.status, await response.json()
