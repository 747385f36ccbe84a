"""With PARLEY_REDIS_URL set, a real Celery worker (not the gateway) sends replies."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from celery.contrib.testing.worker import start_worker
from sqlalchemy import select

from gateway.app import create_app
from gateway.keys import NOTIFIER
from gateway.notify import CeleryNotifier
from inbox.models import Conversation, Message
from inbox.service import queue_outbound
from parley.db import Database
from parley.settings import Settings
from parley.tasks import celery_app
from tests.conftest import make_tenant, make_twilio_inbox
from tests.fakes.twilio_api import FakeTwilioApi, load_fixture, post_signed


async def test_a_celery_worker_delivers_the_reply(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    db: Database,
    settings: Settings,
    public_port: int,
    fake_twilio: FakeTwilioApi,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker builds its own runtime from the environment, as `parley worker` does.
    for name, value in {
        "PARLEY_DATABASE_URL": settings.database_url,
        "PARLEY_SECRET_KEY": settings.secret_key,
        "PARLEY_PUBLIC_URL": settings.public_url or "",
        "PARLEY_REDIS_URL": redis_url,
        "PARLEY_DATA_DIR": str(settings.data_dir),
    }.items():
        monkeypatch.setenv(name, value)
    scaled = dataclasses.replace(settings, redis_url=redis_url)
    tenant = await make_tenant(db, "acme")
    inbox_id = await make_twilio_inbox(
        db, tenant.tenant_id, fake_twilio.base_url, fake_twilio.account_sid, fake_twilio.auth_token
    )
    client = await aiohttp_client(
        create_app(scaled), server_kwargs={"port": public_port, "host": "127.0.0.1"}
    )
    assert isinstance(client.app[NOTIFIER], CeleryNotifier)  # no in-process dispatcher at scale

    async with aiohttp.ClientSession() as session:
        result = await post_signed(
            session,
            f"{settings.public_url}/webhooks/{inbox_id}",
            load_fixture("inbound__sms"),
            fake_twilio.auth_token,
        )
    assert result.status == 200
    async with db.transaction() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
        message = await queue_outbound(
            session, conversation, body="Sent by a worker", sender_type="user", sender_id=None
        )

    with start_worker(celery_app(redis_url), perform_ping_check=False, pool="solo", shutdown_timeout=30):
        client.app[NOTIFIER].notify()
        for _ in range(300):
            async with db.sessionmaker() as session:
                status = (
                    await session.execute(select(Message.status).where(Message.id == message.id))
                ).scalar_one()
            if status == "sent":
                break
            await asyncio.sleep(0.05)
    assert status == "sent"
    assert [r["Body"] for r in fake_twilio.requests] == [["Sent by a worker"]]
