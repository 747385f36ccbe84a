"""`POST /webhooks/{inbox_id}[/{route}]`: verify, parse, store, acknowledge."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from channels.base import InboundEvent, MalformedPayload, SignatureError, WebhookRequest
from gateway.errors import json_error
from gateway.keys import DB, DIRECTORY, MEDIA, NOTIFIER, SETTINGS
from gateway.pipeline import IngestResult, ingest
from inbox.media_fetch import store_inline_attachments
from inbox.runtime import InboxRuntime
from parley.db import Database
from parley.metrics import INBOUND_MESSAGES, WEBHOOKS
from routing.presence import agents_available

logger = logging.getLogger(__name__)

MAX_WEBHOOK_BYTES = 5 * 1024 * 1024
_EMPTY: MultiDictProxy[str] = MultiDictProxy(MultiDict())


async def _inbox(request: web.Request) -> InboxRuntime | None:
    """The inbox a webhook URL names, or None (answered 404 like any unknown path)."""
    inbox_id = request.match_info["inbox_id"]
    # ASCII digits only ("²".isdigit() is true), and short enough for a 64-bit id.
    valid = inbox_id.isascii() and inbox_id.isdigit() and len(inbox_id) <= 18
    inbox = await request.app[DIRECTORY].get(int(inbox_id)) if valid else None
    if inbox is None:
        WEBHOOKS.labels(channel="unknown", outcome="no_inbox").inc()
    return inbox


async def handle_webhook(request: web.Request) -> web.StreamResponse:
    inbox = await _inbox(request)
    if inbox is None:
        return json_error(404, "not_found", "inbox not found")
    channel_name = inbox.channel_name

    limit = inbox.channel.max_webhook_bytes
    if limit is not None and limit > MAX_WEBHOOK_BYTES:
        # The app's client_max_size is the default for every route; this inbox's channel takes more.
        request = request.clone(client_max_size=limit)
    body = await request.read()
    form = _EMPTY
    if request.content_type == "application/x-www-form-urlencoded":
        try:
            form = await request.post()  # type: ignore[assignment]  # values are str for url-encoded forms
        except (UnicodeDecodeError, LookupError) as e:  # bytes that are not text, or an unknown charset
            WEBHOOKS.labels(channel=channel_name, outcome="malformed").inc()
            return json_error(400, "malformed_payload", f"the form body cannot be decoded: {e}")
    hook = WebhookRequest(
        method=request.method,
        url=_public_url(request),
        route=request.match_info.get("route", ""),
        headers=request.headers,
        body=body,
        form=form,
        query=request.query,
    )
    try:
        inbox.channel.verify(hook)
    except SignatureError as e:
        WEBHOOKS.labels(channel=channel_name, outcome="forged").inc()
        logger.warning("inbox %s: rejected webhook: %s", inbox.id, e)
        return json_error(403, "invalid_signature", str(e))
    try:
        events = inbox.channel.parse(hook)
    except MalformedPayload as e:
        WEBHOOKS.labels(channel=channel_name, outcome="malformed").inc()
        logger.warning("inbox %s: malformed webhook: %s", inbox.id, e)
        return json_error(400, "malformed_payload", str(e))

    events, result = await _store(request, inbox, events)
    for sibling in await request.app[DIRECTORY].siblings(inbox, inbox.channel.other_recipients(hook)):
        await _hand_to_sibling(request, sibling, hook)
    WEBHOOKS.labels(channel=channel_name, outcome="duplicate" if result.duplicates else "accepted").inc()
    context = _Context(request.app[DB], inbox.tenant_id, tuple(result.stored))
    reply = await inbox.channel.respond(hook, events, context)
    return web.Response(text=reply.body, content_type=reply.content_type, status=reply.status)


async def _hand_to_sibling(request: web.Request, sibling: InboxRuntime, hook: WebhookRequest) -> None:
    """Store the events a request carries for another inbox of the same provider account."""
    try:
        sibling.channel.verify(hook)  # the same app signs with the same secret; another app does not
        events = sibling.channel.parse(hook)
    except (SignatureError, MalformedPayload) as e:
        logger.warning(
            "inbox %s: events for it arrived on another inbox's URL and were refused: %s", sibling.id, e
        )
        return
    await _store(request, sibling, events)


async def _store(
    request: web.Request, inbox: InboxRuntime, events: Sequence[InboundEvent]
) -> tuple[Sequence[InboundEvent], IngestResult]:
    """Store inline files and the events, wake the dispatcher if anything changed, count them."""
    events = await store_inline_attachments(request.app[MEDIA], inbox.tenant_id, events)
    result = await ingest(request.app[DB], inbox, events)
    if result.stored or result.statuses_applied:
        request.app[NOTIFIER].notify()
    INBOUND_MESSAGES.labels(channel=inbox.channel_name).inc(len(result.stored))
    return events, result


@dataclass(frozen=True, slots=True)
class _Context:
    """What a channel may ask while answering a webhook (`channels.base.WebhookContext`)."""

    db: Database
    tenant_id: int
    stored_message_ids: Sequence[int]

    async def agents_available(self) -> bool:
        """Whether an agent of the tenant is online (asked only by channels that route live calls)."""
        async with self.db.engine.connect() as conn:
            return await agents_available(conn, self.tenant_id)


async def handle_handshake(request: web.Request) -> web.StreamResponse:
    """A provider checking the webhook URL before using it (Meta's `hub.challenge`)."""
    inbox = await _inbox(request)
    if inbox is None:
        return json_error(404, "not_found", "inbox not found")
    hook = WebhookRequest(
        method=request.method,
        url=_public_url(request),
        route=request.match_info.get("route", ""),
        headers=request.headers,
        body=b"",
        query=request.query,
    )
    try:
        reply = inbox.channel.handshake(hook)
    except SignatureError as e:
        WEBHOOKS.labels(channel=inbox.channel_name, outcome="forged").inc()
        return json_error(403, "invalid_signature", str(e))
    if reply is None:
        return json_error(405, "method_not_allowed", f"{inbox.channel_name} webhooks are POSTed")
    return web.Response(text=reply.body, content_type=reply.content_type, status=reply.status)


def _public_url(request: web.Request) -> str:
    """The URL as the provider called it: behind a proxy, rebuilt from PARLEY_PUBLIC_URL."""
    public_url = request.app[SETTINGS].public_url
    return f"{public_url}{request.path_qs}" if public_url else str(request.url)


def setup_webhooks(app: web.Application) -> None:
    for path in ("/webhooks/{inbox_id}", "/webhooks/{inbox_id}/{route}"):
        app.router.add_post(path, handle_webhook)
        app.router.add_get(path, handle_handshake)
