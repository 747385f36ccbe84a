"""The realtime hub, in-process and over a real Redis: what is published reaches current subscribers only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from parley.realtime import Hub, HubUnavailable, LocalHub, RedisHub
from tests.conftest import free_port


@pytest_asyncio.fixture(params=["local", "redis"])
async def hubs(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Hub, Hub]]:
    """Two hubs as two processes would hold them (the same one twice in-process)."""
    if request.param == "local":
        hub = LocalHub()
        yield hub, hub
        return
    url = request.getfixturevalue("redis_url")
    gateway, worker = RedisHub(url), RedisHub(url)
    yield gateway, worker
    await gateway.close()
    await worker.close()


async def test_a_message_reaches_every_subscriber_of_its_topic_in_order(hubs: tuple[Hub, Hub]) -> None:
    gateway, worker = hubs
    async with (
        gateway.subscribe("webchat.visitor:1:v:a") as first,
        gateway.subscribe("webchat.visitor:1:v:a") as second,
        gateway.subscribe("webchat.visitor:1:v:b") as other,
    ):
        for n in range(3):
            await worker.publish("webchat.visitor:1:v:a", {"type": "message", "n": n})
        got = [await asyncio.wait_for(first.get(), 5) for _ in range(3)]
        assert [m["n"] for m in got] == [0, 1, 2]
        assert [(await asyncio.wait_for(second.get(), 5))["n"] for _ in range(3)] == [0, 1, 2]
        await worker.publish("webchat.visitor:1:v:b", {"type": "typing", "typing": True})
        assert await asyncio.wait_for(other.get(), 5) == {"type": "typing", "typing": True}
        assert first._queue.empty()  # nothing of b's leaked into a's topic


async def test_nothing_arrives_after_unsubscribing(hubs: tuple[Hub, Hub]) -> None:
    gateway, worker = hubs
    async with gateway.subscribe("conversation.typing") as subscription:
        pass
    assert gateway.subscriber_count("conversation.typing") == 0
    async with gateway.subscribe("conversation.typing") as later:
        await worker.publish("conversation.typing", {"n": 2})
        assert (await asyncio.wait_for(later.get(), 5))["n"] == 2
    assert subscription._queue.empty()


async def test_a_redis_hub_that_cannot_reach_redis_says_so() -> None:
    hub = RedisHub(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(HubUnavailable):
        await hub.publish("x", {"a": 1})
    await hub.close()


async def test_a_slow_subscriber_loses_the_oldest_messages_not_the_process() -> None:
    hub = LocalHub()
    async with hub.subscribe("t") as subscription:
        for n in range(600):
            await hub.publish("t", {"n": n})
        assert (await subscription.get())["n"] == 600 - 512
