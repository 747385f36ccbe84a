"""Waking whoever dispatches outbox events once a transaction has committed."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from parley.tasks import DISPATCH_TASK, celery_app

logger = logging.getLogger(__name__)


class Notifier(Protocol):
    def notify(self) -> None: ...


class CeleryNotifier:
    """Asks the Celery workers to dispatch, coalescing bursts into one task per `interval`.

    Sending a task is a blocking Redis call, so it runs in a thread; the beat sweep catches
    anything a lost notification leaves behind.
    """

    def __init__(self, broker_url: str, *, interval: float = 0.02) -> None:
        self.app = celery_app(broker_url)
        self.interval = interval
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        self._pending.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                await loop.run_in_executor(None, self.app.send_task, DISPATCH_TASK)
            except Exception:  # the broker being away must not break ingestion; beat sweeps later
                logger.warning("could not enqueue an outbox dispatch task", exc_info=True)
            await asyncio.sleep(self.interval)
