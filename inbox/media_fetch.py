"""Inbound media into the media store: bytes received inline, and the `message.media_pending` handler.

WhatsApp's media ids, Telegram's file ids and Slack's private URLs can only be read with the
inbox's credentials, and Twilio deletes media when asked or after a while; agents need the file
itself. The webhook is acknowledged first (Meta and Slack want fast answers) and the files are
copied afterwards, retried with the outbox's backoff when the provider is unavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import select, update

from channels.base import (
    Attachment,
    ChannelAuthError,
    InboundEvent,
    InboundMessage,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from inbox.models import Message
from inbox.runtime import InboxDirectory
from parley.db import Database
from parley.media import MediaStore, MediaTooLarge
from parley.outbox import Event, RetryLater, emit

logger = logging.getLogger(__name__)

MEDIA_PENDING_TOPIC = "message.media_pending"


def needs_fetch(attachment: dict[str, Any]) -> bool:
    """Not yet copied and not given up on."""
    return bool(attachment.get("url")) and "media_key" not in attachment and "error" not in attachment


class MediaFetcher:
    def __init__(self, db: Database, directory: InboxDirectory, store: MediaStore, *, max_attempts: int = 8):
        self.db = db
        self.directory = directory
        self.store = store
        self.max_attempts = max_attempts

    async def fetch(self, event: Event) -> None:
        """Handler for `message.media_pending`: copy each attachment once, then say the message changed."""
        message_id = int(event.payload["message_id"])
        async with self.db.sessionmaker() as session:
            row = (
                await session.execute(
                    select(Message.attachments, Message.conversation_id, Message.inbox_id).where(
                        Message.id == message_id, Message.tenant_id == event.tenant_id
                    )
                )
            ).one_or_none()
        inbox = None if row is None else await self.directory.get(row.inbox_id)
        if row is None or inbox is None:
            return  # deleted meanwhile
        attachments = [dict(a) for a in row.attachments]
        retry: TransientDeliveryError | None = None
        for attachment in attachments:
            if not needs_fetch(attachment):
                continue
            try:
                fetched = await inbox.channel.fetch_attachment(
                    Attachment(
                        url=attachment["url"],
                        content_type=attachment.get("content_type"),
                        filename=attachment.get("filename"),
                        size=attachment.get("size"),
                    )
                )
                stored = await self.store.put(
                    int(event.tenant_id or 0),
                    fetched.data,
                    filename=attachment.get("filename") or fetched.filename,
                    content_type=fetched.content_type or attachment.get("content_type"),
                )
            except TransientDeliveryError as e:
                if event.attempts < self.max_attempts:
                    retry = e
                    continue
                attachment["error"] = f"Gave up after {event.attempts} attempts: {e}"
            except (PermanentDeliveryError, ChannelAuthError, MediaTooLarge) as e:
                attachment["error"] = str(e)
            else:
                attachment.update(
                    source_url=attachment["url"],
                    url=stored.url,
                    media_key=stored.key,
                    size=stored.size,
                    content_type=stored.content_type,
                    filename=stored.filename,
                )
            if "error" in attachment:
                logger.warning("message %s: attachment not copied: %s", message_id, attachment["error"])

        if attachments != row.attachments:
            async with self.db.transaction() as session:
                await session.execute(
                    update(Message).where(Message.id == message_id).values(attachments=attachments)
                )
                await emit(
                    session,
                    event.tenant_id,
                    ("message.updated", {"message_id": message_id, "conversation_id": row.conversation_id}),
                )
        if retry is not None:
            raise RetryLater(f"attachment download: {retry}", delay=retry.retry_after) from retry


async def store_inline_attachments(
    store: MediaStore, tenant_id: int, events: Sequence[InboundEvent]
) -> list[InboundEvent]:
    """Store the bytes channels received inline and point the attachments at the stored files.

    An attachment over the size limit stays listed (name, type, size) without a URL, so the agent
    sees that something was sent and the rest of the message is not lost.
    """
    stored_events: list[InboundEvent] = []
    for event in events:
        if not isinstance(event, InboundMessage) or not any(a.data is not None for a in event.attachments):
            stored_events.append(event)
            continue
        attachments = []
        for attachment in event.attachments:
            if attachment.data is None:
                attachments.append(attachment)
                continue
            try:
                media = await store.put(
                    tenant_id,
                    attachment.data,
                    filename=attachment.filename,
                    content_type=attachment.content_type,
                )
            except MediaTooLarge:
                attachments.append(replace(attachment, url="", size=len(attachment.data), data=None))
                continue
            attachments.append(
                Attachment(
                    url=media.url,
                    content_type=media.content_type,
                    filename=media.filename,
                    size=media.size,
                )
            )
        stored_events.append(replace(event, attachments=tuple(attachments)))
    return stored_events
