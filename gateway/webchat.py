"""Web chat's HTTP side: `GET /widget.js`, the visitor WebSocket and the widget's file upload.

The protocol, JSON text frames (see `channels.webchat` for the widget's frames):

1. The widget opens `/webchat/<inbox id>/ws` from a page whose Origin the inbox allows, and sends
   `hello` with its session token (if it has one), the host site's `identifier` and
   `identifier_hash` (logged-in users), and `since`: the last message id it has.
2. The gateway answers `welcome` (a fresh token, the inbox's texts, whether an agent is online),
   then `history` (the visitor's messages after `since`), then pushes `message`, `typing` and
   `presence` (an agent came online or left) frames as they happen. A forged or expired token
   closes the socket with 4401, a wrong identity hash with 4403, both after an `error` frame that
   says why.
3. Visitor messages are acknowledged with `accepted` once stored; a resend of the same id (after a
   dropped connection) is stored once. Replies are acknowledged back with `ack` (delivered, read).
   `contact` carries the pre-chat form or the offline email prompt, `typing` the visitor's typing.
4. Anything wrong with a frame is answered with an `error` frame (`code`, `message`); a frame over
   64 KiB closes the socket with 1009, a flood of messages with 4429, a database failure with 1011
   (the widget reconnects with backoff and resends what was not accepted).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from aiohttp import BodyPartReader, WSCloseCode, WSMsgType, web
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from channels.base import DeliveryStatus, InboundMessage, MalformedPayload, SignatureError
from channels.webchat import (
    IDENTITY_KIND,
    RECEIPT_PREFIX,
    Ack,
    ConsentChoice,
    ContactDetails,
    Hello,
    Say,
    SessionTokens,
    Typing,
    WebChat,
    anonymous_address,
    identified_address,
    parse_frame,
    presence_topic,
    typing_topic,
    visitor_topic,
)
from crm_core.consent import change_consent
from gateway.errors import json_error
from gateway.keys import DB, DIRECTORY, HUB, MEDIA, NOTIFIER, SETTINGS
from gateway.pipeline import ingest
from inbox.linking import announce, ensure_identity, link_email, normalised_email, set_name_if_unknown
from inbox.media_fetch import store_inline_attachments
from inbox.models import Conversation, Message, MessageStatus
from inbox.runtime import InboxRuntime
from parley.audit import Actor
from parley.db import Database
from parley.metrics import INBOUND_MESSAGES
from parley.outbox import Event
from parley.realtime import Hub, HubUnavailable, Subscription
from routing.presence import agents_available

logger = logging.getLogger(__name__)

WIDGET_JS = Path(__file__).parent / "static" / "widget.js"
# A text frame carries at most a 5000-character message; anything much bigger is not the widget.
# Frames up to the hard limit are refused with an error frame that says why; beyond it, aiohttp
# stops reading and closes with 1009 on its own.
MAX_FRAME_BYTES = 64 * 1024
HARD_FRAME_LIMIT = 1024 * 1024
HEARTBEAT_SECONDS = 25.0
HELLO_TIMEOUT = 10.0
HISTORY_LIMIT = 500
# Application close codes (4000-4999): the widget starts a new session after 4401, and stops after 4403.
CLOSE_INVALID_SESSION = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_PROTOCOL = 4400
CLOSE_TOO_FAST = 4429
# Frames that write (messages, contact details): a burst of this many, then this many a second. A
# person typing never gets near it; a script flooding an inbox is cut off, and its widget would
# reconnect with backoff and resend what was not accepted.
WRITE_BURST = 20
WRITES_PER_SECOND = 1.0
# Acks and typing: a reconnect acks a whole history at once, so a far larger budget.
SIGNAL_BURST = 1000
SIGNALS_PER_SECOND = 50.0
# Emitted by routing.presence.set_presence.
PRESENCE_CHANGED_TOPIC = "agent.presence_changed"


@dataclass(slots=True)
class Visitor:
    inbox: InboxRuntime
    channel: WebChat
    address: str


async def _webchat_inbox(request: web.Request) -> InboxRuntime | None:
    inbox_id = request.match_info["inbox_id"]
    if not (inbox_id.isascii() and inbox_id.isdigit() and len(inbox_id) <= 18):
        return None
    inbox = await request.app[DIRECTORY].get(int(inbox_id))
    return inbox if inbox is not None and isinstance(inbox.channel, WebChat) else None


@functools.lru_cache(maxsize=8)
def _tokens_for(secret_key: str) -> SessionTokens:
    return SessionTokens(secret_key)


def _tokens(app: web.Application) -> SessionTokens:
    return _tokens_for(app[SETTINGS].secret_key)


def open_session(tokens: SessionTokens, inbox: InboxRuntime, channel: WebChat, hello: Hello) -> str:
    """The visitor's address for a `hello`; `SignatureError` for a bad token or identity hash."""
    if hello.identifier is not None:
        if not channel.verifies_identity:
            raise SignatureError("this inbox does not verify identities: it has no identity_secret")
        if hello.identifier_hash is None or not channel.identity_hash_valid(
            hello.identifier, hello.identifier_hash
        ):
            raise SignatureError("identifier_hash does not match the identifier")
        return identified_address(inbox.id, hello.identifier)
    if hello.token is not None:
        return tokens.verify(hello.token, inbox.id, max_age=channel.session_max_age)
    return anonymous_address(inbox.id, uuid.uuid4().hex)


def message_frame(message: Message) -> dict[str, Any]:
    """A stored message as the widget shows it: nothing an agent keeps to themselves."""
    return {
        "id": message.id,
        "direction": message.direction,
        "text": message.body,
        "attachments": [
            {
                "url": a.get("url") or None,
                "content_type": a.get("content_type"),
                "filename": a.get("filename"),
            }
            for a in message.attachments
        ],
        "buttons": list(message.extra.get("buttons", ())) if message.direction == "outbound" else [],
        "client_id": message.provider_message_id if message.direction == "inbound" else None,
        "status": message.status,
        "created_at": message.created_at.isoformat(),
    }


async def _thread(db: Database, visitor: Visitor) -> Conversation | None:
    """The visitor's conversation (one per visitor: its thread key is the visitor's address)."""
    async with db.sessionmaker() as session:
        return (
            await session.execute(
                select(Conversation).where(
                    Conversation.inbox_id == visitor.inbox.id, Conversation.thread_key == visitor.address
                )
            )
        ).scalar_one_or_none()


async def history(db: Database, visitor: Visitor, since: int) -> list[dict[str, Any]]:
    """The visitor's messages after id `since`, oldest first (at most the last `HISTORY_LIMIT`)."""
    conversation = await _thread(db, visitor)
    if conversation is None:
        return []
    async with db.sessionmaker() as session:
        rows = (
            await session.execute(
                select(Message)
                .where(
                    Message.conversation_id == conversation.id,
                    Message.id > since,
                    Message.status != MessageStatus.FAILED,
                    Message.private.is_(False),  # agents' notes are never the visitor's to see
                )
                .order_by(Message.id.desc())
                .limit(HISTORY_LIMIT)
            )
        ).scalars()
        return [message_frame(m) for m in reversed(list(rows))]


async def _stored_message(db: Database, inbox_id: int, provider_message_id: str) -> Message | None:
    async with db.sessionmaker() as session:
        return (
            await session.execute(
                select(Message).where(
                    Message.inbox_id == inbox_id, Message.provider_message_id == provider_message_id
                )
            )
        ).scalar_one_or_none()


async def _agents_online(db: Database, tenant_id: int) -> bool:
    async with db.sessionmaker() as session:
        return await agents_available(session, tenant_id)


async def store_visitor_message(app: web.Application, visitor: Visitor, event: InboundMessage) -> Message:
    """Store a visitor's message through the pipeline (a resend is a duplicate) and push it to their tabs."""
    db = app[DB]
    result = await ingest(db, visitor.inbox, [event])
    if result.stored:
        INBOUND_MESSAGES.labels(channel=visitor.inbox.channel_name).inc()
        app[NOTIFIER].notify()
    message = await _stored_message(db, visitor.inbox.id, event.provider_message_id)
    assert message is not None  # just stored, or stored before (a duplicate)
    if result.stored:
        with contextlib.suppress(HubUnavailable):  # the visitor's other tabs catch up on reconnect
            await app[HUB].publish(
                visitor_topic(visitor.address), {"type": "message", "message": message_frame(message)}
            )
    return message


async def save_contact_details(app: web.Application, visitor: Visitor, details: ContactDetails) -> None:
    """Pre-chat form or offline email: the visitor's name and email on their contact, in one transaction."""
    email = normalised_email(details.email) if details.email is not None else None
    db = app[DB]
    for attempt in range(3):
        try:
            async with db.transaction() as session:
                contact = await ensure_identity(
                    session, visitor.inbox.tenant_id, IDENTITY_KIND, visitor.address
                )
                if email is not None:
                    contact = await link_email(session, visitor.inbox.tenant_id, contact, email)
                if details.name is not None:
                    await set_name_if_unknown(session, contact, details.name)
                await announce(session, visitor.inbox.tenant_id, contact)
            break
        except IntegrityError:  # the same address added by a concurrent request: replay, it exists now
            if attempt == 2:
                raise
    app[NOTIFIER].notify()


# A visitor who declines marketing in the widget declines it where marketing reaches them: in the
# chat and by email (the address the pre-chat form or the offline prompt gave).
WIDGET_CONSENT_CHANNELS = ("webchat", "email")


async def save_consent_choice(
    app: web.Application, visitor: Visitor, choice: ConsentChoice, remote: str | None
) -> None:
    """Record the visitor's marketing decision on their contact; audited, announced."""
    changed = False
    async with app[DB].transaction() as session:
        contact = await ensure_identity(session, visitor.inbox.tenant_id, IDENTITY_KIND, visitor.address)
        for channel in WIDGET_CONSENT_CHANNELS:
            changed |= await change_consent(
                session,
                tenant_id=visitor.inbox.tenant_id,
                contact_id=contact.contact_id,
                channel=channel,
                purpose=choice.purpose,
                granted=choice.granted,
                source="webchat-widget",
                actor=Actor("contact", contact.contact_id, remote),
            )
        await announce(session, visitor.inbox.tenant_id, contact)
    if changed or contact.events:
        app[NOTIFIER].notify()


class TokenBucket:
    """`burst` actions at once, then `rate` a second."""

    def __init__(self, burst: int, rate: float) -> None:
        self.burst = burst
        self.rate = rate
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class _Connection:
    """One open widget socket."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse, visitor: Visitor) -> None:
        self.app = request.app
        self.remote = request.remote
        self.ws = ws
        self.visitor = visitor
        self.sent: set[int] = set()
        self.writes = TokenBucket(WRITE_BURST, WRITES_PER_SECOND)
        self.signals = TokenBucket(SIGNAL_BURST, SIGNALS_PER_SECOND)

    async def send(self, frame: Mapping[str, Any]) -> None:
        if not self.ws.closed:
            await self.ws.send_json(frame)

    async def error(self, code: str, message: str) -> None:
        await self.send({"type": "error", "code": code, "message": message})

    async def push_message(self, message: Mapping[str, Any]) -> None:
        """A message once per socket, whether it came from history or the hub."""
        message_id = message.get("id")
        if isinstance(message_id, int):
            if message_id in self.sent:
                return
            self.sent.add(message_id)
        await self.send({"type": "message", "message": message})

    async def forward(self, subscription: Subscription) -> None:
        async for frame in subscription:
            if frame.get("type") == "message" and isinstance(frame.get("message"), dict):
                await self.push_message(frame["message"])
            else:
                await self.send(frame)

    async def handle(self, raw: str) -> None:
        try:
            frame = parse_frame(raw)
        except MalformedPayload as e:
            await self.error("malformed_frame", str(e))
            return
        budget = self.writes if isinstance(frame, Say | ContactDetails | ConsentChoice) else self.signals
        if not budget.take():
            reason = "too many frames in a row; slow down"
            await self.error("rate_limited", reason)
            await self.ws.close(code=CLOSE_TOO_FAST, message=b"rate limited")
            return
        if isinstance(frame, Say):
            try:
                message = await store_visitor_message(
                    self.app, self.visitor, self.visitor.channel.inbound(self.visitor.address, frame)
                )
            except MalformedPayload as e:
                await self.error("malformed_frame", str(e))
                return
            await self.send({"type": "accepted", "id": frame.id, "message_id": message.id})
            await self.push_message(message_frame(message))
        elif isinstance(frame, Typing):
            await self.visitor_typing(frame.typing)
        elif isinstance(frame, Ack):
            await self.ack(frame)
        elif isinstance(frame, ContactDetails):
            try:
                await save_contact_details(self.app, self.visitor, frame)
            except ValueError as e:
                await self.error("invalid_email", str(e))
                return
            await self.send({"type": "contact_saved"})
        elif isinstance(frame, ConsentChoice):
            await save_consent_choice(self.app, self.visitor, frame, self.remote)
            await self.send({"type": "consent_saved", "purpose": frame.purpose, "granted": frame.granted})
        else:
            await self.error("unexpected_frame", "hello is sent once, first")

    async def visitor_typing(self, typing: bool) -> None:
        """Tell agents the visitor is typing: an ephemeral hub message, never stored."""
        conversation = await _thread(self.app[DB], self.visitor)
        if conversation is None:
            return  # nobody to tell until the first message opens the conversation
        with contextlib.suppress(HubUnavailable):
            await self.app[HUB].publish(
                typing_topic(conversation.tenant_id),
                {
                    "topic": "conversation.typing",
                    "conversation_id": conversation.id,
                    "inbox_id": conversation.inbox_id,
                    "contact_id": conversation.contact_id,
                    "typing": typing,
                    "by": {"type": "contact", "id": conversation.contact_id},
                },
            )

    async def ack(self, ack: Ack) -> None:
        """Delivered/read for a reply in the visitor's own conversation, through the status pipeline."""
        conversation = await _thread(self.app[DB], self.visitor)
        async with self.app[DB].sessionmaker() as session:
            known = (
                await session.execute(
                    select(Message.id).where(
                        Message.id == ack.message_id,
                        Message.conversation_id == (conversation.id if conversation else -1),
                        Message.direction == "outbound",
                    )
                )
            ).scalar_one_or_none()
        if known is None:
            await self.error("unknown_message", f"no reply {ack.message_id} in this chat")
            return
        status = DeliveryStatus(provider_message_id=f"{RECEIPT_PREFIX}{ack.message_id}", status=ack.status)
        result = await ingest(self.app[DB], self.visitor.inbox, [status])
        if result.statuses_applied or result.statuses_unmatched:
            self.app[NOTIFIER].notify()


async def _read_hello(ws: web.WebSocketResponse) -> Hello | str:
    """The first frame, which must be `hello`; a string says what went wrong instead."""
    try:
        msg = await ws.receive(timeout=HELLO_TIMEOUT)
    except TimeoutError:
        return "no hello within 10 seconds"
    if msg.type != WSMsgType.TEXT:
        return "the first frame must be a JSON hello"
    try:
        frame = parse_frame(msg.data)
    except MalformedPayload as e:
        return str(e)
    return frame if isinstance(frame, Hello) else "the first frame must be hello"


async def handle_socket(request: web.Request) -> web.StreamResponse:
    """`GET /webchat/{inbox_id}/ws`: a visitor's chat."""
    inbox = await _webchat_inbox(request)
    if inbox is None:
        return json_error(404, "not_found", "web chat inbox not found")
    channel = cast(WebChat, inbox.channel)
    origin = request.headers.get("Origin")
    if not channel.origin_allowed(origin):
        logger.warning("inbox %s: web chat from origin %r refused", inbox.id, origin)
        return json_error(403, "origin_not_allowed", f"origin {origin!r} may not embed this chat")
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, max_msg_size=HARD_FRAME_LIMIT)
    await ws.prepare(request)

    hello = await _read_hello(ws)
    if isinstance(hello, str):
        await ws.send_json({"type": "error", "code": "malformed_frame", "message": hello})
        await ws.close(code=CLOSE_PROTOCOL, message=b"hello expected")
        return ws
    tokens = _tokens(request.app)
    try:
        address = open_session(tokens, inbox, channel, hello)
    except SignatureError as e:
        code, close = (
            ("invalid_session", CLOSE_INVALID_SESSION)
            if hello.identifier is None
            else ("invalid_identity", CLOSE_FORBIDDEN)
        )
        logger.info("inbox %s: web chat session refused: %s", inbox.id, e)
        await ws.send_json({"type": "error", "code": code, "message": str(e)})
        await ws.close(code=close, message=code.encode())
        return ws

    visitor = Visitor(inbox, channel, address)
    connection = _Connection(request, ws, visitor)
    hub = request.app[HUB]
    async with (
        hub.subscribe(visitor_topic(address)) as replies,
        hub.subscribe(presence_topic(inbox.tenant_id)) as presence,
    ):
        # Subscribed before reading history: a reply sent in between arrives twice at most, and
        # `push_message` sends it once.
        await connection.send(
            {
                "type": "welcome",
                "token": tokens.issue(inbox.id, address),
                "identified": hello.identifier is not None,
                "greeting": channel.greeting,
                "offline_text": channel.offline_text,
                "pre_chat_form": channel.pre_chat_form,
                "agents_online": await _agents_online(request.app[DB], inbox.tenant_id),
                "max_upload_bytes": channel.max_upload_bytes,
            }
        )
        messages = await history(request.app[DB], visitor, hello.since)
        connection.sent.update(m["id"] for m in messages)
        await connection.send({"type": "history", "messages": messages})
        forwarders = [asyncio.create_task(connection.forward(s)) for s in (replies, presence)]
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and len(msg.data) > MAX_FRAME_BYTES:
                    reason = f"a frame may carry at most {MAX_FRAME_BYTES} bytes"
                    await connection.error("frame_too_large", reason)
                    await ws.close(code=WSCloseCode.MESSAGE_TOO_BIG, message=reason.encode())
                elif msg.type == WSMsgType.TEXT:
                    try:
                        await connection.handle(msg.data)
                    except SQLAlchemyError:
                        # Nothing was stored; the widget reconnects and resends what was not accepted.
                        logger.exception("inbox %s: web chat frame failed on the database", inbox.id)
                        await connection.error("unavailable", "The chat is briefly unavailable; retrying.")
                        await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"database unavailable")
                elif msg.type == WSMsgType.BINARY:
                    await connection.error(
                        "binary_not_accepted", f"send files with POST /webchat/{inbox.id}/uploads"
                    )
        finally:
            for forwarder in forwarders:
                forwarder.cancel()
            await asyncio.gather(*forwarders, return_exceptions=True)
    if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
        logger.info("inbox %s: web chat frame over %s bytes refused", inbox.id, MAX_FRAME_BYTES)
    return ws


class PresenceAnnouncer:
    """Handler for `agent.presence_changed`: tells the tenant's open widgets whether anyone is online."""

    def __init__(self, db: Database, hub: Hub) -> None:
        self.db = db
        self.hub = hub

    async def announce(self, event: Event) -> None:
        if event.tenant_id is None:
            return
        online = await _agents_online(self.db, event.tenant_id)
        try:
            await self.hub.publish(
                presence_topic(event.tenant_id), {"type": "presence", "agents_online": online}
            )
        except HubUnavailable:  # a hint only: widgets ask again when they reconnect
            logger.warning("could not tell web chat visitors that presence changed", exc_info=True)


def _cors(response: web.Response, origin: str | None) -> web.Response:
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


async def _read_part(part: BodyPartReader, limit: int) -> bytes | None:
    """A part's bytes, or None once it exceeds `limit` (the rest is never read into memory)."""
    chunks = []
    size = 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def handle_upload(request: web.Request) -> web.StreamResponse:
    """`POST /webchat/{inbox_id}/uploads`: a file (multipart: token, id, text, file) from the widget."""
    inbox = await _webchat_inbox(request)
    if inbox is None:
        return json_error(404, "not_found", "web chat inbox not found")
    channel = cast(WebChat, inbox.channel)
    origin = request.headers.get("Origin")
    if not channel.origin_allowed(origin):
        return json_error(403, "origin_not_allowed", f"origin {origin!r} may not embed this chat")

    def fail(status: int, code: str, message: str) -> web.Response:
        return _cors(json_error(status, code, message), origin)

    if request.content_type != "multipart/form-data":
        return fail(400, "malformed_upload", "expected multipart/form-data with token, id, text and file")
    limit = min(channel.max_upload_bytes, request.app[MEDIA].max_bytes)
    fields: dict[str, str] = {}
    file: tuple[str | None, str | None, bytes] | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                return fail(400, "malformed_upload", "nested multipart is not accepted")
            if part.name == "file":
                if file is not None:
                    return fail(400, "malformed_upload", "one file per upload")
                data = await _read_part(part, limit)
                if data is None:
                    return fail(
                        413, "attachment_too_large", f"the file is larger than the {limit}-byte limit"
                    )
                file = (part.filename, part.headers.get("Content-Type"), data)
            elif part.name in ("token", "id", "text"):
                value = await _read_part(part, 20_000)
                if value is None:
                    return fail(400, "malformed_upload", f"{part.name} is too long")
                fields[part.name] = value.decode("utf-8", errors="replace")
    except ValueError as e:  # broken boundaries or headers
        return fail(400, "malformed_upload", f"the multipart body cannot be read: {e}")
    if file is None or not file[2]:
        return fail(400, "malformed_upload", "no file (or an empty one) in the upload")
    token = fields.get("token")
    if not token:
        return fail(401, "invalid_session", "the upload carries no session token")
    try:
        address = _tokens(request.app).verify(token, inbox.id, max_age=channel.session_max_age)
    except SignatureError as e:
        return fail(401, "invalid_session", str(e))
    visitor = Visitor(inbox, channel, address)
    filename, content_type, data = file
    try:
        event = channel.inbound_upload(
            address,
            fields.get("id", ""),
            fields.get("text", ""),
            filename=filename,
            content_type=content_type,
            data=data,
        )
    except MalformedPayload as e:
        return fail(400, "malformed_upload", str(e))
    stored = await store_inline_attachments(request.app[MEDIA], inbox.tenant_id, [event])
    message = await store_visitor_message(request.app, visitor, cast(InboundMessage, stored[0]))
    return _cors(web.json_response({"message": message_frame(message)}, status=201), origin)


async def handle_widget(request: web.Request) -> web.StreamResponse:
    """`GET /widget.js`: the widget, plain JavaScript for a `<script>` tag on any site."""
    return web.FileResponse(
        WIDGET_JS,
        headers={
            "Content-Type": "text/javascript; charset=utf-8",
            "Cache-Control": "public, max-age=300",
            "X-Content-Type-Options": "nosniff",
            "Access-Control-Allow-Origin": "*",
        },
    )


def setup_webchat(app: web.Application) -> None:
    app.router.add_get("/widget.js", handle_widget)
    app.router.add_get("/webchat/{inbox_id}/ws", handle_socket)
    app.router.add_post("/webchat/{inbox_id}/uploads", handle_upload)
