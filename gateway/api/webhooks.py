"""`/webhooks`: outbound webhook subscriptions, their delivery log, redelivery and test events (admins only).

How deliveries are made, signed, retried and disabled: `gateway.outbound_webhooks.delivery`;
where they may go (the SSRF guard): `gateway.outbound_webhooks.targets`.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator
from sqlalchemy import select

from gateway.api.pagination import fetch_page
from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable, field_errors
from gateway.api.schemas import Page, PageQuery, RequestBody, ResponseBody
from gateway.errors import NotFound
from gateway.keys import SECRET_BOX, SETTINGS
from gateway.outbound_webhooks.catalogue import CATALOGUE, EVENT_TYPES, TEST_TYPE, envelope
from gateway.outbound_webhooks.delivery import insert_deliveries, queue
from gateway.outbound_webhooks.models import DeliveryStatus, WebhookDelivery, WebhookSubscription
from gateway.outbound_webhooks.signing import new_secret
from gateway.outbound_webhooks.targets import TargetRefused, check_resolved, check_url
from parley.db import utcnow

routes = RouteTable("webhooks")

Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=8, max_length=2000)]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)]


def _event_types(values: list[str]) -> list[str]:
    unknown = sorted(set(values) - EVENT_TYPES)
    if unknown:
        raise ValueError(f"unknown event types: {', '.join(unknown)} (see GET /webhooks/event-types)")
    if not values:
        raise ValueError("name at least one event type")
    return sorted(set(values))


class WebhookCreate(RequestBody):
    url: Url = Field(description="Where to POST: https:// (see the README on http and private addresses).")
    event_types: list[str] = Field(description="The public event types to receive.", max_length=100)
    description: Description = ""
    active: bool = True

    _types = field_validator("event_types")(_event_types)


class WebhookUpdate(RequestBody):
    url: Url | None = None
    event_types: list[str] | None = Field(None, max_length=100)
    description: Description | None = None
    active: bool | None = Field(
        None, description="true re-enables a disabled subscription (its failure count starts again)."
    )

    @field_validator("event_types")
    @classmethod
    def _types(cls, values: list[str] | None) -> list[str] | None:
        return None if values is None else _event_types(values)


class WebhookOut(ResponseBody):
    id: int
    url: str
    description: str
    event_types: list[str]
    active: bool
    consecutive_failures: int
    disabled_at: datetime | None
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookOut):
    secret: str = Field(description="The signing secret: shown this once, store it now.")


class WebhookList(ResponseBody):
    data: list[WebhookOut]


class EventTypeOut(ResponseBody):
    type: str
    description: str


class EventTypeList(ResponseBody):
    data: list[EventTypeOut]


class DeliveryQuery(PageQuery):
    status: Literal["pending", "succeeded", "failed"] | None = None
    event_type: str | None = Field(None, max_length=100)


class DeliveryOut(ResponseBody):
    id: int
    subscription_id: int
    event_type: str
    event_id: str = Field(description="The envelope's `id`: the same on every redelivery of one event.")
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    response_status: int | None
    response_body: str | None = Field(description="The receiver's answer, truncated to 2000 characters.")
    duration_ms: int | None
    error: str | None
    created_at: datetime


class DeliveryDetail(DeliveryOut):
    payload: dict[str, Any] = Field(description="The body as sent.")


class DeliveryList(Page):
    data: list[DeliveryOut]


def _delivery_out(d: WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=d.id,
        subscription_id=d.subscription_id,
        event_type=d.event_type,
        event_id=str(d.payload.get("id", "")),
        status=d.status,
        attempts=d.attempts,
        next_attempt_at=d.next_attempt_at,
        last_attempt_at=d.last_attempt_at,
        response_status=d.response_status,
        response_body=d.response_body,
        duration_ms=d.duration_ms,
        error=d.error,
        created_at=d.created_at,
    )


async def _checked_url(call: ApiRequest, url: str) -> str:
    policy = call.app[SETTINGS].webhooks
    try:
        checked = check_url(url, policy)
        await check_resolved(checked, policy)
    except TargetRefused as e:
        raise field_errors({"body.url": str(e)}) from None
    return checked


async def get_subscription(call: ApiRequest, webhook_id: int) -> WebhookSubscription:
    """The tenant's subscription; 404 if there is none (or it is another tenant's)."""
    found = (
        await call.session.execute(
            select(WebhookSubscription).where(
                WebhookSubscription.id == webhook_id, WebhookSubscription.tenant_id == call.tenant_id
            )
        )
    ).scalar_one_or_none()
    if found is None:
        raise NotFound("webhook")
    return found


async def _get_delivery(call: ApiRequest, webhook_id: int, delivery_id: int) -> WebhookDelivery:
    await get_subscription(call, webhook_id)
    found = (
        await call.session.execute(
            select(WebhookDelivery).where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.subscription_id == webhook_id,
                WebhookDelivery.tenant_id == call.tenant_id,
            )
        )
    ).scalar_one_or_none()
    if found is None:
        raise NotFound("delivery")
    return found


@routes.get("/webhooks/event-types", allow=Permission.MANAGE_WEBHOOKS)
async def list_webhook_event_types(call: ApiRequest) -> EventTypeList:
    """The public event types a subscription may receive."""
    return EventTypeList(data=[EventTypeOut(type=e.type, description=e.description) for e in CATALOGUE])


@routes.get("/webhooks", allow=Permission.MANAGE_WEBHOOKS)
async def list_webhooks(call: ApiRequest) -> WebhookList:
    """List the tenant's webhook subscriptions."""
    rows = await call.session.execute(
        select(WebhookSubscription)
        .where(WebhookSubscription.tenant_id == call.tenant_id)
        .order_by(WebhookSubscription.id)
    )
    return WebhookList(data=[WebhookOut.model_validate(s) for s in rows.scalars()])


@routes.post("/webhooks", allow=Permission.MANAGE_WEBHOOKS)
async def create_webhook(call: ApiRequest, *, body: WebhookCreate) -> WebhookCreated:
    """Subscribe a URL to event types; the answer carries the signing secret, shown only this once.

    Every delivery is a POST of `{id, type, created_at, tenant, data}` with the headers
    `Parley-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the secret>`,
    `Parley-Event` and `Parley-Delivery`. 422 if the URL is not https:// or names a private address.
    """
    url = await _checked_url(call, body.url)
    secret = new_secret()
    subscription = WebhookSubscription(
        tenant_id=call.tenant_id,
        url=url,
        description=body.description,
        event_types=body.event_types,
        secret_encrypted=call.app[SECRET_BOX].seal({"secret": secret}),
        active=body.active,
        consecutive_failures=0,
    )
    call.session.add(subscription)
    await call.session.flush()
    await call.session.refresh(subscription)
    return WebhookCreated(**WebhookOut.model_validate(subscription).model_dump(), secret=secret)


@routes.get("/webhooks/{webhook_id}", allow=Permission.MANAGE_WEBHOOKS)
async def get_webhook(call: ApiRequest, *, webhook_id: int) -> WebhookOut:
    """Get a webhook subscription (never its secret)."""
    return WebhookOut.model_validate(await get_subscription(call, webhook_id))


@routes.patch("/webhooks/{webhook_id}", allow=Permission.MANAGE_WEBHOOKS)
async def update_webhook(call: ApiRequest, *, webhook_id: int, body: WebhookUpdate) -> WebhookOut:
    """Change a subscription's URL, event types or description, or disable / re-enable it."""
    subscription = await get_subscription(call, webhook_id)
    if body.url is not None:
        subscription.url = await _checked_url(call, body.url)
    if body.event_types is not None:
        subscription.event_types = body.event_types
    if body.description is not None:
        subscription.description = body.description
    if body.active is not None and body.active != subscription.active:
        subscription.active = body.active
        if body.active:
            subscription.consecutive_failures = 0
            subscription.failing_since = None
            subscription.disabled_at = None
            subscription.disabled_reason = None
        else:
            subscription.disabled_at = utcnow()
            subscription.disabled_reason = "disabled by an admin"
    await call.session.flush()
    await call.session.refresh(subscription)
    return WebhookOut.model_validate(subscription)


@routes.delete("/webhooks/{webhook_id}", allow=Permission.MANAGE_WEBHOOKS)
async def delete_webhook(call: ApiRequest, *, webhook_id: int) -> None:
    """Delete a subscription and its delivery log; pending deliveries are dropped."""
    await call.session.delete(await get_subscription(call, webhook_id))


@routes.get("/webhooks/{webhook_id}/deliveries", allow=Permission.MANAGE_WEBHOOKS, errors=[400])
async def list_webhook_deliveries(call: ApiRequest, *, webhook_id: int, query: DeliveryQuery) -> DeliveryList:
    """The subscription's delivery log, newest first, filtered by `status` and `event_type`."""
    await get_subscription(call, webhook_id)
    stmt = select(WebhookDelivery).where(
        WebhookDelivery.tenant_id == call.tenant_id, WebhookDelivery.subscription_id == webhook_id
    )
    if query.status is not None:
        stmt = stmt.where(WebhookDelivery.status == query.status)
    if query.event_type is not None:
        stmt = stmt.where(WebhookDelivery.event_type == query.event_type)
    rows, next_cursor = await fetch_page(call.session, stmt, WebhookDelivery.id, query)
    return DeliveryList(data=[_delivery_out(d) for d in rows], next_cursor=next_cursor)


@routes.get("/webhooks/{webhook_id}/deliveries/{delivery_id}", allow=Permission.MANAGE_WEBHOOKS)
async def get_webhook_delivery(call: ApiRequest, *, webhook_id: int, delivery_id: int) -> DeliveryDetail:
    """One delivery with the payload as sent."""
    d = await _get_delivery(call, webhook_id, delivery_id)
    return DeliveryDetail(**_delivery_out(d).model_dump(), payload=d.payload)


async def _new_delivery(
    call: ApiRequest, subscription: WebhookSubscription, event_type: str, payload: Any
) -> int:
    now = utcnow()
    [delivery_id] = await insert_deliveries(
        call.session,
        [
            {
                "tenant_id": call.tenant_id,
                "subscription_id": subscription.id,
                "event_id": None,
                "event_type": event_type,
                "payload": payload,
                "status": DeliveryStatus.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        ],
    )
    await queue(call.session, call.tenant_id, [delivery_id])
    call.notify_after_commit()
    return delivery_id


async def _answer(call: ApiRequest, delivery_id: int) -> DeliveryOut:
    d = (
        await call.session.execute(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id))
    ).scalar_one()
    return _delivery_out(d)


@routes.post(
    "/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    allow=Permission.MANAGE_WEBHOOKS,
    errors=[409],
)
async def redeliver_webhook(call: ApiRequest, *, webhook_id: int, delivery_id: int) -> DeliveryOut:
    """Send a delivery's payload again, as a new delivery (same envelope `id`, so receivers deduplicate).

    Works on a disabled subscription's log too, but is only attempted once the subscription is active.
    """
    original = await _get_delivery(call, webhook_id, delivery_id)
    subscription = await get_subscription(call, webhook_id)
    return await _answer(call, await _new_delivery(call, subscription, original.event_type, original.payload))


@routes.post("/webhooks/{webhook_id}/test", allow=Permission.MANAGE_WEBHOOKS)
async def test_webhook(call: ApiRequest, *, webhook_id: int) -> DeliveryOut:
    """Send a `webhook.test` event to the subscription now; follow it in the delivery log."""
    subscription = await get_subscription(call, webhook_id)
    payload = envelope(
        public_id=f"evt_test_{secrets.token_hex(8)}",
        type=TEST_TYPE,
        created_at=utcnow(),
        tenant_id=call.tenant_id,
        data={"subscription_id": subscription.id, "message": "A test event from Parley."},
    )
    return await _answer(call, await _new_delivery(call, subscription, TEST_TYPE, payload))
