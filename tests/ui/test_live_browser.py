"""Live updates in a real browser against a real `parley serve`: a page receives events, survives a
dropped connection with a "Reconnecting…" banner, and catches up on what was committed meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import WebSocketRoute, expect
from sqlalchemy import select

from parley.auth import issue_token
from parley.db import Database
from parley.models import OutboxEvent, User
from parley.outbox import emit
from tests.conftest import eventually
from tests.ui.conftest import Browsing, ParleyServer, ParleyWorker, make_agent, screenshot, sign_in

RECORD_EVENTS = """() => {
  window.liveEvents = [];
  window.liveReconnects = [];
  document.addEventListener("parley:event", (e) => window.liveEvents.push(e.detail));
  document.addEventListener("parley:reconnected", (e) => window.liveReconnects.push(e.detail));
}"""


async def commit_event(db: Database, tenant_id: int, topic: str, payload: dict[str, Any]) -> int:
    async with db.transaction() as session:
        await emit(session, tenant_id, (topic, payload))
        event_id = (await session.execute(select(OutboxEvent.id).order_by(OutboxEvent.id.desc()))).scalar()
    assert event_id is not None
    return int(event_id)


async def dispatched(db: Database, event_id: int) -> bool:
    async with db.sessionmaker() as session:
        done = await session.execute(select(OutboxEvent.completed_at).where(OutboxEvent.id == event_id))
        return done.scalar() is not None


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
async def test_a_page_gets_events_and_catches_up_after_a_dropped_connection(
    parley_server: ParleyServer, browsing: Browsing, db: Database
) -> None:
    agent = await make_agent(db, "acme")
    sockets: list[WebSocketRoute] = []
    urls: list[str] = []

    def through(route: WebSocketRoute) -> None:
        # The page's real socket, passed through; kept so that the test can cut it.
        urls.append(route.url)
        route.connect_to_server()
        sockets.append(route)

    page = await browsing.new_page()
    await page.route_web_socket("**/live*", through)
    await sign_in(page, parley_server, agent, path="/account")
    await page.evaluate(RECORD_EVENTS)
    await page.wait_for_function("() => window.parley.live.connected")

    first = await commit_event(db, agent.tenant_id, "conversation.queued", {"conversation_id": 1})
    await page.wait_for_function(f"() => window.liveEvents.some((e) => e.id === {first})")
    detail = await page.evaluate(f"() => window.liveEvents.find((e) => e.id === {first})")
    assert detail == {"topic": "conversation.queued", "payload": {"conversation_id": 1}, "id": first}
    banner = page.get_by_role("status").filter(has_text="Reconnecting")
    await expect(banner).to_be_hidden()

    # The network goes away: the socket drops and reconnecting fails until it is back.
    await page.context.set_offline(True)
    await sockets[-1].close(code=1006, reason="network drop")
    await expect(banner).to_be_visible()
    await screenshot(page, "live-reconnecting")
    await page.set_viewport_size({"width": 390, "height": 760})
    await expect(banner).to_be_visible()
    await screenshot(page, "live-reconnecting-phone")
    await page.set_viewport_size({"width": 1366, "height": 768})
    missed = await commit_event(
        db, agent.tenant_id, "message.received", {"conversation_id": 1, "message_id": 7}
    )
    await eventually(lambda: dispatched(db, missed))  # pushed while nobody of this page listened

    await page.context.set_offline(False)
    await page.wait_for_function("() => window.liveReconnects.length === 1")
    await page.wait_for_function(f"() => window.liveEvents.some((e) => e.id === {missed})")
    await expect(banner).to_be_hidden()
    assert urls[0].endswith("/live") and urls[-1].endswith(f"/live?after={first}")
    reconnected = await page.evaluate("() => window.liveReconnects[0]")
    assert reconnected == {"resync": False, "replayed": 1}

    after = await commit_event(db, agent.tenant_id, "conversation.queued", {"conversation_id": 2})
    await page.wait_for_function(f"() => window.liveEvents.some((e) => e.id === {after})")
    ids = await page.evaluate("() => window.liveEvents.map((e) => e.id)")
    assert ids == [first, missed, after]  # no gap, no duplicate
    await screenshot(page, "live-connected")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_an_event_committed_through_one_server_reaches_a_page_on_another_through_redis(
    db: Database, database_url: str, redis_url: str, tmp_path: Path, browsing: Browsing
) -> None:
    redis = {"PARLEY_REDIS_URL": redis_url}
    a = ParleyServer(database_url, tmp_path / "a", env=redis)
    b = ParleyServer(database_url, tmp_path / "b", env=redis)
    worker = ParleyWorker(database_url, tmp_path / "worker", redis_url)
    for directory in (a.data_dir, b.data_dir, worker.data_dir):
        directory.mkdir()
    agent = await make_agent(db, "acme")
    colleague = await make_agent(db, "acme", email="colleague@acme.example.com")
    async with db.transaction() as session:
        user = await session.get(User, colleague.user_id)
        assert user is not None
        token = await issue_token(session, user)
    try:
        await asyncio.gather(a.start(), b.start(), worker.start())
        page = await browsing.new_page()
        await sign_in(page, b, agent, path="/account")
        await page.evaluate(RECORD_EVENTS)
        await page.wait_for_function("() => window.parley.live.connected")

        # The colleague goes online through server A; the worker dispatches; Redis carries it to B.
        async with (
            aiohttp.ClientSession() as http,
            http.put(
                f"{a.url}/api/v1/me/presence",
                json={"presence": "online"},
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            assert response.status == 200, await response.text()
        await page.wait_for_function(
            f"() => window.liveEvents.some((e) => e.topic === 'agent.presence_changed'"
            f" && e.payload.user_id === {colleague.user_id} && e.payload.presence === 'online')"
        )
    finally:
        await asyncio.gather(a.stop(), b.stop(), worker.stop())
