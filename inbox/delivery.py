"""Outbound delivery: the outbox handler that hands queued messages to their channel."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update

from channels.base import (
    Address,
    Attachment,
    Button,
    ChannelAuthError,
    DeliveryStatus,
    OutboundMessage,
    PermanentDeliveryError,
    Template,
    TransientDeliveryError,
)
from crm_core.consent import withdrawn
from crm_core.models import ChannelIdentity
from inbox.models import Conversation, Message, MessageStatus
from inbox.runtime import InboxDirectory
from inbox.service import apply_delivery_status, numbered_options
from parley.db import Database
from parley.media import MediaStore
from parley.metrics import MESSAGES_SENT
from parley.outbox import Event, RetryLater, emit
from parley.unsubscribe import UNSUBSCRIBE_PATH, UnsubscribeSigner

logger = logging.getLogger(__name__)

OPTED_OUT_CODE = "opted_out"


class OutboundDelivery:
    """Sends a queued message once; transient failures come back through the outbox's backoff."""

    def __init__(
        self,
        db: Database,
        directory: InboxDirectory,
        public_url: Callable[[], str | None],
        *,
        max_attempts: int = 8,
        early_status_attempts: int = 6,
        media: MediaStore | None = None,
        unsubscribe: UnsubscribeSigner | None = None,
    ) -> None:
        self.db = db
        self.unsubscribe = unsubscribe
        self.media = media
        self.directory = directory
        self.public_url = public_url
        self.max_attempts = max_attempts
        # Backoff from 1 s doubling: six attempts wait for the sender for about half a minute.
        self.early_status_attempts = early_status_attempts

    def _unsubscribe_url(
        self, base: str | None, channel: str, tenant_id: int | None, contact_id: int, purpose: str
    ) -> str | None:
        """The RFC 8058 one-click URL for email (other channels opt out by keyword)."""
        if channel != "email" or self.unsubscribe is None or not base or tenant_id is None:
            return None
        token = self.unsubscribe.token(
            tenant_id=tenant_id, contact_id=contact_id, channel=channel, purpose=purpose
        )
        return f"{base.rstrip('/')}{UNSUBSCRIBE_PATH}{token}"

    async def deliver(self, event: Event) -> None:
        """Handler for `message.outbound`."""
        message_id = int(event.payload["message_id"])
        inbox = await self.directory.get(int(event.payload["inbox_id"]))
        # Read, then close the session before any other session opens: on SQLite a session holds
        # the database's write lock, so a nested one would wait for itself.
        async with self.db.sessionmaker() as session:
            row = (
                await session.execute(
                    select(
                        Message,
                        Conversation.contact_id,
                        Conversation.thread_key,
                        ChannelIdentity.kind,
                        ChannelIdentity.address,
                    )
                    .join(Conversation, Conversation.id == Message.conversation_id)
                    .join(ChannelIdentity, ChannelIdentity.id == Conversation.identity_id)
                    .where(Message.id == message_id, Message.tenant_id == event.tenant_id)
                )
            ).one_or_none()
            if row is None or row.Message.status != MessageStatus.QUEUED:
                return  # already sent (a redelivered event) or deleted
            message: Message = row.Message
            # Replies in a conversation are transactional; a campaign marks its messages "marketing".
            purpose = str(message.extra.get("purpose") or "transactional")
            opted_out = inbox is not None and await withdrawn(
                session, contact_id=row.contact_id, channel=inbox.channel.consent_channel, purpose=purpose
            )
        if inbox is None:
            await self._fail(
                message,
                "inbox_deleted",
                "The inbox was deleted before the message was sent.",
                channel="unknown",
            )
            return
        if opted_out:
            await self._fail(
                message,
                OPTED_OUT_CODE,
                f"The recipient opted out of {inbox.channel.consent_channel} messages (e.g. replied STOP); "
                "nothing was sent.",
                channel=inbox.channel_name,
            )
            return

        base = self.public_url()
        text = message.body
        buttons = tuple(Button(str(b["id"]), str(b["title"])) for b in message.extra.get("buttons", ()))
        if buttons and not inbox.channel.capabilities.buttons:
            text, buttons = numbered_options(text, buttons), ()
        stored_template = message.extra.get("template")
        thread = await self._thread(message) if inbox.channel.capabilities.threads_by_reference else {}
        attachments = tuple(
            Attachment(a["url"], a.get("content_type"), a.get("filename")) for a in message.attachments
        )
        if inbox.channel.capabilities.inline_attachments:
            attachments = await self._with_data(attachments)
        outbound = OutboundMessage(
            message_id=message.id,
            recipient=Address(row.kind, row.address),
            text=text,
            attachments=attachments,
            status_callback_url=f"{base}/webhooks/{message.inbox_id}/status" if base else None,
            buttons=buttons,
            thread_key=row.thread_key,
            template=None
            if stored_template is None
            else Template(
                stored_template["name"],
                stored_template.get("language"),
                stored_template.get("variables") or {},
            ),
            unsubscribe_url=self._unsubscribe_url(
                base, inbox.channel.consent_channel, event.tenant_id, row.contact_id, purpose
            ),
            **thread,
        )
        attempt = message.attempts + 1
        try:
            receipt = await inbox.channel.send(outbound)
        except TransientDeliveryError as e:
            if attempt >= self.max_attempts:
                await self._fail(
                    message, "gave_up", f"Gave up after {attempt} attempts: {e}", channel=inbox.channel_name
                )
                return
            await self._update(message, attempts=attempt, error_message=f"Retrying: {e}")
            raise RetryLater(str(e), delay=e.retry_after) from e
        except PermanentDeliveryError as e:
            await self._fail(message, e.code or "rejected", str(e), channel=inbox.channel_name)
            return
        except ChannelAuthError as e:
            await self._fail(
                message,
                "channel_auth",
                f"The provider refused the inbox's credentials: {e}",
                channel=inbox.channel_name,
            )
            return
        status = MessageStatus.SENT if receipt.status == "queued" else MessageStatus(receipt.status)
        await self._update(
            message,
            status=status,
            provider_message_id=receipt.provider_message_id,
            attempts=attempt,
            error_message=None,
            emit_update=True,
        )
        MESSAGES_SENT.labels(channel=inbox.channel_name, outcome="sent").inc()

    async def _with_data(self, attachments: tuple[Attachment, ...]) -> tuple[Attachment, ...]:
        """Attachments in the media store with their bytes (others stay URLs for the channel to fetch)."""
        loaded = []
        for attachment in attachments:
            key = self.media.key_of(attachment.url) if self.media is not None else None
            if self.media is None or key is None:
                loaded.append(attachment)
                continue
            try:
                data = await self.media.read(key)
                meta = await self.media.describe(key)
            except FileNotFoundError:
                loaded.append(attachment)  # the channel's fetch reports it gone
                continue
            loaded.append(
                Attachment(
                    attachment.url,
                    attachment.content_type or meta.get("content_type"),
                    attachment.filename or meta.get("filename"),
                    len(data),
                    data=data,
                )
            )
        return tuple(loaded)

    async def _thread(self, message: Message) -> dict[str, Any]:
        """Email's threading: the conversation's subject, the customer's last message, the chain before it."""
        async with self.db.sessionmaker() as session:
            rows = (
                await session.execute(
                    select(Message.direction, Message.provider_message_id, Message.extra)
                    .where(
                        Message.conversation_id == message.conversation_id,
                        Message.id < message.id,
                        Message.provider_message_id.is_not(None),
                    )
                    .order_by(Message.id)
                )
            ).all()
        inbound = [row for row in rows if row.direction == "inbound"]
        subjects = [row.extra.get("subject") for row in (*inbound[:1], *rows) if row.extra.get("subject")]
        return {
            "conversation_id": message.conversation_id,
            "subject": message.extra.get("subject") or (subjects[0] if subjects else None),
            "in_reply_to": inbound[-1].provider_message_id if inbound else None,
            "references": tuple(row.provider_message_id for row in rows),
        }

    async def apply_early_status(self, event: Event) -> None:
        """Handler for `message.status_early`: apply it once the send has stored the provider's id."""
        payload = event.payload
        status = DeliveryStatus(
            provider_message_id=str(payload["provider_message_id"]),
            status=payload["status"],
            error_code=payload.get("error_code"),
            error_message=payload.get("error_message"),
        )
        async with self.db.transaction() as session:
            outcome = await apply_delivery_status(
                session, tenant_id=int(event.tenant_id or 0), inbox_id=int(payload["inbox_id"]), status=status
            )
        if outcome != "unknown":
            return
        if event.attempts >= self.early_status_attempts:
            # Not ours after all (sent from the provider's console, say): nothing to update.
            logger.info("status %s for unknown message %s dropped", status.status, status.provider_message_id)
            return
        raise RetryLater(f"no message with provider id {status.provider_message_id} yet", delay=1.0)

    async def _fail(self, message: Message, code: str, reason: str, *, channel: str) -> None:
        logger.info("message %s failed: %s (%s)", message.id, reason, code)
        MESSAGES_SENT.labels(channel=channel, outcome="failed").inc()
        await self._update(
            message, status=MessageStatus.FAILED, error_code=code, error_message=reason, emit_update=True
        )

    async def _update(self, message: Message, *, emit_update: bool = False, **values: Any) -> None:
        async with self.db.transaction() as session:
            await session.execute(
                update(Message)
                .where(Message.id == message.id, Message.status == MessageStatus.QUEUED)
                .values(**values)
            )
            if emit_update:
                await emit(
                    session,
                    message.tenant_id,
                    (
                        "message.updated",
                        {
                            "message_id": message.id,
                            "conversation_id": message.conversation_id,
                            "status": str(values.get("status", message.status)),
                        },
                    ),
                )
