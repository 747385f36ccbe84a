"""Live updates for agents: `GET /live`, a WebSocket that pushes what changed in the tenant.

The protocol, JSON text frames:

1. The page opens `/live` (its session cookie, and an `Origin` that is the gateway's own, so
   another site cannot open it with the agent's cookie) or an API client sends
   `Authorization: Bearer <token>`. A reconnect adds `?after=<id>`: the last event id it saw.
2. The gateway subscribes to the tenant's hub topics first, then replays the tenant's outbox events
   after `after` that this agent may see (`event` frames), or sends `resync` when that is too far
   back (more than `REPLAY_LIMIT` events or `REPLAY_WINDOW`): the page reloads what it shows. Then
   `ready` with `cursor`, the id to resume from, and from there on live `event` frames; a live
   event already replayed is not sent twice.
3. `event` frames: `{"type": "event", "id": <outbox id or null>, "topic": ..., "payload": {...}}`.
   Payloads are compact (ids and the few fields a list row needs; see `AGENT_TOPICS`): the page
   fetches the rest through the API, with the agent's own permissions. `conversation.typing`
   (id null) is ephemeral: an agent's or a web chat visitor's typing.
4. The page sends `{"type": "typing", "conversation_id": N, "typing": true|false}` while its agent
   types: the tenant's other agents get `conversation.typing`, and a web chat visitor sees it too.
   `{"type": "ping"}` is answered with `pong`. Anything else gets an `error` frame.

Each socket counts toward its agent's presence (`routing.presence.SocketPresence`): when an agent's
last socket closes (on every gateway: a Redis census with `PARLEY_REDIS_URL`), they go offline
after a grace period. A socket that falls too far behind is closed with 4408; its page reconnects
and catches up. The session or token is checked again every
minute or so: signed out, revoked or deactivated closes the socket with 4401.

A limit of resuming from one id: the dispatcher publishes a conversation's events in id order, but
events of different conversations (or committed out of id order) can go out in another order.
A page that drops in that instant can miss one such event on reconnect; it refetches its list on
`parley:reconnected` anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from aiohttp import WSMsgType, web
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from channels.webchat import WebChat, normalise_origin, typing_topic, visitor_topic
from crm_core.models import ChannelIdentity
from gateway.api.permissions import Permission, allows
from gateway.keys import DB, HUB, NOTIFIER, SETTINGS
from gateway.ui.web import signed_in_user
from gateway.webchat import TokenBucket
from inbox.models import Conversation, Inbox
from parley.auth import Principal, authenticate_token
from parley.db import Database, utcnow
from parley.models import OutboxEvent, Role, User
from parley.outbox import Event, Handler, RetryLater
from parley.realtime import Hub, HubUnavailable, LocalHub, Subscription
from parley.sessions import SESSION_COOKIE, resume_session
from routing.presence import RedisSocketCensus, SocketPresence

logger = logging.getLogger(__name__)

LIVE_PATH = "/live"
# A reconnect replays at most this many events, from at most this long ago; beyond, `resync`.
REPLAY_LIMIT = 500
REPLAY_WINDOW = timedelta(minutes=10)
HEARTBEAT_SECONDS = 25.0
MAX_FRAME_BYTES = 4096
PRESENCE_GRACE_SECONDS = 30.0
# Typing frames: a person sends one every few seconds; a script gets cut off quietly.
TYPING_BURST = 20
TYPING_PER_SECOND = 5.0
# A payload bigger than this (a huge label list in `changes`) loses its `changes`; the page refetches.
MAX_PAYLOAD_CHARS = 4096
CLOSE_FELL_BEHIND = 4408
CLOSE_SIGNED_OUT = 4401
# An open socket checks its session or token again this often: signing out (or a revoked token, a
# deactivated user, a changed role) reaches open sockets within about this long.
RECHECK_SECONDS = 60.0
# A socket with this much unsent is not reading: it is closed before the fan-out would wait on it.
MAX_BUFFERED_BYTES = 32 * 1024
TYPING_TOPIC = "conversation.typing"


@dataclass(frozen=True, slots=True)
class AgentTopic:
    """What agents see of one outbox topic: which payload fields, who may, and whether it is personal."""

    fields: tuple[str, ...]
    permission: Permission | None = Permission.READ_CONVERSATIONS
    # Personal events go only to the user named by the payload's `user_id` (their notifications).
    personal: bool = False


_CONVERSATION = ("conversation_id", "inbox_id", "contact_id")

AGENT_TOPICS: Mapping[str, AgentTopic] = {
    "conversation.opened": AgentTopic(_CONVERSATION),
    "conversation.reopened": AgentTopic(_CONVERSATION),
    "conversation.updated": AgentTopic((*_CONVERSATION, "changes", "changed_by", "reason")),
    "conversation.assigned": AgentTopic((*_CONVERSATION, "assignee_id")),
    "conversation.queued": AgentTopic(("conversation_id",)),
    "conversation.read": AgentTopic(("conversation_id", "user_id", "last_read_message_id"), personal=True),
    "message.received": AgentTopic(("conversation_id", "inbox_id", "message_id", "contact_id")),
    "message.outbound": AgentTopic(("conversation_id", "inbox_id", "message_id")),
    "message.updated": AgentTopic(("conversation_id", "message_id", "status")),
    "note.created": AgentTopic(
        ("conversation_id", "inbox_id", "message_id", "author_id", "private", "mentions")
    ),
    "notification.created": AgentTopic(
        ("notification_id", "user_id", "kind", "conversation_id", "message_id", "actor_id", "task_id"),
        permission=None,
        personal=True,
    ),
    "notification.read": AgentTopic(("user_id", "notification_ids"), permission=None, personal=True),
    # Who is online is no secret inside a tenant: every member's screen shows it.
    "agent.presence_changed": AgentTopic(("user_id", "presence"), permission=None),
}


def live_topic(tenant_id: int) -> str:
    """The hub topic every agent socket of a tenant listens on."""
    return f"tenant:{tenant_id}:live"


@dataclass(frozen=True, slots=True)
class Pushed:
    """An agent-facing event: the frame's text once, and who may receive it."""

    id: int
    frame: str
    to: int | None
    needs: Permission | None

    def as_message(self) -> dict[str, Any]:
        return {"id": self.id, "frame": self.frame, "to": self.to, "needs": self.needs}


def agent_event(event_id: int, topic: str, payload: Mapping[str, Any]) -> Pushed | None:
    """The compact version of an outbox event that agents' screens get, or None if they get nothing."""
    spec = AGENT_TOPICS.get(topic)
    if spec is None:
        return None
    compact = {key: payload[key] for key in spec.fields if key in payload}
    to: int | None = None
    if spec.personal:
        user_id = payload.get("user_id")
        if not isinstance(user_id, int):
            return None
        to = user_id
    frame = _dumps({"type": "event", "id": event_id, "topic": topic, "payload": compact})
    if len(frame) > MAX_PAYLOAD_CHARS:
        compact.pop("changes", None)
        compact["truncated"] = True
        frame = _dumps({"type": "event", "id": event_id, "topic": topic, "payload": compact})
    return Pushed(event_id, frame, to, spec.permission)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


class LivePublisher:
    """Outbox handler: one hub publish per event, to the tenant's agents (across processes with Redis)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    async def publish(self, event: Event) -> None:
        if event.tenant_id is None:
            return
        topic = live_topic(event.tenant_id)
        if isinstance(self.hub, LocalHub) and not self.hub.subscriber_count(topic):
            return  # nobody of the tenant is connected to this (only) process
        pushed = agent_event(event.id, event.topic, event.payload)
        if pushed is None:
            return
        try:
            await self.hub.publish(topic, pushed.as_message())
        except HubUnavailable as e:
            # Late is better than never: open pages would otherwise miss it until they reconnect.
            raise RetryLater(str(e), delay=1.0) from e


def live_subscribers(hub: Hub) -> dict[str, list[Handler]]:
    """The outbox topics agents' screens follow, each with the live publisher."""
    publish = LivePublisher(hub).publish
    return {topic: [publish] for topic in AGENT_TOPICS}


@dataclass
class LiveState:
    """The process's live sockets: presence counting, and the replay bounds (tests shorten them)."""

    presence: SocketPresence
    feeds: TenantFeeds
    replay_limit: int = REPLAY_LIMIT
    replay_window: timedelta = REPLAY_WINDOW
    recheck_seconds: float = RECHECK_SECONDS
    sockets: set[web.WebSocketResponse] = field(default_factory=set)


LIVE = web.AppKey("live", LiveState)


@dataclass(slots=True)
class Agent:
    """Who a live socket belongs to."""

    tenant_id: int
    user_id: int
    role: Role
    name: str
    # What signed the socket in, checked again while it stays open: an API token or a session cookie.
    credential: str
    bearer: bool

    def may(self, permission: Permission | None) -> bool:
        return permission is None or allows(self.role, permission)

    async def still_signed_in(self, db: Database) -> Principal | None:
        """The principal the credential stands for now (None: revoked, signed out, deactivated)."""
        async with db.transaction() as session:
            if self.bearer:
                return await authenticate_token(session, self.credential)
            user = await resume_session(session, self.credential)
            return None if user is None else user.principal


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def own_origins(request: web.Request) -> set[str]:
    """The gateway's own origins: its public URL, and the scheme and host this request reached."""
    origins = {normalise_origin(f"{request.scheme}://{request.host}")}
    public_url = request.app[SETTINGS].public_url
    if public_url:
        origins.add(normalise_origin(public_url))
    return {o for o in origins if o is not None}


async def _authenticate(request: web.Request) -> Agent | web.Response:
    token = _bearer(request)
    if token is None:
        if not request.cookies.get(SESSION_COOKIE):
            return web.json_response({"error": "sign in first"}, status=401)
        # Browsers send Origin with every WebSocket: a page on another site must not ride the cookie.
        origin = normalise_origin(request.headers.get("Origin", ""))
        if origin is None or origin not in own_origins(request):
            return web.json_response({"error": "cross-origin live socket refused"}, status=403)
    async with request.app[DB].transaction() as session:
        if token is not None:
            principal = await authenticate_token(session, token)
            if principal is None:
                return web.json_response({"error": "unknown or revoked token"}, status=401)
            user = await session.get(User, principal.user_id)
            name = (user.name or user.email.split("@", 1)[0]) if user is not None else ""
            return Agent(principal.tenant_id, principal.user_id, principal.role, name, token, bearer=True)
        signed_in = await signed_in_user(request, session)
        if signed_in is None:
            return web.json_response({"error": "the session ended; sign in again"}, status=401)
        p = signed_in.principal
        cookie = request.cookies[SESSION_COOKIE]
        return Agent(p.tenant_id, p.user_id, p.role, signed_in.display_name, cookie, bearer=False)


def _after(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise web.HTTPBadRequest(text="after must be an event id")
    return int(raw)


class LiveConnection:
    """One open agent socket."""

    def __init__(
        self,
        app: web.Application,
        ws: web.WebSocketResponse,
        agent: Agent,
        transport: asyncio.Transport | None,
    ) -> None:
        self.app = app
        self.db: Database = app[DB]
        self.hub: Hub = app[HUB]
        self.ws = ws
        self.agent = agent
        self.transport = transport
        self.replayed: set[int] = set()
        self.catching_up = True
        self.buffer: list[Mapping[str, Any]] = []
        self.closing = False
        self._closer: asyncio.Task[bool] | None = None
        self._recheck: asyncio.TimerHandle | None = None
        self._rechecking: asyncio.Task[None] | None = None
        self.typing = TokenBucket(TYPING_BURST, TYPING_PER_SECOND)
        # conversation id -> web chat visitor address ("" for other channels); tenant-checked.
        self._conversations: dict[int, str] = {}

    def may_receive(self, message: Mapping[str, Any]) -> bool:
        to = message.get("to")
        if to is not None and to != self.agent.user_id:
            return False
        needs = message.get("needs")
        return self.agent.may(Permission(needs) if needs else None)

    async def catch_up(self, state: LiveState, after: int | None) -> None:
        """Replay what the agent missed since `after` (or say `resync`), then `ready`."""
        async with self.db.sessionmaker() as session:
            cursor = int((await session.execute(select(func.max(OutboxEvent.id)))).scalar() or 0)
            resync = False
            if after is not None:
                resync, rows = await self._missed(session, state, after)
                if not resync:
                    for row_id, topic, payload in rows:
                        pushed = agent_event(row_id, topic, payload)
                        if pushed is not None and self.may_receive(pushed.as_message()):
                            await self.ws.send_str(pushed.frame)
                        self.replayed.add(row_id)
                    if rows:
                        cursor = max(cursor, rows[-1][0])
        if resync:
            await self.ws.send_str(_dumps({"type": "resync", "cursor": cursor}))
        await self.ws.send_str(
            _dumps({"type": "ready", "cursor": cursor, "replayed": len(self.replayed), "resync": resync})
        )

    async def _missed(
        self, session: AsyncSession, state: LiveState, after: int
    ) -> tuple[bool, list[tuple[int, str, Mapping[str, Any]]]]:
        """(resync?, the tenant's agent-facing events after `after`, oldest first)."""
        first = (
            await session.execute(
                select(OutboxEvent.created_at).where(OutboxEvent.id > after).order_by(OutboxEvent.id).limit(1)
            )
        ).scalar()
        if first is None:
            return False, []  # nothing happened since
        cutoff = utcnow() - state.replay_window
        known = (
            await session.execute(select(OutboxEvent.created_at).where(OutboxEvent.id == after))
        ).scalar()
        # Too long ago, or the event the page last saw is gone (purged): what it missed may be too.
        if first < cutoff or known is None:
            return True, []
        rows = (
            await session.execute(
                select(OutboxEvent.id, OutboxEvent.topic, OutboxEvent.payload)
                .where(
                    OutboxEvent.id > after,
                    OutboxEvent.tenant_id == self.agent.tenant_id,
                    OutboxEvent.topic.in_(list(AGENT_TOPICS)),
                )
                .order_by(OutboxEvent.id)
                .limit(state.replay_limit + 1)
            )
        ).all()
        if len(rows) > state.replay_limit:
            return True, []
        return False, [(int(r.id), str(r.topic), r.payload) for r in rows]

    def offer(self, message: Mapping[str, Any]) -> Awaitable[None] | None:
        """A live event from the tenant's feed: buffered while the replay runs, else sent."""
        if self.catching_up:
            self.buffer.append(message)
            return None
        return self.deliver(message)

    def deliver(self, message: Mapping[str, Any]) -> Awaitable[None] | None:
        """Send `message` if it is for this agent and was not replayed; None when nothing is to await."""
        event_id = message.get("id")
        if event_id is not None and event_id in self.replayed:
            self.replayed.discard(event_id)
            return None
        if self.closing or not self.may_receive(message):
            return None
        transport = self.transport
        if transport is None or transport.is_closing():
            return None
        if transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
            # A page that does not read: drop it rather than hold the whole tenant's fan-out.
            # It reconnects and catches up from its last event id.
            self.fell_behind()
            return None
        return self.ws.send_str(message["frame"])

    def offer_typing(self, message: Mapping[str, Any], frame: str) -> Awaitable[None] | None:
        """Someone's typing (not this agent's own), to agents who read conversations."""
        by = message.get("by") or {}
        if by.get("type") == "user" and by.get("id") == self.agent.user_id:
            return None
        return self.deliver({"id": None, "frame": frame, "to": None, "needs": Permission.READ_CONVERSATIONS})

    async def go_live(self) -> None:
        """After the replay: send what arrived meanwhile (minus what was replayed), then live."""
        while self.buffer:
            pending, self.buffer = self.buffer, []
            for message in pending:
                sending = self.deliver(message)
                if sending is not None:
                    await sending
        self.catching_up = False  # no await since the buffer was last seen empty: nothing slips by

    def schedule_recheck(self, interval: float) -> None:
        """Check the credential again in about `interval` seconds (jittered: sockets opened together
        do not all query at once)."""
        self._recheck = asyncio.get_running_loop().call_later(
            interval * random.uniform(0.8, 1.2), self._start_recheck, interval
        )

    def _start_recheck(self, interval: float) -> None:
        self._rechecking = asyncio.get_running_loop().create_task(self._check_credential(interval))

    async def _check_credential(self, interval: float) -> None:
        try:
            principal = await self.agent.still_signed_in(self.db)
        except SQLAlchemyError:  # the database hiccuped: not a reason to sign anyone out
            logger.warning("could not re-check a live socket's credential", exc_info=True)
        else:
            if principal is None:
                self.closing = True
                await self.ws.close(code=CLOSE_SIGNED_OUT, message=b"signed out")
                return
            self.agent.role = principal.role  # a changed role applies from now on
        if not self.ws.closed:
            self.schedule_recheck(interval)

    def stop_recheck(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
        if self._rechecking is not None and self._rechecking is not asyncio.current_task():
            self._rechecking.cancel()

    def fell_behind(self) -> None:
        if self.closing:
            return
        self.closing = True
        # Lost messages cannot be told apart from none: close, and the page reconnects and catches up.
        logger.warning("live socket of user %s fell behind; closing it", self.agent.user_id)
        self._closer = asyncio.get_running_loop().create_task(
            self.ws.close(code=CLOSE_FELL_BEHIND, message=b"fell behind")
        )

    async def receive(self, raw: str) -> None:
        """One frame from the page."""
        try:
            frame = json.loads(raw)
        except ValueError:
            await self.error("invalid_json", "frames are JSON objects")
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "ping":
            await self.ws.send_str(_dumps({"type": "pong"}))
        elif kind == "typing":
            await self.agent_typing(frame)
        else:
            await self.error("unknown_frame", "expected typing or ping")

    async def agent_typing(self, frame: Mapping[str, Any]) -> None:
        conversation_id = frame.get("conversation_id")
        typing = frame.get("typing", True)
        if type(conversation_id) is not int or not isinstance(typing, bool):
            await self.error("invalid_typing", "typing needs an integer conversation_id and a boolean typing")
            return
        if not self.agent.may(Permission.SEND_MESSAGES):
            await self.error(
                "forbidden", f"the {self.agent.role} role lacks the {Permission.SEND_MESSAGES} permission"
            )
            return
        if not self.typing.take():
            return  # a flood: typing is a hint, dropping some costs nothing
        address = await self._visitor_address(conversation_id)
        if address is None:
            await self.error("not_found", "no such conversation")
            return
        tenant_id = self.agent.tenant_id
        with contextlib.suppress(HubUnavailable):  # a hint: the next keystroke sends it again
            await self.hub.publish(
                typing_topic(tenant_id),
                {
                    "topic": TYPING_TOPIC,
                    "conversation_id": conversation_id,
                    "typing": typing,
                    "by": {"type": "user", "id": self.agent.user_id, "name": self.agent.name},
                },
            )
            if address:
                await self.hub.publish(visitor_topic(address), {"type": "typing", "typing": typing})

    async def _visitor_address(self, conversation_id: int) -> str | None:
        """The web chat visitor's address, "" on other channels, None if not the tenant's conversation."""
        cached = self._conversations.get(conversation_id)
        if cached is not None:
            return cached
        async with self.db.sessionmaker() as session:
            found = (
                await session.execute(
                    select(Inbox.channel, ChannelIdentity.address)
                    .select_from(Conversation)
                    .join(Inbox, Inbox.id == Conversation.inbox_id)
                    .join(ChannelIdentity, ChannelIdentity.id == Conversation.identity_id)
                    .where(Conversation.id == conversation_id, Conversation.tenant_id == self.agent.tenant_id)
                )
            ).one_or_none()
        if found is None:
            return None
        address = found.address if found.channel == WebChat.name else ""
        if len(self._conversations) >= 64:
            self._conversations.clear()
        self._conversations[conversation_id] = address
        return address

    async def error(self, code: str, message: str) -> None:
        await self.ws.send_str(_dumps({"type": "error", "code": code, "message": message}))


async def live_socket(request: web.Request) -> web.StreamResponse:
    """`GET /live`: the agent's live updates (see the module docstring for the protocol)."""
    after = _after(request.query.get("after"))
    agent = await _authenticate(request)
    if isinstance(agent, web.Response):
        return agent
    state = request.app[LIVE]
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, max_msg_size=MAX_FRAME_BYTES, compress=False)
    await ws.prepare(request)
    transport = request.transport
    connection = LiveConnection(request.app, ws, agent, transport)
    state.presence.socket_opened(agent.tenant_id, agent.user_id)
    state.sockets.add(ws)
    try:
        # Joined (and the tenant's feed subscribed) before the replay reads the outbox: an event
        # committed in between arrives live, and is buffered until the replay is sent.
        await state.feeds.join(connection)
        try:
            await connection.catch_up(state, after)
            await connection.go_live()
            connection.schedule_recheck(state.recheck_seconds)
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await connection.receive(message.data)
        finally:
            connection.stop_recheck()
            state.feeds.leave(connection)
    except (HubUnavailable, TimeoutError, OSError):
        logger.warning("live socket could not subscribe or send", exc_info=True)
        await ws.close(code=1011, message=b"realtime unavailable")
    finally:
        state.sockets.discard(ws)
        state.presence.socket_closed(agent.tenant_id, agent.user_id)
    return ws


class TenantFeed:
    """The tenant's hub topics, read once per process and fanned out to its agent sockets here.

    One subscription per tenant rather than per socket: each event is decoded once and written to
    every socket in one loop, with no task or queue per socket.
    """

    def __init__(self, hub: Hub, tenant_id: int) -> None:
        self.hub = hub
        self.tenant_id = tenant_id
        self.connections: set[LiveConnection] = set()
        self.ready = asyncio.Event()
        self.failed: BaseException | None = None
        self.unsubscribing = False
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            async with (
                self.hub.subscribe(live_topic(self.tenant_id)) as events,
                self.hub.subscribe(typing_topic(self.tenant_id)) as typing,
            ):
                self.ready.set()
                await asyncio.gather(self._events(events), self._typing(typing))
        except (HubUnavailable, TimeoutError, OSError) as e:
            self.failed = e
            self.ready.set()
            raise

    async def _events(self, events: Subscription) -> None:
        async for message in events:
            self._check(events)
            for connection in list(self.connections):
                sending = connection.offer(message)
                if sending is not None:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await sending

    async def _typing(self, typing: Subscription) -> None:
        async for message in typing:
            self._check(typing)
            payload = {k: v for k, v in message.items() if k != "topic"}
            frame = _dumps({"type": "event", "id": None, "topic": TYPING_TOPIC, "payload": payload})
            for connection in list(self.connections):
                sending = connection.offer_typing(message, frame)
                if sending is not None:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await sending

    def _check(self, subscription: Subscription) -> None:
        if subscription.dropped:  # this process fell behind the hub: every socket starts over
            subscription.dropped = 0
            for connection in list(self.connections):
                connection.fell_behind()


class TenantFeeds:
    """This process's tenant feeds; a feed nobody uses is closed after `linger` seconds."""

    def __init__(self, hub: Hub, *, linger: float = 60.0) -> None:
        self.hub = hub
        self.linger = linger
        self._feeds: dict[int, TenantFeed] = {}
        self._closing: dict[int, asyncio.Task[None]] = {}

    async def join(self, connection: LiveConnection) -> None:
        """Add the socket to its tenant's feed, once that feed listens (`HubUnavailable` if it cannot)."""
        tenant_id = connection.agent.tenant_id
        closing = self._closing.get(tenant_id)
        if closing is not None:
            feed = self._feeds.get(tenant_id)
            if feed is not None and not feed.unsubscribing:  # still lingering: keep it
                closing.cancel()
                del self._closing[tenant_id]
            else:  # unsubscribing right now: let it finish, then subscribe anew
                await asyncio.shield(closing)
        feed = self._feeds.get(tenant_id)
        if feed is None or feed.failed is not None:
            feed = self._feeds[tenant_id] = TenantFeed(self.hub, tenant_id)
        feed.connections.add(connection)
        try:
            await asyncio.wait_for(asyncio.shield(feed.ready.wait()), 10)
        except TimeoutError:
            feed.connections.discard(connection)
            raise
        if feed.failed is not None:
            feed.connections.discard(connection)
            raise HubUnavailable(f"could not subscribe: {feed.failed!r}")

    def leave(self, connection: LiveConnection) -> None:
        tenant_id = connection.agent.tenant_id
        feed = self._feeds.get(tenant_id)
        if feed is None:
            return
        feed.connections.discard(connection)
        if not feed.connections and tenant_id not in self._closing:
            self._closing[tenant_id] = asyncio.get_running_loop().create_task(self._close_later(feed))

    async def _close_later(self, feed: TenantFeed) -> None:
        try:
            await asyncio.sleep(self.linger)
            if feed.connections or self._feeds.get(feed.tenant_id) is not feed:
                return
            feed.unsubscribing = True
            del self._feeds[feed.tenant_id]
            feed.task.cancel()
            await asyncio.gather(feed.task, return_exceptions=True)
        finally:
            if self._closing.get(feed.tenant_id) is asyncio.current_task():
                del self._closing[feed.tenant_id]

    async def close(self) -> None:
        tasks = [*self._closing.values(), *(feed.task for feed in self._feeds.values())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._feeds.clear()
        self._closing.clear()


def setup_live(app: web.Application, *, presence_grace: float = PRESENCE_GRACE_SECONDS) -> None:
    """Register `GET /live` and the presence counting of this process's agent sockets."""

    def wake() -> None:
        notifier = app.get(NOTIFIER)
        if notifier is not None:
            notifier.notify()

    redis_url = app[SETTINGS].redis_url
    census = None if redis_url is None else RedisSocketCensus(redis_url)
    presence = SocketPresence(app[DB], grace=presence_grace, notify=wake, census=census)
    app[LIVE] = LiveState(presence, TenantFeeds(app[HUB]))

    async def close_sockets(app: web.Application) -> None:
        # Going away: pages reconnect (to another process behind the balancer) and catch up.
        closing = [ws.close(code=1001, message=b"server shutting down") for ws in app[LIVE].sockets]
        await asyncio.gather(*closing, return_exceptions=True)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[LIVE].feeds.close()
        await app[LIVE].presence.close()

    app.on_shutdown.append(close_sockets)
    app.cleanup_ctx.append(lifecycle)
    app.router.add_get(LIVE_PATH, live_socket)


__all__ = [
    "AGENT_TOPICS",
    "LIVE",
    "LivePublisher",
    "LiveState",
    "agent_event",
    "live_subscribers",
    "live_topic",
    "setup_live",
]
