"""The app factory: `create_app(settings)` builds the whole gateway."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.api import setup_api
from gateway.errors import error_middleware, json_error
from gateway.keys import DB, DIRECTORY, DISPATCHER, HUB, MAILER, MEDIA, NOTIFIER, SECRET_BOX, SETTINGS
from gateway.live import setup_live
from gateway.media import setup_media
from gateway.notify import CeleryNotifier
from gateway.ui import setup_ui
from gateway.unsubscribe import setup_unsubscribe
from gateway.webchat import setup_webchat
from gateway.webhooks import MAX_WEBHOOK_BYTES, setup_webhooks
from gateway.wiring import build_runtime
from inbox.retention import RetentionSweeper
from inbox.snooze import SnoozeWaker
from parley.crypto import SecretBox
from parley.mailer import Mailer
from parley.metrics import HTTP_LATENCY
from parley.settings import Settings
from routing.assigner import Assigner
from routing.prioritizer import Prioritizer
from routing.sla import SlaClocks
from routing.task_engine import TaskEngine
from routing.task_timers import TaskTimers
from routing.ticket_sla import TicketSla


def create_app(settings: Settings, *, dispatch_in_process: bool | None = None) -> web.Application:
    """Build the gateway; outbox events are dispatched in-process unless Redis (Celery) is configured."""
    in_process = settings.redis_url is None if dispatch_in_process is None else dispatch_in_process
    app = web.Application(
        middlewares=[_metrics_middleware, error_middleware], client_max_size=MAX_WEBHOOK_BYTES
    )
    runtime = build_runtime(settings)
    app[SETTINGS] = settings
    app[DB] = runtime.db
    app[DIRECTORY] = runtime.directory
    app[SECRET_BOX] = SecretBox(settings.secret_key)
    app[DISPATCHER] = runtime.dispatcher
    app[HUB] = runtime.hub
    app[MEDIA] = runtime.media
    app[MAILER] = Mailer(settings)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        task: asyncio.Task[None] | None = None
        sweeps: asyncio.Task[None] | None = None
        snoozes: asyncio.Task[None] | None = None
        sla_sweeps: asyncio.Task[None] | None = None
        task_sweeps: list[asyncio.Task[None]] = []
        ticket_sweeps: asyncio.Task[None] | None = None
        retention: asyncio.Task[None] | None = None
        priority_sweeps: asyncio.Task[None] | None = None
        celery: CeleryNotifier | None = None
        if in_process:
            app[NOTIFIER] = runtime.dispatcher
            task = asyncio.create_task(runtime.dispatcher.run_forever())
            # Overflow waits and working hours end without an event; a sweep serves the queues.
            sweeps = asyncio.create_task(Assigner(runtime.db).run_sweeps())
            # Snoozes with a time end without an event too.
            snoozes = asyncio.create_task(SnoozeWaker(runtime.db).run_sweeps())
            # SLA warnings and breaches come due without an event, too.
            sla_sweeps = asyncio.create_task(
                SlaClocks(runtime.db).run_sweeps(notify=runtime.dispatcher.notify)
            )
            # Task reminders, overdue tasks and idle deals: timers kept in the database.
            task_sweeps = [
                asyncio.create_task(TaskTimers(runtime.db).run_sweeps(notify=runtime.dispatcher.notify)),
                asyncio.create_task(TaskEngine(runtime.db).run_sweeps(notify=runtime.dispatcher.notify)),
            ]
            ticket_sweeps = asyncio.create_task(
                TicketSla(runtime.db).run_sweeps(notify=runtime.dispatcher.notify)
            )
            # Retention deletes old resolved conversations hourly.
            retention = asyncio.create_task(RetentionSweeper(runtime.db, runtime.media).run_sweeps())
            # Waiting time raises computed priorities without an event.
            priority_sweeps = asyncio.create_task(Prioritizer(runtime.db).run_sweeps())
        else:
            assert settings.redis_url is not None
            celery = CeleryNotifier(settings.redis_url)
            app[NOTIFIER] = celery
            await celery.start()
        yield
        for sweep in (sweeps, snoozes, sla_sweeps, ticket_sweeps, retention, priority_sweeps, *task_sweeps):
            if sweep is not None:
                sweep.cancel()
                await asyncio.gather(sweep, return_exceptions=True)
        if task is not None:
            # Let handlers in flight commit: one cut off mid-transaction can leave a task waiting on
            # a connection that is closed next (aiosqlite), and the event loop never shuts down.
            runtime.dispatcher.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout=10)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if celery is not None:
            await celery.stop()
        await runtime.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    setup_webhooks(app)
    setup_media(app)
    setup_webchat(app)
    setup_api(app)
    setup_ui(app)
    setup_live(app)
    setup_unsubscribe(app)
    return app


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    try:
        await asyncio.wait_for(request.app[DB].ping(), 5)
    except Exception as e:  # any failure to answer means not ready
        return json_error(503, "not_ready", f"database unavailable: {type(e).__name__}")
    return web.json_response({"status": "ready", "database": request.app[DB].dialect})


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def _metrics_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        route = (
            request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        )
        HTTP_LATENCY.labels(request.method, route, str(status)).observe(time.perf_counter() - started)
