"""The CRM's API tests share the gateway tests' `api` fixture (an app, an admin token, a fake Twilio)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from gateway.keys import NOTIFIER
from parley.models import OutboxEvent
from tests.conftest import eventually
from tests.gateway.test_api import Api, api

__all__ = ["api", "settled"]


@pytest_asyncio.fixture(autouse=True)
async def settled(api: Api) -> AsyncIterator[None]:
    """After each test, let the app's dispatcher finish the CRM handlers the test set off.

    Stopping the app with handlers mid-transaction on SQLite can leave a task waiting on a closed
    aiosqlite connection, which hangs the event loop's shutdown.
    """
    yield
    api.client.app[NOTIFIER].notify()

    async def idle() -> bool:
        return await api.count(OutboxEvent, OutboxEvent.completed_at.is_(None)) == 0

    await eventually(idle, timeout=30)
