"""Polling the mailboxes of email inboxes that have `imap` settings: `parley imap`, or `parley serve --imap`.

One `ImapPoller` per such inbox, each handing what it fetches to `accept_email`, the intake SMTP
and the provider webhooks use too. The inbox table is scanned again every `rescan` seconds, so an
inbox added, changed or deleted through the API is picked up without a restart. Run the pollers in
one process per deployment (`parley imap`, or the gateway with `--imap`): two would fetch the same
mail, which the intake's dedupe on Message-ID makes harmless but wasteful. `parley imap --once`
polls every mailbox once and exits, for cron.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy import select, update

from channels.base import ConfigurationError
from channels.email.imap import (
    STATE_KEY,
    Accepted,
    ImapConfig,
    ImapPoller,
    ImapState,
    Intake,
    PollResult,
    Rejected,
)
from gateway.email_intake import EmailIntake, accept_email
from gateway.keys import DB, DIRECTORY, MEDIA, NOTIFIER
from gateway.notify import CeleryNotifier, Notifier
from gateway.wiring import build_runtime
from inbox.models import Inbox
from inbox.runtime import InboxDirectory
from parley.db import Database
from parley.media import MediaStore
from parley.metrics import IMAP_MESSAGES
from parley.settings import Settings

logger = logging.getLogger(__name__)

EMAIL_CHANNEL = "email"


class InboxStateStore:
    """The poller's place in the folder, kept in the inbox's settings under `imap_state`."""

    def __init__(self, db: Database, inbox_id: int) -> None:
        self.db = db
        self.inbox_id = inbox_id

    async def load(self) -> ImapState | None:
        async with self.db.sessionmaker() as session:
            settings = (
                await session.execute(select(Inbox.settings).where(Inbox.id == self.inbox_id))
            ).scalar_one_or_none()
        return None if settings is None else ImapState.from_settings(settings)

    async def save(self, state: ImapState) -> None:
        """Merge the state into the settings: only if nobody changed them meanwhile, else re-read."""
        for _ in range(5):
            async with self.db.transaction() as session:
                row = (
                    await session.execute(
                        select(Inbox.settings, Inbox.updated_at).where(Inbox.id == self.inbox_id)
                    )
                ).one_or_none()
                if row is None:
                    return
                settings = dict(row.settings)
                settings[STATE_KEY] = state.to_settings()
                # updated_at is set to what it was: the inbox's configuration did not change, so the
                # directory keeps its adapters; and the WHERE on it makes this a compare-and-swap
                # against an administrator's concurrent edit.
                changed = await session.execute(
                    update(Inbox)
                    .where(Inbox.id == self.inbox_id, Inbox.updated_at == row.updated_at)
                    .values(settings=settings, updated_at=row.updated_at)
                )
                if changed.rowcount == 1:  # type: ignore[attr-defined]  # CursorResult for UPDATE
                    return
        logger.warning("inbox %s: could not record the IMAP state; it is re-read next poll", self.inbox_id)


@dataclass(frozen=True, slots=True)
class _Running:
    config: ImapConfig
    poller: ImapPoller
    task: asyncio.Task[None]
    stop: asyncio.Event


class ImapPollers:
    """Keeps one poller running per email inbox with IMAP settings."""

    def __init__(self, intake: EmailIntake, directory: InboxDirectory, *, rescan: float = 60.0) -> None:
        self.intake = intake
        self.directory = directory
        self.rescan = rescan
        self._running: dict[int, _Running] = {}

    async def configured(self) -> dict[int, ImapConfig]:
        """Every email inbox that polls IMAP, with its config; inboxes with broken settings are logged."""
        async with self.intake.db.sessionmaker() as session:
            rows = (
                (await session.execute(select(Inbox).where(Inbox.channel == EMAIL_CHANNEL))).scalars().all()
            )
        configs: dict[int, ImapConfig] = {}
        for row in rows:
            try:
                config = ImapConfig.from_settings(
                    row.settings, self.directory.box.open(row.secrets_encrypted)
                )
            except (ConfigurationError, ValueError) as e:  # ValueError: secrets that do not decrypt
                logger.error("inbox %s: IMAP settings unusable, not polling: %s", row.id, e)
                continue
            if config is not None:
                configs[row.id] = config
        return configs

    def poller(self, inbox_id: int, config: ImapConfig) -> ImapPoller:
        """The poller of one inbox, handing its mail to the email intake."""
        return ImapPoller(
            config,
            self.intake_for(inbox_id),
            InboxStateStore(self.intake.db, inbox_id),
            name=f"inbox {inbox_id} ({config.username}@{config.host}/{config.folder})",
        )

    def intake_for(self, inbox_id: int) -> Intake:
        async def take(raw: bytes) -> Accepted | Rejected:
            inbox = await self.directory.get(inbox_id)
            if inbox is None:
                raise LookupError(f"inbox {inbox_id} is gone")
            outcome = await accept_email(self.intake, raw, envelope_recipients=(), inbox=inbox)
            IMAP_MESSAGES.labels(outcome=outcome.status).inc()
            return Rejected(outcome.reason) if outcome.rejected else Accepted()

        return take

    async def poll_all_once(self) -> dict[int, PollResult | Exception]:
        """One pass over every polling inbox (for `parley imap --once`, cron style)."""
        results: dict[int, PollResult | Exception] = {}
        for inbox_id, config in (await self.configured()).items():
            try:
                results[inbox_id] = await self.poller(inbox_id, config).poll_once()
            except Exception as e:  # one broken mailbox must not keep the others from being polled
                logger.warning("inbox %s: poll failed: %s", inbox_id, e)
                results[inbox_id] = e
        return results

    async def run(self, stop: asyncio.Event) -> None:
        """Run the pollers until `stop` is set, starting, restarting and stopping them as inboxes change."""
        try:
            while not stop.is_set():
                try:
                    await self._reconcile(await self.configured())
                except Exception:  # the database being away: keep the running pollers, look again later
                    logger.warning("could not scan the email inboxes", exc_info=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.rescan)
        finally:
            await self._reconcile({})

    async def _reconcile(self, wanted: dict[int, ImapConfig]) -> None:
        for inbox_id, running in list(self._running.items()):
            if wanted.get(inbox_id) != running.config or running.task.done():
                running.stop.set()
                [outcome] = await asyncio.gather(running.task, return_exceptions=True)
                if isinstance(outcome, Exception):
                    logger.error("%s: poller stopped: %r", running.poller.name, outcome, exc_info=outcome)
                del self._running[inbox_id]
        for inbox_id, config in wanted.items():
            if inbox_id not in self._running:
                poller = self.poller(inbox_id, config)
                stop = asyncio.Event()
                task = asyncio.create_task(poller.run(stop), name=f"imap-inbox-{inbox_id}")
                self._running[inbox_id] = _Running(config, poller, task, stop)
                logger.info("%s: polling every %.0fs", poller.name, config.poll_interval)

    @property
    def polling(self) -> list[int]:
        """The inboxes being polled now."""
        return sorted(self._running)


def imap_context(*, rescan: float = 60.0) -> Callable[[web.Application], AsyncIterator[None]]:
    """A `cleanup_ctx` that runs the pollers inside the gateway (`parley serve --imap`)."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        intake = EmailIntake(app[DB], app[DIRECTORY], app[MEDIA], app[NOTIFIER])
        stop = asyncio.Event()
        task = asyncio.create_task(ImapPollers(intake, app[DIRECTORY], rescan=rescan).run(stop))
        yield
        stop.set()
        await asyncio.gather(task, return_exceptions=True)

    return run


async def serve_imap(
    settings: Settings, *, once: bool = False, rescan: float = 60.0, stop: asyncio.Event | None = None
) -> dict[int, PollResult | Exception]:
    """`parley imap`: the pollers on their own until `stop` is set, or one pass with `once`.

    Outbox events (a new conversation, a bounce) are dispatched in this process, or by the Celery
    workers when Redis is configured, as in `parley serve`; a `once` pass dispatches what it
    stored before returning.
    """
    runtime = build_runtime(settings)
    stop = stop or asyncio.Event()
    dispatcher_task: asyncio.Task[None] | None = None
    notifier: Notifier
    celery: CeleryNotifier | None = None
    if settings.redis_url:
        celery = CeleryNotifier(settings.redis_url)
        await celery.start()
        notifier = celery
    else:
        notifier = runtime.dispatcher
        if not once:
            dispatcher_task = asyncio.create_task(runtime.dispatcher.run_forever())
    media = MediaStore(settings.media_root, settings.media_max_bytes, base_url=settings.public_url)
    intake = EmailIntake(runtime.db, runtime.directory, media, notifier)
    pollers = ImapPollers(intake, runtime.directory, rescan=rescan)
    results: dict[int, PollResult | Exception] = {}
    try:
        if once:
            results = await pollers.poll_all_once()
            if celery is None:
                await runtime.dispatcher.run_until_idle()
        else:
            await pollers.run(stop)
    finally:
        if dispatcher_task is not None:
            dispatcher_task.cancel()
            await asyncio.gather(dispatcher_task, return_exceptions=True)
        if celery is not None:
            await celery.stop()
        await runtime.close()
    return results
