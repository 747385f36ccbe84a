"""`GET /live` on both databases: who may connect, which events reach whom, catch-up after a
reconnect (no gap, no duplicate), resync, two gateways sharing Redis, presence and typing.

Events are committed for real (the API, the web chat pipeline, or `emit` in a transaction) and
travel through the outbox dispatcher and the hub, as in production. Where a test needs events that
are committed but not yet dispatched, the gateway runs without an in-process dispatcher (Redis
configured, as with Celery workers) and the test dispatches with a worker runtime of its own.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import select, update

from crm_core.models import ChannelIdentity, Contact
from gateway.api.permissions import GRANTS
from gateway.app import create_app
from gateway.keys import HUB, NOTIFIER
from gateway.live import LIVE, REPLAY_WINDOW, agent_event, live_topic
from gateway.wiring import Runtime, build_runtime
from inbox.models import Conversation
from parley.db import Database, utcnow
from parley.models import OutboxEvent, Presence, Role, User
from parley.outbox import emit
from parley.sessions import end_session, start_session
from parley.settings import Settings
from tests.conftest import TenantAccess, eventually, make_tenant, make_twilio_inbox
from tests.test_webchat_end_to_end import ORIGIN, Chat, make_webchat_inbox

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@dataclass
class Socket:
    """One agent's live socket: frames kept until a test asks for them."""

    ws: aiohttp.ClientWebSocketResponse
    frames: list[dict[str, Any]] = field(default_factory=list)
    ready: dict[str, Any] = field(default_factory=dict)

    async def _receive(self, timeout: float) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"socket says {msg.type} {msg.data!r} {msg.extra!r}")
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def expect(self, kind: str, topic: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame of `kind` (and `topic`), keeping the others."""

        def matches(frame: dict[str, Any]) -> bool:
            return frame["type"] == kind and (topic is None or frame.get("topic") == topic)

        for i, frame in enumerate(self.frames):
            if matches(frame):
                return self.frames.pop(i)
        while True:
            frame = await self._receive(timeout)
            if matches(frame):
                return frame
            self.frames.append(frame)

    async def events_until(self, marker_id: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Every event frame up to and including the one with id `marker_id`, in arrival order."""
        seen = [f for f in self.frames if f["type"] == "event"]
        self.frames = [f for f in self.frames if f["type"] != "event"]
        while not seen or seen[-1]["id"] != marker_id:
            frame = await self._receive(timeout)
            if frame["type"] == "event":
                seen.append(frame)
            else:
                self.frames.append(frame)
        return seen

    async def send(self, **frame: Any) -> None:
        await self.ws.send_str(json.dumps(frame))


@dataclass
class World:
    client: TestClient[Any, Any]
    app: web.Application
    db: Database
    settings: Settings
    acme: TenantAccess
    globex: TenantAccess
    worker: Runtime | None = None

    @property
    def origin(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    async def cookie(self, user_id: int) -> str:
        async with self.db.transaction() as session:
            user = await session.get(User, user_id)
            assert user is not None
            return await start_session(session, user)

    async def open(
        self,
        who: TenantAccess | None = None,
        *,
        bearer: bool = False,
        after: int | None = None,
        client: TestClient[Any, Any] | None = None,
    ) -> Socket:
        """`who`'s live socket (signed in through a session cookie unless `bearer`), once ready."""
        who = who or self.acme
        client = client or self.client
        if bearer:
            headers = who.headers
        else:
            origin = str(client.make_url("")).rstrip("/")
            headers = {"Cookie": f"parley_session={await self.cookie(who.user_id)}", "Origin": origin}
        path = "/live" if after is None else f"/live?after={after}"
        socket = Socket(await client.ws_connect(path, headers=headers))
        socket.ready = await socket.expect("ready")
        return socket

    async def emit(self, tenant_id: int, topic: str, payload: dict[str, Any]) -> int:
        """Commit one outbox event, wake the dispatcher; its id."""
        async with self.db.transaction() as session:
            await emit(session, tenant_id, (topic, payload))
            event_id = (
                await session.execute(select(OutboxEvent.id).order_by(OutboxEvent.id.desc()))
            ).scalar()
        self.app[NOTIFIER].notify()
        assert event_id is not None
        return int(event_id)

    async def dispatch(self) -> None:
        """The worker's turn (gateways started without an in-process dispatcher)."""
        assert self.worker is not None
        await self.worker.dispatcher.run_until_idle()


async def _world(
    aiohttp_client: ClientFactory, db: Database, settings: Settings, **app_options: Any
) -> World:
    acme = await make_tenant(db, "acme")
    globex = await make_tenant(db, "globex")
    app = create_app(settings, **app_options)
    client = await aiohttp_client(app)
    return World(client, app, db, settings, acme, globex)


@pytest_asyncio.fixture
async def world(aiohttp_client: ClientFactory, db: Database, settings: Settings) -> World:
    """A gateway dispatching in-process (the embedded default)."""
    return await _world(aiohttp_client, db, settings)


@pytest_asyncio.fixture
async def held(
    aiohttp_client: ClientFactory, db: Database, settings: Settings, redis_url: str
) -> AsyncIterator[World]:
    """A gateway that does not dispatch: events wait for `world.dispatch()` (a worker's runtime)."""
    scaled = dataclasses.replace(settings, redis_url=redis_url)
    held = await _world(aiohttp_client, db, scaled, dispatch_in_process=False)
    held.worker = build_runtime(scaled)
    try:
        yield held
    finally:
        await held.worker.close()


async def add_conversation(db: Database, tenant_id: int, inbox_id: int, phone: str) -> int:
    async with db.transaction() as session:
        contact = Contact(tenant_id=tenant_id, name=f"Customer {phone}", phone=phone, attributes={})
        session.add(contact)
        await session.flush()
        identity = ChannelIdentity(tenant_id=tenant_id, contact_id=contact.id, kind="phone", address=phone)
        session.add(identity)
        await session.flush()
        conversation = Conversation(
            tenant_id=tenant_id, inbox_id=inbox_id, contact_id=contact.id, identity_id=identity.id
        )
        session.add(conversation)
        await session.flush()
        return conversation.id


async def _handshake_status(client: TestClient[Any, Any], path: str, headers: dict[str, str]) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(path, headers=headers)
    return refused.value.status


# --- who may connect -----------------------------------------------------------------------------


async def test_without_a_valid_session_or_token_the_socket_is_refused(world: World) -> None:
    client, origin = world.client, world.origin
    assert await _handshake_status(client, "/live", {"Origin": origin}) == 401
    bogus = {"Origin": origin, "Cookie": "parley_session=not-a-session"}
    assert await _handshake_status(client, "/live", bogus) == 401
    assert await _handshake_status(client, "/live", {"Authorization": "Bearer not-a-token"}) == 401
    assert await _handshake_status(client, "/live?after=abc", {"Origin": origin}) == 400


async def test_a_page_on_another_origin_cannot_ride_the_agents_cookie(world: World) -> None:
    cookie = f"parley_session={await world.cookie(world.acme.user_id)}"
    for origin in ("https://evil.example", "http://127.0.0.1:1", "null"):
        assert await _handshake_status(world.client, "/live", {"Cookie": cookie, "Origin": origin}) == 403
    assert await _handshake_status(world.client, "/live", {"Cookie": cookie}) == 403  # no Origin at all
    socket = await world.open(world.acme)  # the gateway's own origin
    assert socket.ready["type"] == "ready"


async def test_bearer_tokens_connect_without_an_origin(world: World) -> None:
    socket = await world.open(world.acme, bearer=True)
    await socket.send(type="ping")
    assert (await socket.expect("pong"))["type"] == "pong"
    await socket.send(type="dance")
    assert (await socket.expect("error"))["code"] == "unknown_frame"
    await socket.ws.send_str("{not json")
    assert (await socket.expect("error"))["code"] == "invalid_json"


# --- which events reach whom ----------------------------------------------------------------------


async def test_a_conversation_changed_through_the_api_reaches_the_tenants_agents_only(world: World) -> None:
    agent = await make_tenant(world.db, "acme", role=Role.AGENT)
    inbox_id = await make_twilio_inbox(world.db, world.acme.tenant_id, "http://127.0.0.1:9", "AC1", "tok")
    conversation_id = await add_conversation(world.db, world.acme.tenant_id, inbox_id, "+14155550100")
    colleague = await world.open(agent)
    admin = await world.open(world.acme, bearer=True)
    stranger = await world.open(world.globex)

    response = await world.client.patch(
        f"/api/v1/conversations/{conversation_id}",
        data=json.dumps({"status": "resolved", "assignee_id": agent.user_id}),
        headers=world.acme.headers,
    )
    assert response.status == 200, await response.text()

    for socket in (colleague, admin):
        frame = await socket.expect("event", "conversation.updated")
        assert frame["payload"] == {
            "conversation_id": conversation_id,
            "inbox_id": inbox_id,
            "contact_id": frame["payload"]["contact_id"],
            "changes": {
                "status": {"old": "open", "new": "resolved"},
                "assignee_id": {"old": None, "new": agent.user_id},
            },
            "changed_by": {"type": "user", "id": world.acme.user_id},
        }
        assert isinstance(frame["id"], int) and frame["id"] > socket.ready["cursor"]

    # The other tenant's socket got nothing before its own next event.
    marker = await world.emit(world.globex.tenant_id, "conversation.queued", {"conversation_id": 1})
    assert [(f["topic"], f["id"]) for f in await stranger.events_until(marker)] == [
        ("conversation.queued", marker)
    ]


async def test_a_notification_reaches_only_the_notified_user(world: World) -> None:
    mentioned = await make_tenant(world.db, "acme", role=Role.AGENT, email="ann@acme.example.com")
    other = await make_tenant(world.db, "acme", role=Role.AGENT, email="bob@acme.example.com")
    ann, bob = await world.open(mentioned), await world.open(other)
    notification = await world.emit(
        world.acme.tenant_id,
        "notification.created",
        {"notification_id": 7, "user_id": mentioned.user_id, "kind": "mention", "conversation_id": 3,
         "message_id": 9, "actor_id": world.acme.user_id},
    )  # fmt: skip
    marker = await world.emit(world.acme.tenant_id, "conversation.queued", {"conversation_id": 3})
    got = await ann.events_until(marker)
    assert [(f["topic"], f["id"]) for f in got] == [
        ("notification.created", notification),
        ("conversation.queued", marker),
    ]
    assert got[0]["payload"]["kind"] == "mention" and got[0]["payload"]["user_id"] == mentioned.user_id
    assert [f["id"] for f in await bob.events_until(marker)] == [marker]


async def test_roles_without_read_conversations_get_nothing_about_conversations(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    marketer = await make_tenant(world.db, "acme", role=Role.MARKETER)
    monkeypatch.setitem(GRANTS, Role.MARKETER, frozenset())  # type: ignore[arg-type]
    socket = await world.open(marketer)
    await world.emit(world.acme.tenant_id, "message.received", {"conversation_id": 1, "message_id": 2})
    await world.emit(world.acme.tenant_id, "conversation.opened", {"conversation_id": 1})
    presence = await world.emit(
        world.acme.tenant_id, "agent.presence_changed", {"user_id": world.acme.user_id, "presence": "online"}
    )
    assert [f["topic"] for f in await socket.events_until(presence)] == ["agent.presence_changed"]


def test_agent_events_carry_only_the_listed_fields_and_stay_small() -> None:
    pushed = agent_event(5, "message.received", {"conversation_id": 1, "message_id": 2, "secret": "x"})
    assert pushed is not None and json.loads(pushed.frame)["payload"] == {
        "conversation_id": 1,
        "message_id": 2,
    }
    assert agent_event(5, "contact.created", {"contact_id": 1}) is None  # not an agent topic
    assert agent_event(5, "notification.created", {"kind": "mention"}) is None  # nobody to send it to
    huge = agent_event(6, "conversation.updated", {"conversation_id": 1, "changes": {"labels": ["x" * 9000]}})
    assert huge is not None and len(huge.frame) < 4096
    assert json.loads(huge.frame)["payload"] == {"conversation_id": 1, "truncated": True}


# --- catch-up ----------------------------------------------------------------------------------


async def test_a_reconnect_replays_what_was_missed_without_gap_or_duplicate(held: World) -> None:
    first = await held.open()
    e1 = await held.emit(held.acme.tenant_id, "message.received", {"conversation_id": 1, "message_id": 1})
    await held.dispatch()
    assert (await first.expect("event", "message.received"))["id"] == e1
    await first.ws.close()

    # Committed while the page is away; e3 is still undispatched when the page comes back, so it
    # is both replayed and, a moment later, published live: the page must get it once.
    e2 = await held.emit(held.acme.tenant_id, "message.received", {"conversation_id": 1, "message_id": 2})
    await held.dispatch()
    other = await held.emit(
        held.globex.tenant_id, "message.received", {"conversation_id": 9, "message_id": 9}
    )
    e3 = await held.emit(held.acme.tenant_id, "conversation.updated", {"conversation_id": 1, "changes": {}})

    again = await held.open(after=e1)
    assert again.ready["replayed"] == 2 and again.ready["resync"] is False
    assert again.ready["cursor"] >= e3
    await held.dispatch()  # e3 now arrives live too, and is dropped
    e4 = await held.emit(held.acme.tenant_id, "message.received", {"conversation_id": 1, "message_id": 4})
    await held.dispatch()
    got = await again.events_until(e4)
    assert [f["id"] for f in got] == [e2, e3, e4]
    assert other not in [f["id"] for f in got]
    assert [f["topic"] for f in got] == ["message.received", "conversation.updated", "message.received"]


async def test_a_reconnect_too_far_back_is_told_to_resync(world: World) -> None:
    base = await world.emit(world.acme.tenant_id, "conversation.queued", {"conversation_id": 0})
    ids = [
        await world.emit(world.acme.tenant_id, "conversation.queued", {"conversation_id": n})
        for n in range(3)
    ]

    world.app[LIVE].replay_limit = 2  # more was missed than a replay carries
    too_many = await world.open(after=base)
    assert (await too_many.expect("resync"))["cursor"] >= ids[-1]
    assert too_many.ready["resync"] is True and too_many.ready["replayed"] == 0
    await too_many.ws.close()

    world.app[LIVE].replay_limit = 500
    async with world.db.transaction() as session:  # the first missed event is too old
        await session.execute(
            update(OutboxEvent)
            .where(OutboxEvent.id == ids[1])
            .values(created_at=utcnow() - REPLAY_WINDOW - timedelta(minutes=1))
        )
    too_old = await world.open(after=ids[0])
    assert too_old.ready["resync"] is True
    await too_old.ws.close()

    recent = await world.open(after=ids[1])  # from there on, all is recent: replayed
    assert recent.ready == {"type": "ready", "cursor": recent.ready["cursor"], "replayed": 1, "resync": False}
    assert (await recent.expect("event"))["id"] == ids[2]

    gone = await world.open(after=10**12)  # nothing after it: nothing to replay, no resync
    assert gone.ready["resync"] is False and gone.ready["replayed"] == 0


# --- several gateways ------------------------------------------------------------------------------


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_an_event_committed_through_one_gateway_reaches_a_socket_on_another(
    aiohttp_client: ClientFactory, db: Database, settings: Settings, redis_url: str
) -> None:
    scaled = dataclasses.replace(settings, redis_url=redis_url)
    a = await _world(aiohttp_client, db, scaled, dispatch_in_process=True)
    # B does not dispatch: what reaches its socket came through A's dispatcher and Redis.
    b_client = await aiohttp_client(create_app(scaled, dispatch_in_process=False))
    inbox_id = await make_twilio_inbox(db, a.acme.tenant_id, "http://127.0.0.1:9", "AC1", "tok")
    conversation_id = await add_conversation(db, a.acme.tenant_id, inbox_id, "+14155550100")
    on_b = await a.open(client=b_client)
    stranger_on_b = await a.open(a.globex, client=b_client)

    response = await a.client.patch(
        f"/api/v1/conversations/{conversation_id}",
        data=json.dumps({"status": "resolved"}),
        headers=a.acme.headers,
    )
    assert response.status == 200
    frame = await on_b.expect("event", "conversation.updated")
    assert frame["payload"]["changes"] == {"status": {"old": "open", "new": "resolved"}}
    marker = await a.emit(a.globex.tenant_id, "conversation.queued", {"conversation_id": 1})
    assert [f["id"] for f in await stranger_on_b.events_until(marker)] == [marker]


# --- presence and typing ---------------------------------------------------------------------------


async def _presence(db: Database, user_id: int) -> str:
    async with db.sessionmaker() as session:
        return str((await session.execute(select(User.presence).where(User.id == user_id))).scalar_one())


async def test_an_agent_goes_offline_after_the_grace_when_their_last_socket_closes(world: World) -> None:
    agent = await make_tenant(world.db, "acme", role=Role.AGENT)
    world.app[LIVE].presence.grace = 0.2
    observer = await world.open(world.acme)
    response = await world.client.put(
        "/api/v1/me/presence", data=json.dumps({"presence": "online"}), headers=agent.headers
    )
    assert response.status == 200, await response.text()
    online = await observer.expect("event", "agent.presence_changed")
    assert online["payload"] == {"user_id": agent.user_id, "presence": "online"}

    tab, api_client = await world.open(agent), await world.open(agent, bearer=True)
    assert world.app[LIVE].presence.open_sockets(agent.user_id) == 2
    await tab.ws.close()
    await eventually(lambda: world.app[LIVE].presence.open_sockets(agent.user_id) == 1)
    assert await _presence(world.db, agent.user_id) == Presence.ONLINE  # another socket is open
    await api_client.ws.close()

    async def offline() -> bool:
        return await _presence(world.db, agent.user_id) == Presence.OFFLINE

    await eventually(offline)
    gone = await observer.expect("event", "agent.presence_changed")
    assert gone["payload"] == {"user_id": agent.user_id, "presence": "offline"}


async def test_typing_goes_between_agents_and_web_chat_visitors(world: World) -> None:
    agent = await make_tenant(world.db, "acme", role=Role.AGENT)
    inbox_id = await make_webchat_inbox(world.client, world.acme, [ORIGIN])
    typist, colleague = await world.open(agent), await world.open(world.acme)
    stranger = await world.open(world.globex)

    ws = await world.client.ws_connect(f"/webchat/{inbox_id}/ws", headers={"Origin": ORIGIN})
    visitor = Chat(ws)
    await visitor.send(type="hello")
    await visitor.expect("history")
    await visitor.say("Hello, anyone?")
    opened = await colleague.expect("event", "conversation.opened")
    conversation_id = opened["payload"]["conversation_id"]
    received = await colleague.expect("event", "message.received")
    assert received["payload"]["conversation_id"] == conversation_id

    await visitor.send(type="typing", typing=True)
    customer = await colleague.expect("event", "conversation.typing")
    assert customer["id"] is None
    assert customer["payload"]["conversation_id"] == conversation_id
    assert customer["payload"]["by"]["type"] == "contact" and customer["payload"]["typing"] is True

    await typist.send(type="typing", conversation_id=conversation_id, typing=True)
    assert (await visitor.expect("typing"))["typing"] is True
    seen = await colleague.expect("event", "conversation.typing")
    assert seen["payload"]["by"] == {"type": "user", "id": agent.user_id, "name": "agent"}
    assert seen["payload"]["typing"] is True
    await typist.send(type="typing", conversation_id=conversation_id, typing=False)
    assert (await visitor.expect("typing"))["typing"] is False

    # Another tenant's conversation is not found; the typist never sees their own typing.
    await stranger.send(type="typing", conversation_id=conversation_id)
    assert (await stranger.expect("error"))["code"] == "not_found"
    await typist.send(type="typing", conversation_id="1")
    assert (await typist.expect("error"))["code"] == "invalid_typing"
    marker = await world.emit(
        world.acme.tenant_id, "conversation.queued", {"conversation_id": conversation_id}
    )
    own = [f for f in await typist.events_until(marker) if f["payload"].get("by", {}).get("type") == "user"]
    assert own == []
    await visitor.ws.close()


async def test_an_unused_tenant_feed_is_closed_and_a_later_socket_subscribes_anew(world: World) -> None:
    feeds, hub = world.app[LIVE].feeds, world.app[HUB]
    feeds.linger = 0.05
    socket = await world.open()
    assert hub.subscriber_count(live_topic(world.acme.tenant_id)) == 1
    await socket.ws.close()
    await eventually(lambda: hub.subscriber_count(live_topic(world.acme.tenant_id)) == 0)

    again = await world.open()
    event = await world.emit(world.acme.tenant_id, "conversation.queued", {"conversation_id": 1})
    assert [f["id"] for f in await again.events_until(event)] == [event]
    assert hub.subscriber_count(live_topic(world.acme.tenant_id)) == 1


async def test_signing_out_closes_open_sockets_and_a_changed_role_applies_to_them(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.app[LIVE].recheck_seconds = 0.1
    agent = await make_tenant(world.db, "acme", role=Role.AGENT)
    cookie = await world.cookie(agent.user_id)
    ws = await world.client.ws_connect(
        "/live", headers={"Cookie": f"parley_session={cookie}", "Origin": world.origin}
    )
    socket = Socket(ws)
    await socket.expect("ready")
    demoted_socket = await world.open(agent)  # another session of the same agent

    async with world.db.transaction() as session:
        await session.execute(update(User).where(User.id == agent.user_id).values(role=Role.MARKETER))
    monkeypatch.setitem(GRANTS, Role.MARKETER, frozenset())  # type: ignore[arg-type]
    async with world.db.transaction() as session:
        await end_session(session, cookie)
    closed = await ws.receive(timeout=10)
    assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 4401)

    # The other session still signs in, now as a marketer without conversations: the next check applies it.
    async def demoted() -> bool:
        return any(
            c.agent.role == Role.MARKETER
            for c in world.app[LIVE].feeds._feeds[world.acme.tenant_id].connections
        )

    await eventually(demoted)
    await world.emit(world.acme.tenant_id, "message.received", {"conversation_id": 1, "message_id": 1})
    marker = await world.emit(
        world.acme.tenant_id, "agent.presence_changed", {"user_id": agent.user_id, "presence": "away"}
    )
    assert [f["topic"] for f in await demoted_socket.events_until(marker)] == ["agent.presence_changed"]


async def test_sockets_are_closed_to_catch_up_when_the_process_falls_behind_the_hub(world: World) -> None:
    socket = await world.open()
    hub, topic = world.app[HUB], live_topic(world.acme.tenant_id)
    # A burst larger than the feed's queue, published without yielding: the oldest are dropped.
    for _ in range(600):
        await hub.publish(
            topic, {"id": None, "frame": '{"type":"event","id":null}', "to": None, "needs": None}
        )
    while True:
        message = await socket.ws.receive(timeout=10)
        if message.type != aiohttp.WSMsgType.TEXT:
            break
    assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE, 4408)

    again = await world.open(after=socket.ready["cursor"])  # what a page does next
    event = await world.emit(world.acme.tenant_id, "conversation.queued", {"conversation_id": 1})
    assert [f["id"] for f in await again.events_until(event)] == [event]


async def test_a_gateway_shutting_down_closes_its_sockets_so_pages_reconnect_elsewhere(world: World) -> None:
    sockets = [await world.open(), await world.open(world.globex, bearer=True)]
    await world.client.server.close()
    for socket in sockets:
        closed = await socket.ws.receive(timeout=10)
        assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1001)
