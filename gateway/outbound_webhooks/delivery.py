"""From outbox events to signed HTTP POSTs: the fan-out, the sender, retries and auto-disabling.

1. `WebhookFanout.on_event` (subscribed to every topic the catalogue publishes) writes one
   `webhook_deliveries` row per matching active subscription, unique on (subscription, event,
   type), and a `webhook.delivery_due` outbox event per new row, in one transaction: a retried
   event makes no second delivery.
2. `WebhookSender.deliver` (on `webhook.delivery_due`) POSTs the stored payload, signed, then
   records the attempt. A failure (non-2xx, timeout, refused connection) is retried through the
   outbox (`RetryLater`) with exponential backoff and jitter, never sooner than a 429/503's
   Retry-After, up to `max_attempts`; then the delivery is `failed`.
3. After `disable_after` failed attempts in a row (any delivery of the subscription) spanning at
   least `disable_after_seconds`, the subscription is disabled, its pending deliveries fail, every
   admin of the tenant gets an in-app notification and a mail, and `webhook.disabled` is emitted.

Guarantee: at least once. A receiver may see a delivery twice (a crash after its 2xx, a
redelivery); the envelope `id` stays the same, so receivers deduplicate on it. Deliveries of one
subscription are sent in event order best-effort only: retries overtake nothing, but a failed
delivery does not hold back later ones.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from sqlalchemy import Table, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.outbound_webhooks.catalogue import CATALOGUE, DISABLED_TOPIC, envelope, event_data, public_types
from gateway.outbound_webhooks.models import DeliveryStatus, WebhookDelivery, WebhookSubscription
from gateway.outbound_webhooks.signing import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, sign
from gateway.outbound_webhooks.targets import GuardedResolver
from inbox.models import Notification
from inbox.notes import NOTIFICATION_CREATED_TOPIC
from parley.crypto import SecretBox
from parley.db import Database, utcnow
from parley.mailer import Mailer, MailNotSent
from parley.models import Role, User
from parley.outbox import Event, Handler, RetryLater, backoff, emit
from parley.settings import WebhookSettings

logger = logging.getLogger(__name__)

DELIVERY_TOPIC = "webhook.delivery_due"
NOTIFICATION_KIND = "webhook_disabled"
RESPONSE_BODY_LIMIT = 2000
USER_AGENT = "Parley-Webhooks/1"


def public_id(event_id: int, public_type: str) -> str:
    return f"evt_{event_id}_{public_type.replace('.', '_')}"


async def insert_deliveries(session: AsyncSession, rows: list[dict[str, Any]]) -> list[int]:
    """Insert delivery rows, skipping those already made (same subscription, event and type)."""
    if not rows:
        return []
    table = WebhookDelivery.__table__
    assert isinstance(table, Table)
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    maker = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = (
        maker(table)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["subscription_id", "event_id", "event_type"])
        .returning(table.c.id)
    )
    return list((await session.execute(stmt)).scalars())


async def queue(session: AsyncSession, tenant_id: int, delivery_ids: list[int]) -> None:
    """Ask the sender to attempt these deliveries (after the caller's commit)."""
    await emit(session, tenant_id, *((DELIVERY_TOPIC, {"delivery_id": i}) for i in delivery_ids))


class WebhookFanout:
    """Turns each published outbox event into deliveries for the subscriptions that want it."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def on_event(self, event: Event) -> None:
        if event.tenant_id is None:
            return
        types = public_types(event)
        if not types:
            return
        wanted_query = select(WebhookSubscription.id, WebhookSubscription.event_types).where(
            WebhookSubscription.tenant_id == event.tenant_id, WebhookSubscription.active.is_(True)
        )
        # Most events interest no subscription: find out without a write transaction (on SQLite,
        # BEGIN IMMEDIATE would queue every handler of the batch behind this one).
        async with self.db.sessionmaker() as session:
            subscriptions = (await session.execute(wanted_query)).all()
        if not any(t in (s.event_types or ()) for s in subscriptions for t in types):
            return
        async with self.db.transaction() as session:
            subscriptions = (await session.execute(wanted_query)).all()
            rows: list[dict[str, Any]] = []
            for public_type in types:
                wanted = [s.id for s in subscriptions if public_type in (s.event_types or ())]
                if not wanted:
                    continue
                data = await event_data(session, event, public_type)
                if data is None:
                    continue
                body = envelope(
                    public_id=public_id(event.id, public_type),
                    type=public_type,
                    created_at=event.created_at,
                    tenant_id=event.tenant_id,
                    data=data,
                )
                now = utcnow()
                rows += [
                    {
                        "tenant_id": event.tenant_id,
                        "subscription_id": subscription_id,
                        "event_id": event.id,
                        "event_type": public_type,
                        "payload": body,
                        "status": DeliveryStatus.PENDING,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                    }
                    for subscription_id in wanted
                ]
            await queue(session, event.tenant_id, await insert_deliveries(session, rows))


@dataclass(frozen=True, slots=True)
class Attempt:
    status: int | None
    body: str
    duration_ms: int
    error: str | None
    retry_after: float | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max((when - now).total_seconds(), 0.0)


class WebhookSender:
    """POSTs due deliveries and records how each attempt went."""

    def __init__(self, db: Database, box: SecretBox, policy: WebhookSettings, mailer: Mailer) -> None:
        self.db = db
        self.box = box
        self.policy = policy
        self.mailer = mailer

    async def deliver(self, event: Event) -> None:
        delivery_id = event.payload.get("delivery_id")
        async with self.db.sessionmaker() as session:
            row = (
                await session.execute(
                    select(WebhookDelivery, WebhookSubscription)
                    .join(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id)
                    .where(WebhookDelivery.id == delivery_id, WebhookDelivery.tenant_id == event.tenant_id)
                )
            ).first()
        if row is None:
            return
        delivery, subscription = row[0], row[1]
        if delivery.status != DeliveryStatus.PENDING:
            return
        if not subscription.active:
            await self._give_up(delivery.id, "the subscription is disabled")
            return
        secret = self.box.open(subscription.secret_encrypted)["secret"]
        attempt = await self._post(subscription.url, secret, delivery)
        retry, mails = await self._record(delivery.id, subscription.id, attempt)
        for to, subject, text in mails:
            try:
                await self.mailer.send(to, subject, text)
            except MailNotSent:
                logger.exception("webhook-disabled notice to %s not sent", to)
        if retry is not None:
            raise RetryLater(f"webhook delivery {delivery.id}: {attempt.error}", delay=retry)

    async def _post(self, url: str, secret: str, delivery: WebhookDelivery) -> Attempt:
        body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: sign(secret, body, int(time.time())),
            EVENT_HEADER: delivery.event_type,
            DELIVERY_HEADER: str(delivery.id),
        }
        started = time.perf_counter()
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self.policy), force_close=True)
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
                http.post(url, data=body, headers=headers, allow_redirects=False) as response,
            ):
                text = (await response.content.read(RESPONSE_BODY_LIMIT * 4)).decode("utf-8", "replace")
                elapsed = int((time.perf_counter() - started) * 1000)
                ok = 200 <= response.status < 300
                retry_after = None
                if response.status in (429, 503):
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"), utcnow())
                return Attempt(
                    response.status,
                    text[:RESPONSE_BODY_LIMIT],
                    elapsed,
                    None if ok else f"HTTP {response.status}",
                    retry_after,
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            elapsed = int((time.perf_counter() - started) * 1000)
            reason = "timed out" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
            return Attempt(None, "", elapsed, reason[:500], None)

    async def _give_up(self, delivery_id: int, reason: str) -> None:
        async with self.db.transaction() as session:
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == DeliveryStatus.PENDING)
                .values(status=DeliveryStatus.FAILED, next_attempt_at=None, error=reason)
            )

    async def _record(
        self, delivery_id: int, subscription_id: int, attempt: Attempt
    ) -> tuple[float | None, list[tuple[str, str, str]]]:
        """Store the attempt; the retry delay (None: done) and the notice mails to send."""
        now = utcnow()
        retry: float | None = None
        mails: list[tuple[str, str, str]] = []
        async with self.db.transaction() as session:
            delivery = (
                await session.execute(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id))
            ).scalar_one_or_none()
            if delivery is None:  # the subscription was deleted meanwhile, with its log
                return None, mails
            delivery.attempts += 1
            delivery.last_attempt_at = now
            delivery.response_status = attempt.status
            delivery.response_body = attempt.body
            delivery.duration_ms = attempt.duration_ms
            delivery.error = attempt.error
            if attempt.ok:
                delivery.status = DeliveryStatus.SUCCEEDED
                delivery.next_attempt_at = None
                await session.execute(
                    update(WebhookSubscription)
                    .where(WebhookSubscription.id == subscription_id)
                    .values(consecutive_failures=0, failing_since=None)
                )
                return None, mails
            # Counted in SQL: deliveries of one subscription run side by side.
            failures, failing_since, active = (
                await session.execute(
                    update(WebhookSubscription)
                    .where(WebhookSubscription.id == subscription_id)
                    .values(consecutive_failures=WebhookSubscription.consecutive_failures + 1)
                    .returning(
                        WebhookSubscription.consecutive_failures,
                        WebhookSubscription.failing_since,
                        WebhookSubscription.active,
                    )
                )
            ).one()
            if failing_since is None:
                failing_since = now
                await session.execute(
                    update(WebhookSubscription)
                    .where(
                        WebhookSubscription.id == subscription_id, WebhookSubscription.failing_since.is_(None)
                    )
                    .values(failing_since=now)
                )
            span = timedelta(seconds=self.policy.disable_after_seconds)
            if active and failures >= self.policy.disable_after and now - failing_since >= span:
                delivery.status = DeliveryStatus.FAILED
                delivery.next_attempt_at = None
                mails = await self._disable(session, subscription_id, failures, now)
            elif delivery.attempts >= self.policy.max_attempts:
                delivery.status = DeliveryStatus.FAILED
                delivery.next_attempt_at = None
            else:
                retry = backoff(
                    delivery.attempts,
                    base=self.policy.retry_base,
                    cap=self.policy.retry_cap,
                    at_least=min(attempt.retry_after, self.policy.retry_cap)
                    if attempt.retry_after is not None
                    else None,
                )
                delivery.next_attempt_at = now + timedelta(seconds=retry)
        return retry, mails

    async def _disable(
        self, session: AsyncSession, subscription_id: int, failures: int, now: datetime
    ) -> list[tuple[str, str, str]]:
        subscription = (
            await session.execute(
                select(WebhookSubscription).where(WebhookSubscription.id == subscription_id)
            )
        ).scalar_one()
        reason = f"{failures} failed attempts in a row"
        subscription.active = False
        subscription.disabled_at = now
        subscription.disabled_reason = reason
        await session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.subscription_id == subscription_id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
            )
            .values(status=DeliveryStatus.FAILED, next_attempt_at=None, error="the subscription was disabled")
        )
        admins = (
            await session.execute(
                select(User).where(
                    User.tenant_id == subscription.tenant_id, User.role == Role.ADMIN, User.active.is_(True)
                )
            )
        ).scalars()
        events: list[tuple[str, dict[str, Any]]] = [
            (
                DISABLED_TOPIC,
                {
                    "subscription_id": subscription.id,
                    "disabled_at": now.isoformat(),
                    "disabled_reason": reason,
                },
            )
        ]
        mails = []
        for admin in admins:
            notice = Notification(tenant_id=subscription.tenant_id, user_id=admin.id, kind=NOTIFICATION_KIND)
            session.add(notice)
            await session.flush()
            events.append(
                (
                    NOTIFICATION_CREATED_TOPIC,
                    {
                        "notification_id": notice.id,
                        "user_id": admin.id,
                        "kind": NOTIFICATION_KIND,
                        "subscription_id": subscription.id,
                    },
                )
            )
            mails.append(
                (
                    admin.email,
                    "Parley disabled a webhook",
                    f"The webhook to {subscription.url} (subscription {subscription.id}) was disabled after "
                    f"{reason}.\n\nCheck the receiver, then enable it again under Admin → Webhooks; "
                    "its failed deliveries can be redelivered from the delivery log.",
                )
            )
        await emit(session, subscription.tenant_id, *events)
        logger.warning("webhook subscription %s disabled: %s", subscription.id, reason)
        return mails


def webhook_subscribers(
    db: Database, box: SecretBox, policy: WebhookSettings, mailer: Mailer
) -> dict[str, list[Handler]]:
    """The fan-out on every published topic, and the sender on `webhook.delivery_due`."""
    fanout = WebhookFanout(db).on_event
    subscribers: dict[str, list[Handler]] = {DELIVERY_TOPIC: [WebhookSender(db, box, policy, mailer).deliver]}
    for topic in sorted({e.topic for e in CATALOGUE}):
        subscribers[topic] = [fanout]
    return subscribers
