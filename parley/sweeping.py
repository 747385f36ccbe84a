"""The loop behind every in-process sweep: time-driven work (SLA clocks, task timers…) on an interval."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


async def sweep_forever(
    sweep: Callable[[], Awaitable[int]],
    *,
    interval: float,
    what: str,
    notify: Callable[[], None] | None = None,
) -> None:
    """Run `sweep` every `interval` seconds until cancelled; `notify` wakes the dispatcher after work."""
    while True:
        await asyncio.sleep(interval)
        try:
            if await sweep() and notify is not None:
                notify()
        except asyncio.CancelledError:
            raise
        except Exception:  # the loop must outlive a database hiccup
            logger.exception("%s failed; retrying", what)
