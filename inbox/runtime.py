"""Inboxes as the running system uses them: the row's ids plus a ready channel adapter."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from channels.base import Channel
from channels.registry import channel_class
from inbox.models import Inbox
from parley.crypto import SecretBox
from parley.db import Database
from parley.realtime import Hub, UsesHub


@dataclass(frozen=True, slots=True)
class InboxRuntime:
    id: int
    tenant_id: int
    channel_name: str
    channel: Channel
    settings: dict[str, Any]


class InboxDirectory:
    """Builds channel adapters from inbox rows and keeps them for `ttl` seconds.

    Webhooks are the hot path: a cached adapter saves a query and a decryption per request.
    Changes made through this process are seen at once (`forget`); other processes see them
    within `ttl`.
    """

    def __init__(self, db: Database, box: SecretBox, *, ttl: float = 10.0, hub: Hub | None = None) -> None:
        self.db = db
        self.box = box
        self.ttl = ttl
        # Handed to adapters that push to open connections (web chat).
        self.hub = hub
        self._cache: dict[int, tuple[float, datetime | None, InboxRuntime | None]] = {}

    async def get(self, inbox_id: int) -> InboxRuntime | None:
        """The inbox with this id, or None if there is none."""
        hit = self._cache.get(inbox_id)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.ttl:
            return hit[2]
        async with self.db.sessionmaker() as session:
            row = (await session.execute(select(Inbox).where(Inbox.id == inbox_id))).scalar_one_or_none()
        updated_at = row.updated_at if row is not None else None
        if hit is not None and hit[1] == updated_at:
            # Unchanged: keep the adapter (and its open connections) that may be mid-send.
            self._cache[inbox_id] = (now, updated_at, hit[2])
            return hit[2]
        runtime = None
        if row is not None:
            cls = channel_class(row.channel)
            channel = cls.from_settings(row.settings, self.box.open(row.secrets_encrypted))
            if self.hub is not None and isinstance(channel, UsesHub):
                channel.attach_hub(self.hub)
            runtime = InboxRuntime(row.id, row.tenant_id, row.channel, channel, dict(row.settings))
        if hit is not None and hit[2] is not None:
            await hit[2].channel.close()
        self._cache[inbox_id] = (now, updated_at, runtime)
        return runtime

    async def siblings(self, inbox: InboxRuntime, keys: frozenset[str]) -> list[InboxRuntime]:
        """The tenant's other inboxes of the same channel whose `sibling_key` is among `keys`."""
        if not keys:
            return []
        async with self.db.sessionmaker() as session:
            ids = (
                await session.scalars(
                    select(Inbox.id).where(
                        Inbox.tenant_id == inbox.tenant_id,
                        Inbox.channel == inbox.channel_name,
                        Inbox.id != inbox.id,
                    )
                )
            ).all()
        found = []
        for inbox_id in ids:
            sibling = await self.get(inbox_id)
            if sibling is not None and type(sibling.channel).sibling_key(sibling.settings) in keys:
                found.append(sibling)
        return found

    async def forget(self, inbox_id: int) -> None:
        """Drop a cached inbox after it was changed or deleted."""
        hit = self._cache.pop(inbox_id, None)
        if hit is not None and hit[2] is not None:
            await hit[2].channel.close()

    async def close(self) -> None:
        for inbox_id in list(self._cache):
            await self.forget(inbox_id)
