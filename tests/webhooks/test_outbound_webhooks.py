"""Outbound webhooks end to end: a real inbound SMS becomes a signed POST to a local receiver."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from datetime import timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway.outbound_webhooks.delivery import (
    DELIVERY_TOPIC,
    NOTIFICATION_KIND,
    WebhookFanout,
    retry_after_seconds,
)
from gateway.outbound_webhooks.models import WebhookDelivery, WebhookSubscription
from gateway.outbound_webhooks.signing import sign, verify
from gateway.outbound_webhooks.targets import GuardedResolver
from inbox.models import Notification
from parley.auth import issue_token
from parley.db import Database, utcnow
from parley.models import OutboxEvent, Role, User
from parley.outbox import Event
from parley.settings import WebhookSettings
from tests.conftest import TenantAccess, eventually, make_tenant
from tests.ui.composer_support import web_session
from tests.webhooks.conftest import HooksFactory, Receiver


def receiver_verifies(secret: str, body: bytes, header: str, tolerance: int = 300) -> bool:
    """The README's verification, written from the receiver's side (no Parley code)."""
    parts = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(parts["t"])
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


async def test_an_inbound_sms_is_posted_signed_with_a_public_payload(
    make_hooks: HooksFactory, receiver: Receiver
) -> None:
    hooks = await make_hooks()
    created = await hooks.subscribe(["message.received", "conversation.opened"])
    secret = created["secret"]
    assert secret.startswith("whsec_")

    await hooks.inbound_sms(body="Where is my order?")
    await eventually(lambda: len(receiver.received) >= 2)

    by_type = {r.headers["Parley-Event"]: r for r in receiver.received}
    assert set(by_type) == {"message.received", "conversation.opened"}
    message = by_type["message.received"]
    assert receiver_verifies(secret, message.body, message.headers["Parley-Signature"])
    assert not receiver_verifies("whsec_wrong", message.body, message.headers["Parley-Signature"])
    envelope = message.json
    assert set(envelope) == {"id", "type", "created_at", "tenant", "data"}
    assert envelope["type"] == "message.received"
    assert envelope["tenant"] == {"id": hooks.admin.tenant_id}
    assert envelope["data"]["message"]["body"] == "Where is my order?"
    assert envelope["data"]["message"]["direction"] == "inbound"
    # Internal fields stay inside: no provider ids, extras or secrets.
    for leaked in ("provider_message_id", "extra", "secrets_encrypted", "SM" + "1" * 32, secret):
        assert leaked not in message.body.decode()

    await eventually(lambda: len(receiver.received) >= 2)
    [log] = await hooks.deliveries(created["id"], event_type="message.received")
    assert log["status"] == "succeeded" and log["attempts"] == 1 and log["response_status"] == 200
    assert log["event_id"] == envelope["id"]
    assert message.headers["Parley-Delivery"] == str(log["id"])
    assert log["response_body"] == "answer 1" or log["response_body"] == "answer 2"


async def test_a_500_is_retried_with_backoff_until_the_receiver_answers_200(
    make_hooks: HooksFactory, receiver: Receiver
) -> None:
    hooks = await make_hooks()
    created = await hooks.subscribe(["message.received"])
    receiver.script = [(500, {}), (502, {})]
    await hooks.inbound_sms()

    async def succeeded() -> bool:
        rows = await hooks.deliveries(created["id"])
        return bool(rows) and rows[0]["status"] == "succeeded"

    await eventually(succeeded, timeout=30)
    [log] = await hooks.deliveries(created["id"])
    assert log["attempts"] == 3 and log["response_status"] == 200
    assert len(receiver.received) == 3
    assert len({r.json["id"] for r in receiver.received}) == 1  # the same event each time
    assert receiver.received[1].at > receiver.received[0].at
    # A success resets the subscription's run of failures.
    _status, subscription = await hooks.call("GET", f"/webhooks/{created['id']}")
    assert subscription["consecutive_failures"] == 0 and subscription["active"]


async def test_a_429s_retry_after_is_waited_out(make_hooks: HooksFactory, receiver: Receiver) -> None:
    hooks = await make_hooks()
    created = await hooks.subscribe(["message.received"])
    receiver.script = [(429, {"Retry-After": "3"})]
    await hooks.inbound_sms()

    async def retried() -> bool:
        return len(receiver.received) >= 2

    async def first_attempt_logged() -> bool:
        rows = await hooks.deliveries(created["id"])
        return bool(rows) and rows[0]["attempts"] == 1

    await eventually(first_attempt_logged)
    [log] = await hooks.deliveries(created["id"])
    assert log["status"] == "pending" and log["response_status"] == 429
    assert log["next_attempt_at"] is not None
    await eventually(retried, timeout=30)
    assert receiver.received[1].at - receiver.received[0].at >= 3.0


async def test_repeated_failures_disable_the_subscription_and_tell_the_admins(
    make_hooks: HooksFactory, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = await make_hooks(disable_after=3)
    created = await hooks.subscribe(["message.received"])
    watcher = await hooks.subscribe(["webhook.disabled"])
    receiver.default = 500
    caplog.set_level(logging.WARNING, logger="parley.mailer")
    await hooks.inbound_sms()

    async def disabled() -> bool:
        _status, subscription = await hooks.call("GET", f"/webhooks/{created['id']}")
        return not subscription["active"]

    await eventually(disabled, timeout=40)
    status, subscription = await hooks.call("GET", f"/webhooks/{created['id']}")
    assert subscription["disabled_reason"] == "3 failed attempts in a row"
    [log] = await hooks.deliveries(created["id"])
    assert log["status"] == "failed" and log["attempts"] == 3
    async with hooks.db.sessionmaker() as session:
        notices = (
            (await session.execute(select(Notification).where(Notification.kind == NOTIFICATION_KIND)))
            .scalars()
            .all()
        )
    assert [n.user_id for n in notices] == [hooks.admin.user_id]
    # The bell shows it as a notice pointing at the Webhooks screen, not as a mention.
    signed_in = await web_session(hooks.db, hooks.admin.user_id)
    async with hooks.client.get("/ui/notifications", cookies=signed_in.cookies) as response:
        bell = await response.text()
    assert "disabled a webhook" in bell and 'href="/admin/webhooks"' in bell and "mentioned you" not in bell
    assert [e["subscription_id"] for e in await events(hooks, "webhook.disabled")] == [created["id"]]
    # The mail went through Parley's mailer (logged here: no PARLEY_SMTP_URL in tests).
    await eventually(lambda: "Parley disabled a webhook" in caplog.text)
    # Another subscription hears about it, as a public event.
    await eventually(
        lambda: any(r.headers.get("Parley-Event") == "webhook.disabled" for r in receiver.received)
    )

    # Nothing more is sent to a disabled subscription; re-enabling resets its failure count.
    before = len([r for r in receiver.received if r.headers["Parley-Event"] == "message.received"])
    await hooks.inbound_sms(sid="SM" + "2" * 32)
    await hooks.settle()
    after = len([r for r in receiver.received if r.headers["Parley-Event"] == "message.received"])
    assert after == before
    status, enabled = await hooks.call("PATCH", f"/webhooks/{created['id']}", body={"active": True})
    assert status == 200 and enabled["active"] and enabled["consecutive_failures"] == 0
    assert enabled["disabled_at"] is None
    del watcher


async def events(hooks: Any, topic: str) -> list[dict[str, Any]]:
    async with hooks.db.sessionmaker() as session:
        rows = await session.execute(select(OutboxEvent.payload).where(OutboxEvent.topic == topic))
        return [dict(p) for p in rows.scalars()]


async def test_the_same_event_twice_makes_one_delivery(make_hooks: HooksFactory) -> None:
    hooks = await make_hooks()
    created = await hooks.subscribe(["contact.created"])
    status, contact = await hooks.call("POST", "/contacts", body={"name": "Ann"})
    assert status == 201
    await hooks.settle()
    async with hooks.db.sessionmaker() as session:
        event_id = (
            await session.execute(select(OutboxEvent.id).where(OutboxEvent.topic == "contact.created"))
        ).scalar_one()
    # The dispatcher delivers at least once: run the fan-out again on the same event, twice at once.
    event = Event(
        event_id, hooks.admin.tenant_id, "contact.created", {"contact_id": contact["id"]}, 2, utcnow()
    )
    fanout = WebhookFanout(hooks.db)
    await fanout.on_event(event)
    await fanout.on_event(event)
    async with hooks.db.sessionmaker() as session:
        deliveries = await session.execute(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.subscription_id == created["id"])
        )
        due = await session.execute(
            select(func.count()).select_from(OutboxEvent).where(OutboxEvent.topic == DELIVERY_TOPIC)
        )
        assert deliveries.scalar_one() == 1
        assert due.scalar_one() == 1


async def test_test_events_and_redelivery_keep_the_envelope_id(
    make_hooks: HooksFactory, receiver: Receiver
) -> None:
    hooks = await make_hooks()
    created = await hooks.subscribe(["deal.opened"])
    status, test = await hooks.call("POST", f"/webhooks/{created['id']}/test")
    assert status == 201 and test["event_type"] == "webhook.test"
    await eventually(lambda: len(receiver.received) == 1)
    assert receiver.received[0].json["type"] == "webhook.test"
    assert receiver_verifies(
        created["secret"], receiver.received[0].body, receiver.received[0].headers["Parley-Signature"]
    )

    status, again = await hooks.call("POST", f"/webhooks/{created['id']}/deliveries/{test['id']}/redeliver")
    assert status == 201 and again["id"] != test["id"]
    await eventually(lambda: len(receiver.received) == 2)
    first, second = receiver.received
    assert first.json["id"] == second.json["id"]
    assert first.headers["Parley-Delivery"] != second.headers["Parley-Delivery"]
    assert len(await hooks.deliveries(created["id"])) == 2


async def test_webhooks_are_admin_only_and_tenant_scoped(make_hooks: HooksFactory) -> None:
    hooks = await make_hooks()
    created = await hooks.subscribe(["contact.created"])
    status, got = await hooks.call("GET", f"/webhooks/{created['id']}")
    assert status == 200 and "secret" not in got and "secret_encrypted" not in got

    other = await make_tenant(hooks.db, "globex")
    for method, path in (
        ("GET", f"/webhooks/{created['id']}"),
        ("PATCH", f"/webhooks/{created['id']}"),
        ("GET", f"/webhooks/{created['id']}/deliveries"),
        ("POST", f"/webhooks/{created['id']}/test"),
        ("DELETE", f"/webhooks/{created['id']}"),
    ):
        status, answer = await hooks.call(method, path, who=other, body={} if method == "PATCH" else None)
        assert status == 404, (method, path, answer)
    status, listed = await hooks.call("GET", "/webhooks", who=other)
    assert listed["data"] == []

    for role in (Role.SUPERVISOR, Role.AGENT, Role.MARKETER, Role.BOT_DESIGNER):
        user = await make_user(hooks.db, hooks.admin.tenant_id, role)
        status, _ = await hooks.call("GET", "/webhooks", who=user)
        assert status == 403, role
        status, _ = await hooks.call(
            "POST",
            "/webhooks",
            who=user,
            body={"url": "https://example.com/x", "event_types": ["contact.created"]},
        )
        assert status == 403, role

    status, _ = await hooks.call("DELETE", f"/webhooks/{created['id']}")
    assert status == 204
    async with hooks.db.sessionmaker() as session:
        left = await session.execute(select(func.count()).select_from(WebhookSubscription))
        assert left.scalar_one() == 0


async def make_user(db: Database, tenant_id: int, role: Role) -> TenantAccess:
    """Another user of the tenant, with `role`, and a token for them."""
    async with db.transaction() as session:
        user = User(tenant_id=tenant_id, email=f"{role}@acme.example.com", password_hash="x", role=role)
        session.add(user)
        await session.flush()
        token = await issue_token(session, user)
    return TenantAccess(tenant_id, user.id, token)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://example.com/hook", "https"),
        ("https://10.0.0.8/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "private"),
        ("https://localhost/hook", "private"),
        ("https://[::1]/hook", "private"),
        ("https://user:pass@example.com/hook", "credentials"),
        ("ftp://example.com/hook", "https"),
    ],
)
async def test_targets_are_https_and_public_by_default(
    make_hooks: HooksFactory, url: str, problem: str
) -> None:
    hooks = await make_hooks(allow_private_targets=False)
    status, answer = await hooks.call(
        "POST", "/webhooks", body={"url": url, "event_types": ["contact.created"]}
    )
    assert status == 422, answer
    assert problem in answer["error"]["details"][0]["message"]


async def test_unknown_event_types_are_refused(make_hooks: HooksFactory) -> None:
    hooks = await make_hooks()
    status, answer = await hooks.call(
        "POST", "/webhooks", body={"url": "https://example.com/h", "event_types": ["message.recieved"]}
    )
    assert status == 422 and "message.recieved" in answer["error"]["details"][0]["message"]
    status, catalogue = await hooks.call("GET", "/webhooks/event-types")
    types = {e["type"] for e in catalogue["data"]}
    assert {
        "message.received",
        "conversation.resolved",
        "ticket.created",
        "csat.rated",
        "task.created",
    } <= types


def test_signatures_verify_and_refuse_tampering_and_replays() -> None:
    body = b'{"id":"evt_1"}'
    now = int(time.time())
    header = sign("whsec_k", body, now)
    assert verify("whsec_k", body, header)
    assert not verify("whsec_k", body + b" ", header)
    assert not verify("whsec_other", body, header)
    stale = sign("whsec_k", body, now - int(timedelta(minutes=10).total_seconds()))
    assert not verify("whsec_k", body, stale)
    assert not verify("whsec_k", body, "v1=abc")


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = utcnow()
    assert retry_after_seconds("120", now) == 120.0
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert 88 <= (retry_after_seconds(later, now) or 0) <= 90
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None, now) is None


async def test_deliveries_refuse_names_that_resolve_to_private_addresses() -> None:
    """The resolver the sender connects through: a name re-pointed at 127.0.0.1 after saving is refused."""
    with pytest.raises(OSError, match="not a public address"):
        await GuardedResolver(WebhookSettings()).resolve("localhost", 443)
    allowed = await GuardedResolver(WebhookSettings(allow_private_targets=True)).resolve("localhost", 443)
    assert allowed


async def test_a_solved_ticket_is_published_as_ticket_resolved(
    make_hooks: HooksFactory, receiver: Receiver
) -> None:
    hooks = await make_hooks()
    await hooks.subscribe(["ticket.created", "ticket.resolved"])
    status, contact = await hooks.call("POST", "/contacts", body={"name": "Ann"})
    assert status == 201
    status, ticket = await hooks.call(
        "POST", "/tickets", body={"subject": "Printer", "contact_id": contact["id"]}
    )
    assert status == 201, ticket
    status, _ = await hooks.call("POST", f"/tickets/{ticket['id']}/status", body={"status": "pending"})
    assert status == 200  # a status change that is not solving: not published as resolved
    status, _ = await hooks.call("POST", f"/tickets/{ticket['id']}/status", body={"status": "solved"})
    assert status == 200
    await eventually(lambda: len(receiver.received) >= 2)
    await hooks.settle()

    assert [r.headers["Parley-Event"] for r in receiver.received] == ["ticket.created", "ticket.resolved"]
    data = receiver.received[1].json["data"]
    assert (data["ticket_id"], data["from"], data["to"]) == (ticket["id"], "pending", "solved")
