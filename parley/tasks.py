"""The Celery app: at scale, workers run the same outbox dispatcher the embedded default runs in-process.

Like the CLI, this is a composition root: the worker builds its handlers from `gateway.wiring`,
imported lazily so that `parley` itself does not depend on the packages above it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from celery import Celery

DISPATCH_TASK = "parley.dispatch"
PURGE_TASK = "parley.purge_outbox"
SNOOZE_TASK = "parley.wake_snoozed"
SLA_SWEEP_TASK = "parley.sla_sweep"
TASK_TIMERS_TASK = "parley.task_timers"
IDLE_DEALS_TASK = "parley.idle_deal_sweep"
ROUTING_SWEEP_TASK = "parley.routing_sweep"
TICKET_SLA_SWEEP_TASK = "parley.ticket_sla_sweep"
RETENTION_TASK = "parley.retention_sweep"
PRIORITY_SWEEP_TASK = "parley.priority_sweep"

_apps: dict[str, Celery] = {}
_local = threading.local()


def celery_app(broker_url: str) -> Celery:
    """The Celery app for a broker URL (Redis or RabbitMQ), with the outbox sweep on beat."""
    if broker_url in _apps:
        return _apps[broker_url]
    app = Celery("parley", broker=broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # The sweep catches events whose notification was lost and retries that have come due.
        beat_schedule={
            "outbox-sweep": {"task": DISPATCH_TASK, "schedule": 1.0},
            "outbox-purge": {"task": PURGE_TASK, "schedule": 3600.0},
            # Snoozed conversations whose time has come reopen (no event marks that moment).
            "snooze-sweep": {"task": SNOOZE_TASK, "schedule": 15.0},
            # SLA warnings and breaches come due without an event: beat looks for them.
            "sla-sweep": {"task": SLA_SWEEP_TASK, "schedule": 15.0},
            # Task reminders and overdue notices (exactly once each), deals going idle, and the
            # routing queues whose overflow wait or working hours came: all time, no event.
            "task-timers": {"task": TASK_TIMERS_TASK, "schedule": 15.0},
            "idle-deal-sweep": {"task": IDLE_DEALS_TASK, "schedule": 300.0},
            "routing-sweep": {"task": ROUTING_SWEEP_TASK, "schedule": 15.0},
            "ticket-sla-sweep": {"task": TICKET_SLA_SWEEP_TASK, "schedule": 15.0},
            # Retention policies delete old resolved conversations (batched; safe with many workers).
            "retention-sweep": {"task": RETENTION_TASK, "schedule": 3600.0},
            # Computed priorities grow with waiting time, which no event marks.
            "priority-sweep": {"task": PRIORITY_SWEEP_TASK, "schedule": 30.0},
        },
        timezone="UTC",
    )
    app.task(name=DISPATCH_TASK)(dispatch)
    app.task(name=PURGE_TASK)(purge_outbox)
    app.task(name=SNOOZE_TASK)(wake_snoozed)
    app.task(name=SLA_SWEEP_TASK)(sla_sweep)
    app.task(name=TASK_TIMERS_TASK)(task_timers)
    app.task(name=IDLE_DEALS_TASK)(idle_deal_sweep)
    app.task(name=ROUTING_SWEEP_TASK)(routing_sweep)
    app.task(name=TICKET_SLA_SWEEP_TASK)(ticket_sla_sweep)
    app.task(name=RETENTION_TASK)(retention_sweep)
    app.task(name=PRIORITY_SWEEP_TASK)(priority_sweep)
    _apps[broker_url] = app
    return app


def dispatch() -> int:
    """Run the outbox dispatcher until nothing is due; return how many events it processed."""
    runtime = _runtime()
    result: int = runtime["loop"].run_until_complete(runtime["dispatcher"].run_until_idle())
    return result


def purge_outbox() -> int:
    """Delete outbox events completed more than a week ago."""
    runtime = _runtime()
    result: int = runtime["loop"].run_until_complete(runtime["dispatcher"].purge())
    return result


def wake_snoozed() -> int:
    """Reopen the snoozed conversations whose time has come; return how many."""
    from gateway.wiring import wake_snoozed as wake

    runtime = _runtime()
    result: int = runtime["loop"].run_until_complete(wake(runtime["runtime"]))
    return result


def sla_sweep() -> int:
    """Emit the SLA warnings and breaches that came due (exactly once each, however many workers sweep)."""
    from gateway.wiring import sweep_sla

    runtime = _runtime()
    result: int = runtime["loop"].run_until_complete(sweep_sla(runtime["runtime"].db))
    return result


def task_timers() -> int:
    """Fire the task reminders and overdue notices that came due (exactly once each)."""
    from gateway.wiring import sweep_task_timers

    runtime = _runtime()
    result: int = runtime["loop"].run_until_complete(sweep_task_timers(runtime["runtime"].db))
    return result


def idle_deal_sweep() -> int:
    """Create the tasks of `deal.idle` rules for deals that went idle."""
    from gateway.wiring import sweep_idle_deals

    runtime = _runtime()
    result: int = runtime["loop"].run_until_complete(sweep_idle_deals(runtime["runtime"].db))
    return result


def routing_sweep() -> int:
    """Serve the routing queues whose overflow wait ended or whose agents' hours began."""
    from gateway.wiring import sweep_routing

    runtime = _runtime()
    result: int = runtime["loop"].run_until_complete(sweep_routing(runtime["runtime"].db))
    return result


def ticket_sla_sweep() -> int:
    """Emit `ticket.sla_breached` for tickets past due (once each, however many workers sweep)."""
    from gateway.wiring import sweep_ticket_sla

    runtime = _runtime()
    result: int = runtime["loop"].run_until_complete(sweep_ticket_sla(runtime["runtime"].db))
    return result


def retention_sweep() -> int:
    """Delete the conversations past their tenant's retention policy; return how many."""
    from gateway.wiring import sweep_retention

    runtime = _runtime()
    result: int = runtime["loop"].run_until_complete(sweep_retention(runtime["runtime"]))
    return result


def priority_sweep() -> int:
    """Rescore conversations waiting on an agent; return how many changed priority."""
    from gateway.wiring import rescore_waiting

    runtime = _runtime()
    result: int = runtime["loop"].run_until_complete(rescore_waiting(runtime["runtime"].db))
    return result


def _runtime() -> dict[str, Any]:
    # One event loop, engine and dispatcher per worker thread (prefork children each get their own).
    runtime: dict[str, Any] | None = getattr(_local, "runtime", None)
    if runtime is None:
        from gateway.wiring import build_runtime
        from parley.settings import Settings

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        built = build_runtime(Settings.from_env())
        runtime = {"loop": loop, "dispatcher": built.dispatcher, "runtime": built}
        _local.runtime = runtime
    return runtime


def shutdown_runtime() -> None:
    """Dispose of this thread's runtime (used by tests and worker shutdown)."""
    runtime = getattr(_local, "runtime", None)
    if runtime is not None:
        runtime["loop"].run_until_complete(runtime["runtime"].close())
        runtime["loop"].close()
        del _local.runtime
