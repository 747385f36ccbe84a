"""Wiring: which handlers consume which outbox topics, shared by `parley serve` and the workers."""

from __future__ import annotations

from dataclasses import dataclass

from crm_core.csv_import import IMPORT_TOPIC, ContactImporter
from crm_core.subscribers import crm_subscribers
from crm_core.timeline import timeline_subscribers
from gateway.live import live_subscribers
from gateway.outbound_webhooks.delivery import webhook_subscribers
from gateway.webchat import PRESENCE_CHANGED_TOPIC, PresenceAnnouncer
from inbox.csat import CsatSurveyor, csat_subscribers
from inbox.delivery import OutboundDelivery
from inbox.media_fetch import MEDIA_PENDING_TOPIC, MediaFetcher
from inbox.retention import sweep_retention as run_retention
from inbox.runtime import InboxDirectory
from inbox.service import EARLY_STATUS_TOPIC, OUTBOUND_TOPIC
from inbox.snooze import SnoozeWaker, wake_due_snoozes
from inbox.timeline_feed import conversation_timeline_subscribers
from parley.crypto import SecretBox
from parley.db import Database
from parley.mailer import Mailer
from parley.media import MediaStore
from parley.outbox import Dispatcher, Handler
from parley.realtime import Hub, build_hub
from parley.settings import Settings
from parley.unsubscribe import UnsubscribeSigner
from routing.assigner import PROFILE_CHANGED_TOPIC, Assigner
from routing.escalation import Escalator, escalation_subscribers
from routing.prioritizer import Prioritizer
from routing.prioritizer import subscribe as subscribe_prioritizer
from routing.prioritizer import sweep as sweep_priorities
from routing.sla import SlaClocks, sla_subscribers
from routing.task_engine import TaskEngine, task_rule_subscribers
from routing.task_timers import TaskMailer, TaskTimers, task_timer_subscribers
from routing.ticket_sla import TicketSla, ticket_sla_subscribers


@dataclass(slots=True)
class Runtime:
    settings: Settings
    db: Database
    directory: InboxDirectory
    dispatcher: Dispatcher
    media: MediaStore
    hub: Hub

    async def close(self) -> None:
        await self.directory.close()
        await self.hub.close()
        await self.db.dispose()


def build_subscribers(
    settings: Settings, db: Database, directory: InboxDirectory, media: MediaStore
) -> dict[str, list[Handler]]:
    """Every outbox topic with the handlers that consume it."""
    delivery = OutboundDelivery(
        db,
        directory,
        lambda: settings.public_url,
        media=media,
        unsubscribe=UnsubscribeSigner(settings.secret_key),
    )
    subscribers: dict[str, list[Handler]] = {
        OUTBOUND_TOPIC: [delivery.deliver],
        EARLY_STATUS_TOPIC: [delivery.apply_early_status],
        MEDIA_PENDING_TOPIC: [MediaFetcher(db, directory, media).fetch],
        **routing_subscribers(Assigner(db)),
    }
    # The customer writing wakes a snoozed conversation; this announces it.
    subscribers.setdefault("message.received", []).append(SnoozeWaker(db).on_message_received)
    # Priority scoring; ahead of routing on the conversation's own topics (see `prioritizer.subscribe`).
    subscribe_prioritizer(subscribers, Prioritizer(db))
    for topic, handlers in crm_subscribers(db).items():
        subscribers.setdefault(topic, []).extend(handlers)
    # The CRM timeline (crm_core.timeline, inbox.timeline_feed).
    for extra in (timeline_subscribers(db), conversation_timeline_subscribers(db)):
        for topic, handlers in extra.items():
            subscribers.setdefault(topic, []).extend(handlers)
    # After routing's: a conversation's SLA policy may depend on the team routing just gave it.
    escalator = Escalator(db, Mailer(settings), public_url=lambda: settings.public_url)
    # Task rules follow domain events; reminders and overdue notices are mailed after they fire.
    task_mailer = TaskMailer(db, Mailer(settings), public_url=lambda: settings.public_url)
    # Tickets' due times; CSAT surveys on resolution and ratings from replies.
    surveyor = CsatSurveyor(db, settings.secret_key, lambda: settings.public_url)
    for extra in (
        sla_subscribers(SlaClocks(db)),
        escalation_subscribers(escalator),
        task_rule_subscribers(TaskEngine(db)),
        task_timer_subscribers(task_mailer),
        ticket_sla_subscribers(TicketSla(db)),
        csat_subscribers(surveyor),
    ):
        for topic, handlers in extra.items():
            subscribers.setdefault(topic, []).extend(handlers)
    if directory.hub is not None:  # open web chat widgets learn when an agent comes online
        announce = PresenceAnnouncer(db, directory.hub).announce
        subscribers[PRESENCE_CHANGED_TOPIC] = [*subscribers.get(PRESENCE_CHANGED_TOPIC, []), announce]
        for topic, handlers in live_subscribers(directory.hub).items():  # agents' open screens
            subscribers.setdefault(topic, []).extend(handlers)
    # Outbound webhooks (fan-out last on each topic) and contact CSV imports in the background.
    box, mailer = SecretBox(settings.secret_key), Mailer(settings)
    for topic, handlers in webhook_subscribers(db, box, settings.webhooks, mailer).items():
        subscribers.setdefault(topic, []).extend(handlers)
    subscribers.setdefault(IMPORT_TOPIC, []).append(ContactImporter(db).on_import_requested)
    return subscribers


def routing_subscribers(assigner: Assigner) -> dict[str, list[Handler]]:
    """Routing reacts to conversations opening, changing hands or closing, and to agents' changes."""
    return {
        "conversation.opened": [assigner.on_conversation_opened],
        "conversation.reopened": [assigner.on_conversation_opened],
        "conversation.updated": [assigner.on_conversation_updated],
        "agent.presence_changed": [assigner.on_presence_changed],
        PROFILE_CHANGED_TOPIC: [assigner.on_profile_changed],
    }


async def wake_snoozed(runtime: Runtime) -> int:
    """Reopen the conversations whose snooze time has come (the Celery beat task's body)."""
    return await wake_due_snoozes(runtime.db)


async def sweep_sla(db: Database) -> int:
    """One SLA sweep (the Celery beat task's body): emit the warnings and breaches that came due."""
    return await SlaClocks(db).sweep()


async def sweep_task_timers(db: Database) -> int:
    """One task timer sweep (a Celery beat task's body): fire due reminders and overdue notices."""
    return await TaskTimers(db).sweep()


async def sweep_idle_deals(db: Database) -> int:
    """One idle-deal sweep (a Celery beat task's body): the tasks of `deal.idle` rules."""
    return await TaskEngine(db).sweep_idle_deals()


async def sweep_routing(db: Database) -> int:
    """One routing sweep (a Celery beat task's body): serve queues whose overflow wait or hours came."""
    return await Assigner(db).sweep()


async def sweep_ticket_sla(db: Database) -> int:
    """One ticket SLA sweep (the Celery beat task's body): emit the breaches that came due."""
    return await TicketSla(db).sweep()


async def sweep_retention(runtime: Runtime) -> int:
    """Apply every tenant's retention policy (the Celery beat task's body); return conversations deleted."""
    return (await run_retention(runtime.db, runtime.media)).conversations


async def rescore_waiting(db: Database) -> int:
    """One priority sweep (the Celery beat task's body): rescore conversations whose wait grew."""
    return await sweep_priorities(db)


def build_media_store(settings: Settings) -> MediaStore:
    return MediaStore(settings.media_root, settings.media_max_bytes, base_url=settings.public_url)


def build_runtime(settings: Settings) -> Runtime:
    """The database, inbox directory and dispatcher of one process."""
    db = Database(settings.database_url, pool_size=settings.database_pool_size)
    hub = build_hub(settings.redis_url)
    directory = InboxDirectory(db, SecretBox(settings.secret_key), hub=hub)
    media = build_media_store(settings)
    dispatcher = Dispatcher(db, build_subscribers(settings, db, directory, media))
    return Runtime(settings, db, directory, dispatcher, media, hub)
