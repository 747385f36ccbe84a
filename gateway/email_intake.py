"""Email intake: one raw message into the inbox it was sent to, for SMTP, IMAP and webhooks alike.

Find the inbox by recipient address (exact, case-insensitive, across tenants; a `+tag` is
ignored), parse, turn the mail into events (a bounce marks the message it reports failed; an
auto-reply is dropped so it neither opens a conversation nor gets an answer), store attachments
in the media store, ingest, wake the dispatcher. A message that cannot be parsed is rejected with
the parser's reason and logged, and nothing of it is stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from sqlalchemy import select

from channels.base import DeliveryStatus, InboundMessage, MalformedPayload
from channels.email.channel import Email, base_address
from channels.email.mime import parse_email
from channels.email.smtp_server import start_smtp_server
from gateway.keys import DB, DIRECTORY, MEDIA, NOTIFIER
from gateway.notify import CeleryNotifier, Notifier
from gateway.pipeline import ingest
from gateway.wiring import build_runtime
from inbox.media_fetch import store_inline_attachments
from inbox.models import Inbox
from inbox.runtime import InboxDirectory, InboxRuntime
from parley.db import Database
from parley.media import MediaStore
from parley.metrics import INBOUND_MESSAGES
from parley.settings import Settings

logger = logging.getLogger(__name__)

EMAIL_CHANNEL = "email"

Status = Literal["stored", "duplicate", "bounce", "ignored", "rejected"]


@dataclass(frozen=True, slots=True)
class IntakeOutcome:
    """What became of one message: stored, a duplicate, a bounce applied, ignored, or rejected."""

    status: Status
    reason: str = ""
    inbox_id: int | None = None
    message_ids: tuple[int, ...] = ()

    @property
    def rejected(self) -> bool:
        return self.status == "rejected"


@dataclass(slots=True)
class EmailIntake:
    """What the intake needs; the gateway, `parley smtp` and the IMAP poller each build one."""

    db: Database
    directory: InboxDirectory
    media: MediaStore
    notifier: Notifier
    # How long the address → inbox map is kept; inboxes changed elsewhere are seen after this.
    address_ttl: float = 10.0
    _addresses: dict[str, int] = field(default_factory=dict)
    _loaded_at: float = float("-inf")

    async def find_inbox(self, address: str) -> InboxRuntime | None:
        """The email inbox receiving for `address` (any tenant), or None."""
        address = address.strip().strip("<>").lower()
        if time.monotonic() - self._loaded_at > self.address_ttl:
            await self._load_addresses()
        inbox_id = self._addresses.get(address) or self._addresses.get(base_address(address))
        if inbox_id is None:
            return None
        inbox = await self.directory.get(inbox_id)
        return inbox if inbox is not None and isinstance(inbox.channel, Email) else None

    async def accept(
        self,
        raw: bytes,
        *,
        envelope_recipients: Sequence[str],
        inbox: InboxRuntime | None = None,
        envelope_sender: str | None = None,
    ) -> IntakeOutcome:
        """`accept_email` with this intake (the SMTP server's hook)."""
        return await accept_email(
            self, raw, envelope_recipients=envelope_recipients, inbox=inbox, envelope_sender=envelope_sender
        )

    def forget_addresses(self) -> None:
        """Read the inboxes' addresses again on the next lookup."""
        self._loaded_at = float("-inf")

    async def _load_addresses(self) -> None:
        async with self.db.sessionmaker() as session:
            rows = (
                await session.execute(select(Inbox.id, Inbox.settings).where(Inbox.channel == EMAIL_CHANNEL))
            ).all()
        claims: dict[str, set[int]] = {}
        for inbox_id, settings in rows:
            addresses = (settings or {}).get("addresses") or []
            for address in addresses if isinstance(addresses, list) else []:
                if isinstance(address, str):
                    claims.setdefault(address.strip().lower(), set()).add(inbox_id)
        mapping: dict[str, int] = {}
        for address, inbox_ids in claims.items():
            if len(inbox_ids) > 1:
                # Two inboxes (maybe of two tenants) claim one address: deliver to neither.
                logger.error(
                    "address %s is claimed by inboxes %s: mail to it is refused", address, sorted(inbox_ids)
                )
                continue
            mapping[address] = next(iter(inbox_ids))
        self._addresses = mapping
        self._loaded_at = time.monotonic()


async def accept_email(
    runtime: EmailIntake,
    raw: bytes,
    *,
    envelope_recipients: Sequence[str],
    inbox: InboxRuntime | None = None,
    envelope_sender: str | None = None,
) -> IntakeOutcome:
    """Take one message in; `rejected` (with the reason) when it is not an email or for nobody here.

    Database errors propagate: the transport must not acknowledge the message (SMTP answers 451,
    IMAP leaves it unseen) so that it is delivered again.
    """
    try:
        # In a thread: a large message takes a while to parse, and the gateway's loop must not wait.
        parsed = await asyncio.to_thread(
            parse_email, raw, envelope_recipients=envelope_recipients, envelope_sender=envelope_sender
        )
    except MalformedPayload as e:
        logger.warning("rejected an email of %s bytes: %s", len(raw), e)
        return IntakeOutcome("rejected", str(e), inbox.id if inbox else None)
    if inbox is None:
        for address in parsed.recipients:
            inbox = await runtime.find_inbox(address)
            if inbox is not None:
                break
        if inbox is None:
            reason = f"no inbox receives mail for {', '.join(parsed.recipients) or 'its recipients'}"
            logger.warning("rejected email %s: %s", parsed.message_id, reason)
            return IntakeOutcome("rejected", reason)
    channel = inbox.channel
    if not isinstance(channel, Email):
        return IntakeOutcome("rejected", f"inbox {inbox.id} is not an email inbox", inbox.id)

    events = channel.events(parsed)
    if not events:
        return IntakeOutcome("ignored", "an automatic message (auto-reply, report or our own)", inbox.id)
    events = await store_inline_attachments(runtime.media, inbox.tenant_id, events)
    result = await ingest(runtime.db, inbox, events)
    if result.stored or result.statuses_applied:
        runtime.notifier.notify()
    INBOUND_MESSAGES.labels(channel=inbox.channel_name).inc(len(result.stored))
    if result.stored:
        return IntakeOutcome("stored", "", inbox.id, tuple(result.stored))
    if result.duplicates:
        return IntakeOutcome("duplicate", "already stored", inbox.id)
    if any(isinstance(e, DeliveryStatus) for e in events):
        applied = "applied" if result.statuses_applied else "for a message not found (yet)"
        return IntakeOutcome("bounce", f"delivery failure report {applied}", inbox.id)
    assert not any(isinstance(e, InboundMessage) for e in events)
    return IntakeOutcome("ignored", "nothing to store", inbox.id)


def smtp_context(
    *, host: str, port: int, max_message_bytes: int, hostname: str | None = None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A `cleanup_ctx` that runs the SMTP server inside the gateway (`parley serve --smtp-port`)."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        intake = EmailIntake(app[DB], app[DIRECTORY], app[MEDIA], app[NOTIFIER])
        server = await start_smtp_server(
            intake, host=host, port=port, max_message_bytes=max_message_bytes, hostname=hostname
        )
        yield
        server.close()
        await server.wait_closed()

    return run


async def serve_smtp(
    settings: Settings,
    *,
    host: str,
    port: int,
    max_message_bytes: int,
    hostname: str | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """`parley smtp`: the SMTP server on its own, until `stop` is set (SIGINT/SIGTERM from the CLI).

    Outbox events (a new conversation, a bounce) are dispatched in this process, or by the Celery
    workers when Redis is configured, as in `parley serve`.
    """
    runtime = build_runtime(settings)
    stop = stop or asyncio.Event()
    dispatcher_task: asyncio.Task[None] | None = None
    notifier: Notifier
    celery: CeleryNotifier | None = None
    if settings.redis_url:
        celery = CeleryNotifier(settings.redis_url)
        await celery.start()
        notifier = celery
    else:
        notifier = runtime.dispatcher
        dispatcher_task = asyncio.create_task(runtime.dispatcher.run_forever())
    intake = EmailIntake(runtime.db, runtime.directory, runtime.media, notifier)
    server = await start_smtp_server(
        intake, host=host, port=port, max_message_bytes=max_message_bytes, hostname=hostname
    )
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        if dispatcher_task is not None:
            dispatcher_task.cancel()
            await asyncio.gather(dispatcher_task, return_exceptions=True)
        if celery is not None:
            await celery.stop()
        await runtime.close()
