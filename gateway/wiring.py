"""Wiring: which handlers consume which outbox topics, shared by `parley serve` and the workers."""

from __future__ import annotations

from dataclasses import dataclass

from crm_core.subscribers import crm_subscribers
from inbox.delivery import OutboundDelivery
from inbox.media_fetch import MEDIA_PENDING_TOPIC, MediaFetcher
from inbox.runtime import InboxDirectory
from inbox.service import EARLY_STATUS_TOPIC, OUTBOUND_TOPIC
from parley.crypto import SecretBox
from parley.db import Database
from parley.media import MediaStore
from parley.outbox import Dispatcher, Handler
from parley.settings import Settings


@dataclass(slots=True)
class Runtime:
    settings: Settings
    db: Database
    directory: InboxDirectory
    dispatcher: Dispatcher
    media: MediaStore

    async def close(self) -> None:
        await self.directory.close()
        await self.db.dispose()


def build_subscribers(
    settings: Settings, db: Database, directory: InboxDirectory, media: MediaStore
) -> dict[str, list[Handler]]:
    """Every outbox topic with the handlers that consume it."""
    delivery = OutboundDelivery(db, directory, lambda: settings.public_url)
    subscribers: dict[str, list[Handler]] = {
        OUTBOUND_TOPIC: [delivery.deliver],
        EARLY_STATUS_TOPIC: [delivery.apply_early_status],
        MEDIA_PENDING_TOPIC: [MediaFetcher(db, directory, media).fetch],
    }
    for topic, handlers in crm_subscribers(db).items():
        subscribers.setdefault(topic, []).extend(handlers)
    return subscribers


def build_media_store(settings: Settings) -> MediaStore:
    return MediaStore(settings.media_root, settings.media_max_bytes, base_url=settings.public_url)


def build_runtime(settings: Settings) -> Runtime:
    """The database, inbox directory and dispatcher of one process."""
    db = Database(settings.database_url, pool_size=settings.database_pool_size)
    directory = InboxDirectory(db, SecretBox(settings.secret_key))
    media = build_media_store(settings)
    dispatcher = Dispatcher(db, build_subscribers(settings, db, directory, media))
    return Runtime(settings, db, directory, dispatcher, media)
