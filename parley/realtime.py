"""The realtime hub: ephemeral messages to whoever holds a connection open, in this process or another.

Web chat pushes agent replies and typing indicators to visitors' open WebSockets, and visitors'
typing to agents. Nothing here is stored: a message published while nobody listens is gone, which
is why everything that matters is also in the database (the widget fetches missed messages on
reconnect). `LocalHub` serves one process (the embedded default); `RedisHub` fans out over Redis
pub/sub when `PARLEY_REDIS_URL` is set, so a Celery worker's delivery reaches the gateway holding
the visitor's socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, runtime_checkable

import redis.asyncio as redis
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

Payload = dict[str, Any]


class HubUnavailable(Exception):
    """The hub could not publish (Redis down): the caller decides whether to retry."""


class Subscription:
    """The messages published on one topic since subscribing, oldest first.

    A subscriber that does not keep up loses the oldest messages rather than holding memory
    without bound; realtime messages are hints, the database has the rest.
    """

    def __init__(self, topic: str, maxsize: int = 512) -> None:
        self.topic = topic
        self._queue: asyncio.Queue[Payload] = asyncio.Queue(maxsize)
        # How many messages were dropped: a consumer that must not miss any (a live socket with
        # catch-up) checks it and starts over from the database.
        self.dropped = 0

    def _deliver(self, message: Payload) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            logger.warning("subscriber of %s is not keeping up; dropped its oldest message", self.topic)
        self._queue.put_nowait(message)

    async def get(self) -> Payload:
        """The next message; waits for one."""
        return await self._queue.get()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Payload:
        return await self.get()


class Hub(ABC):
    """Publish/subscribe on named topics; messages are JSON objects."""

    def __init__(self) -> None:
        self._subscriptions: dict[str, set[Subscription]] = {}

    @abstractmethod
    async def publish(self, topic: str, message: Mapping[str, Any]) -> None:
        """Send `message` to every current subscriber of `topic`, in any process."""

    @contextlib.asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[Subscription]:
        """Receive what is published on `topic` from the moment this returns until the block ends."""
        subscription = Subscription(topic)
        subscribers = self._subscriptions.setdefault(topic, set())
        subscribers.add(subscription)
        try:
            if len(subscribers) == 1:
                await self._listen(topic)
            yield subscription
        finally:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscriptions[topic]
                await self._unlisten(topic)

    def subscriber_count(self, topic: str) -> int:
        """How many subscriptions this process holds on `topic`."""
        return len(self._subscriptions.get(topic, ()))

    def _fan_out(self, topic: str, message: Payload) -> None:
        for subscription in list(self._subscriptions.get(topic, ())):
            subscription._deliver(message)

    async def _listen(self, topic: str) -> None:  # noqa: B027 - only the Redis hub listens elsewhere
        """Start receiving `topic` from elsewhere (first local subscriber)."""

    async def _unlisten(self, topic: str) -> None:  # noqa: B027
        """Stop receiving `topic` from elsewhere (last local subscriber left)."""

    async def close(self) -> None:  # noqa: B027 - the local hub holds nothing
        """Release connections."""


class LocalHub(Hub):
    """Fan-out inside one process."""

    async def publish(self, topic: str, message: Mapping[str, Any]) -> None:
        """Deliver to this process's subscribers; a JSON round trip gives each the same copy Redis would."""
        self._fan_out(topic, json.loads(json.dumps(message)))


class RedisHub(Hub):
    """Fan-out across processes over Redis pub/sub, one subscriber connection per process."""

    def __init__(self, url: str, *, prefix: str = "parley:rt:") -> None:
        super().__init__()
        self.prefix = prefix
        self._redis = redis.from_url(url)
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._confirmed: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()

    async def publish(self, topic: str, message: Mapping[str, Any]) -> None:
        """PUBLISH the message; `HubUnavailable` if Redis cannot be reached."""
        try:
            await self._redis.publish(self.prefix + topic, json.dumps(message))
        except (RedisError, OSError) as e:
            raise HubUnavailable(f"Redis publish failed: {e!r}") from e

    async def _listen(self, topic: str) -> None:
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub()
                self._reader = asyncio.create_task(self._read())
            channel = self.prefix + topic
            confirmed = self._confirmed[channel] = asyncio.Event()
            await self._pubsub.subscribe(channel)
        # Until Redis confirms, a message published elsewhere could still miss us: the caller reads
        # the database after subscribing, and must not fall into that gap.
        await asyncio.wait_for(confirmed.wait(), 5)

    async def _unlisten(self, topic: str) -> None:
        async with self._lock:
            channel = self.prefix + topic
            self._confirmed.pop(channel, None)
            if self._pubsub is not None:
                try:
                    await self._pubsub.unsubscribe(channel)
                except (RedisError, OSError):
                    logger.warning("could not unsubscribe from %s", channel, exc_info=True)

    async def _read(self) -> None:
        while True:
            try:
                if not self._pubsub.subscribed:
                    await asyncio.sleep(0.05)
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError):
                logger.warning("realtime hub lost Redis; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if message is None:
                continue
            channel = message["channel"].decode()
            if message["type"] == "subscribe":
                event = self._confirmed.get(channel)
                if event is not None:
                    event.set()
            elif message["type"] == "message" and channel.startswith(self.prefix):
                try:
                    payload = json.loads(message["data"])
                except ValueError:
                    logger.warning("ignored a non-JSON message on %s", channel)
                    continue
                self._fan_out(channel[len(self.prefix) :], payload)

    async def close(self) -> None:
        """Stop reading and close both connections."""
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._pubsub is not None:
            await self._pubsub.aclose()
        await self._redis.aclose()


@runtime_checkable
class UsesHub(Protocol):
    """A channel adapter that pushes to open connections (web chat) and needs the process's hub."""

    def attach_hub(self, hub: Hub) -> None: ...


def build_hub(redis_url: str | None) -> Hub:
    """Redis pub/sub when Redis is configured (several processes), else in-process."""
    return RedisHub(redis_url) if redis_url else LocalHub()
