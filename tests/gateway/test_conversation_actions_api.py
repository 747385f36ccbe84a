"""The conversation actions' API on both databases: labels, priority, snooze, merge, read marks, the list."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from celery.contrib.testing.worker import start_worker
from sqlalchemy import select, update

from gateway.keys import NOTIFIER
from inbox.models import Conversation, ConversationStatus, Message
from parley.db import utcnow
from parley.models import OutboxEvent, Role
from parley.tasks import SNOOZE_TASK, celery_app
from routing.models import ConversationRouting, SlaClock, SlaPolicy, Team
from tests.conftest import TenantAccess, eventually, make_tenant
from tests.fakes.twilio_api import load_fixture, sign
from tests.gateway.test_api import Api, add_conversation, api

__all__ = ["api"]


@pytest_asyncio.fixture(autouse=True)
async def settled(api: Api) -> AsyncIterator[None]:
    """Let the app's dispatcher finish what a test set off before the app stops (see tests/crm)."""
    yield
    api.client.app[NOTIFIER].notify()

    async def idle() -> bool:
        return await api.count(OutboxEvent, OutboxEvent.completed_at.is_(None)) == 0

    await eventually(idle, timeout=30)


async def add_message(
    api: Api, conversation_id: int, body: str, *, inbound: bool = True, ago: float = 0
) -> int:
    at = utcnow() - timedelta(minutes=ago)
    async with api.db.transaction() as session:
        conversation = await session.get_one(Conversation, conversation_id)
        message = Message(
            tenant_id=conversation.tenant_id,
            inbox_id=conversation.inbox_id,
            conversation_id=conversation_id,
            direction="inbound" if inbound else "outbound",
            sender_type="contact" if inbound else "user",
            sender_id=conversation.contact_id if inbound else None,
            body=body,
            status="received" if inbound else "sent",
            created_at=at,
        )
        session.add(message)
        conversation.last_message_at = max(conversation.last_message_at or at, at)
        await session.flush()
        return message.id


async def other_tenant(api: Api) -> tuple[TenantAccess, int]:
    """Globex, with a conversation of its own."""
    globex = await make_tenant(api.db, "globex")
    inbox_id = await api.create_inbox(who=globex)
    _, conversation_id = await add_conversation(api.db, globex.tenant_id, inbox_id, "+14155550999")
    return globex, conversation_id


async def updates(api: Api, conversation_id: int) -> list[dict[str, Any]]:
    return [e for e in await api.events("conversation.updated") if e["conversation_id"] == conversation_id]


# --- labels ---------------------------------------------------------------------------------------


async def test_labels_are_managed_by_admins_and_supervisors_and_read_by_everyone(api: Api) -> None:
    agent = await make_tenant(api.db, "acme", role=Role.AGENT)
    supervisor = await make_tenant(api.db, "acme", role=Role.SUPERVISOR)
    marketer = await make_tenant(api.db, "acme", role=Role.MARKETER)
    status, label = await api.call(
        "POST", "/labels", body={"name": "Billing", "color": "#FF0000", "description": "Money matters"}
    )
    assert status == 201, label
    assert (label["name"], label["color"], label["description"]) == ("Billing", "#ff0000", "Money matters")
    status, body = await api.call("POST", "/labels", who=supervisor, body={"name": " billing "})
    assert (status, body["error"]["code"]) == (409, "label_exists")
    status, body = await api.call("POST", "/labels", who=agent, body={"name": "Bug"})
    assert (status, body["error"]["code"]) == (403, "forbidden")
    for bad in ({"name": ""}, {"name": "x" * 65}, {"name": "ok", "color": "red"}, {"name": "ok", "extra": 1}):
        status, body = await api.call("POST", "/labels", body=bad)
        assert (status, body["error"]["code"]) == (422, "validation_error"), bad
    status, created = await api.call("POST", "/labels", who=supervisor, body={"name": "Bug"})
    assert (status, created["color"]) == (201, "#6b7280")

    for who in (agent, marketer):
        status, listing = await api.call("GET", "/labels", who=who)
        assert (status, [item["name"] for item in listing["data"]]) == (200, ["Billing", "Bug"])
    status, renamed = await api.call("PATCH", f"/labels/{created['id']}", body={"name": "Defect"})
    assert (status, renamed["name"]) == (200, "Defect")
    status, body = await api.call("PATCH", f"/labels/{created['id']}", body={"name": "BILLING"})
    assert (status, body["error"]["code"]) == (409, "label_exists")
    status, body = await api.call("PATCH", f"/labels/{created['id']}", who=agent, body={"name": "x"})
    assert status == 403
    status, _ = await api.call("DELETE", f"/labels/{created['id']}")
    assert status == 204
    status, _ = await api.call("GET", f"/labels/{created['id']}")
    assert status == 404

    globex, _ = await other_tenant(api)
    for method, body in (("GET", None), ("PATCH", {"name": "Mine now"}), ("DELETE", None)):
        status, answer = await api.call(method, f"/labels/{label['id']}", who=globex, body=body)
        assert (status, answer["error"]["code"]) == (404, "not_found"), method
    status, listing = await api.call("GET", "/labels", who=globex)
    assert listing["data"] == []


async def test_setting_a_conversations_labels(api: Api) -> None:
    agent = await make_tenant(api.db, "acme", role=Role.AGENT)
    marketer = await make_tenant(api.db, "acme", role=Role.MARKETER)
    await api.call("POST", "/labels", body={"name": "VIP"})
    inbox_id = await api.create_inbox()
    _, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")
    path = f"/conversations/{conversation_id}/labels"

    status, body = await api.call("PUT", path, who=agent, body={"labels": ["vip", "Refund"]})
    assert (status, body["error"]["code"]) == (422, "unknown_labels")
    assert "Refund" in body["error"]["message"]
    assert await updates(api, conversation_id) == []
    status, conversation = await api.call("PUT", path, who=agent, body={"labels": ["vip"]})
    assert status == 200, conversation
    assert [label["name"] for label in conversation["labels"]] == ["VIP"]
    status, conversation = await api.call("PUT", path, body={"labels": ["vip", "Refund"]})  # admin: creates
    assert [label["name"] for label in conversation["labels"]] == ["Refund", "VIP"]
    status, _ = await api.call("PUT", path, who=marketer, body={"labels": []})
    assert status == 403
    first, second = await updates(api, conversation_id)
    assert first["changes"] == {"labels": {"old": [], "new": ["VIP"]}}
    assert second["changes"] == {"labels": {"old": ["VIP"], "new": ["Refund", "VIP"]}}
    assert second["changed_by"] == {"type": "user", "id": api.admin.user_id}
    status, detail = await api.call("GET", f"/conversations/{conversation_id}")
    assert [label["name"] for label in detail["labels"]] == ["Refund", "VIP"]

    globex, theirs = await other_tenant(api)
    status, body = await api.call("PUT", f"/conversations/{theirs}/labels", body={"labels": ["VIP"]})
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = await api.call("PUT", path, who=globex, body={"labels": ["VIP"]})
    assert status == 404


# --- priority and snooze --------------------------------------------------------------------------


async def test_priority_is_patched_and_validated(api: Api) -> None:
    inbox_id = await api.create_inbox()
    _, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")
    path = f"/conversations/{conversation_id}"
    status, conversation = await api.call("PATCH", path, body={"priority": "high"})
    assert (status, conversation["priority"]) == (200, "high")
    for bad in ("asap", None, 3):
        status, body = await api.call("PATCH", path, body={"priority": bad})
        assert (status, body["error"]["code"]) == (422, "validation_error"), bad
    [event] = await updates(api, conversation_id)
    assert event["changes"] == {"priority": {"old": "none", "new": "high"}}
    globex, _ = await other_tenant(api)
    status, _ = await api.call("PATCH", path, who=globex, body={"priority": "low"})
    assert status == 404


async def test_snoozing_through_the_api(api: Api) -> None:
    inbox_id = await api.create_inbox()
    _, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")
    path = f"/conversations/{conversation_id}"
    past = (utcnow() - timedelta(minutes=5)).isoformat()
    status, body = await api.call("PATCH", path, body={"status": "snoozed", "snoozed_until": past})
    assert (status, body["error"]["code"]) == (422, "invalid_snooze")
    status, body = await api.call(
        "PATCH", path, body={"status": "snoozed", "snoozed_until": "2030-01-01T10:00"}
    )
    assert (status, body["error"]["code"]) == (422, "validation_error")  # no time zone
    status, body = await api.call("PATCH", path, body={"snoozed_until": "2999-01-01T10:00:00Z"})
    assert (status, body["error"]["code"]) == (422, "invalid_snooze")  # an open conversation: snooze it first
    status, conversation = await api.call(
        "PATCH", path, body={"status": "snoozed", "snoozed_until": "2999-01-01T10:00:00Z"}
    )
    assert status == 200, conversation
    assert (conversation["status"], conversation["snoozed_until"]) == ("snoozed", "2999-01-01T10:00:00Z")
    status, conversation = await api.call("PATCH", path, body={"snoozed_until": "2999-02-01T10:00:00+01:00"})
    assert (status, conversation["snoozed_until"]) == (200, "2999-02-01T09:00:00Z")  # a new time, in UTC
    status, conversation = await api.call("PATCH", path, body={"status": "snoozed", "snoozed_until": None})
    assert (conversation["status"], conversation["snoozed_until"]) == ("snoozed", None)  # until the reply
    status, conversation = await api.call("PATCH", path, body={"status": "open"})
    assert (conversation["status"], conversation["snoozed_until"]) == ("open", None)
    january, february = "2999-01-01T10:00:00+00:00", "2999-02-01T09:00:00+00:00"
    changes = [e["changes"] for e in await updates(api, conversation_id)]
    assert changes == [
        {"status": {"old": "open", "new": "snoozed"}, "snoozed_until": {"old": None, "new": january}},
        {"snoozed_until": {"old": january, "new": february}},
        {"snoozed_until": {"old": february, "new": None}},
        {"status": {"old": "snoozed", "new": "open"}},
    ]


async def post_sms(api: Api, inbox_id: int, sid: str, body: str) -> None:
    """A customer's SMS through the real webhook, signed as Twilio signs it."""
    replace = {"MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid, "Body": body}
    replace["AccountSid"] = api.fake.account_sid
    params = [(k, replace.get(k, v)) for k, v in load_fixture("inbound__sms")]
    path = f"/webhooks/{inbox_id}"
    signature = sign(f"{api.settings.public_url}{path}", params, api.fake.auth_token)
    async with api.client.post(path, data=params, headers={"X-Twilio-Signature": signature}) as response:
        assert response.status == 200, await response.text()


async def test_the_customers_reply_through_the_webhook_wakes_a_snoozed_conversation(api: Api) -> None:
    inbox_id = await api.create_inbox()
    await post_sms(api, inbox_id, "SM" + "1" * 32, "Hello?")
    status, page = await api.call("GET", "/conversations")
    [conversation] = page["data"]
    path = f"/conversations/{conversation['id']}"
    status, _ = await api.call(
        "PATCH", path, body={"status": "snoozed", "snoozed_until": "2999-01-01T00:00:00Z"}
    )
    assert status == 200
    await post_sms(api, inbox_id, "SM" + "2" * 32, "Still waiting")

    async def announced() -> bool:
        return any(e.get("reason") == "customer_replied" for e in await updates(api, conversation["id"]))

    await eventually(announced)
    status, woken = await api.call("GET", path)
    assert (woken["status"], woken["snoozed_until"]) == ("open", None)
    [event] = [e for e in await updates(api, conversation["id"]) if e.get("reason") == "customer_replied"]
    assert event["changes"]["status"] == {"old": "snoozed", "new": "open"}
    assert event["changed_by"] == {"type": "system", "id": None}


async def test_a_celery_beat_task_wakes_due_snoozes(
    api: Api, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "PARLEY_DATABASE_URL": api.settings.database_url,
        "PARLEY_SECRET_KEY": api.settings.secret_key,
        "PARLEY_REDIS_URL": redis_url,
        "PARLEY_DATA_DIR": str(api.settings.data_dir),
    }.items():
        monkeypatch.setenv(name, value)
    inbox_id = await api.create_inbox()
    _, due = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")
    _, later = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550101")
    for conversation_id in (due, later):
        status, _ = await api.call(
            "PATCH",
            f"/conversations/{conversation_id}",
            body={"status": "snoozed", "snoozed_until": "2999-01-01T00:00:00Z"},
        )
        assert status == 200
    async with api.db.transaction() as session:  # time passes for one of them
        await session.execute(
            update(Conversation)
            .where(Conversation.id == due)
            .values(snoozed_until=utcnow() - timedelta(seconds=1))
        )
    app = celery_app(redis_url)
    assert app.conf.beat_schedule["snooze-sweep"]["task"] == SNOOZE_TASK
    with start_worker(app, perform_ping_check=False, pool="solo", shutdown_timeout=30):
        app.send_task(SNOOZE_TASK)

        async def woken() -> bool:
            async with api.db.sessionmaker() as session:
                found = await session.execute(select(Conversation.status).where(Conversation.id == due))
            return found.scalar() == ConversationStatus.OPEN

        await eventually(woken, timeout=30)
    assert (await api.call("GET", f"/conversations/{later}"))[1]["status"] == "snoozed"
    [event] = [e for e in await updates(api, due) if e.get("reason") == "snooze_expired"]
    assert event["changes"]["status"] == {"old": "snoozed", "new": "open"}


# --- merge ----------------------------------------------------------------------------------------


async def test_merging_two_conversations_of_a_contact(api: Api) -> None:
    agent = await make_tenant(api.db, "acme", role=Role.AGENT)
    marketer = await make_tenant(api.db, "acme", role=Role.MARKETER)
    first_inbox, second_inbox = await api.create_inbox(), await api.create_inbox()
    contact_id, target = await add_conversation(api.db, api.admin.tenant_id, first_inbox, "+14155550100")
    _, source = await add_conversation(api.db, api.admin.tenant_id, second_inbox, "", contact_id=contact_id)
    _, stranger = await add_conversation(api.db, api.admin.tenant_id, first_inbox, "+14155550111")
    await add_message(api, target, "first", ago=10)
    moved = await add_message(api, source, "second", ago=5)
    path = f"/conversations/{source}/merge"

    status, body = await api.call("POST", path, who=marketer, body={"into": target})
    assert status == 403
    status, body = await api.call("POST", path, body={"into": stranger})
    assert (status, body["error"]["code"]) == (422, "different_contacts")
    assert "different contacts" in body["error"]["message"]
    status, body = await api.call("POST", path, body={"into": source})
    assert (status, body["error"]["code"]) == (422, "same_conversation")
    globex, theirs = await other_tenant(api)
    status, body = await api.call("POST", path, body={"into": theirs})
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = await api.call("POST", f"/conversations/{theirs}/merge", body={"into": target})
    assert status == 404
    status, body = await api.call("POST", path, who=globex, body={"into": target})
    assert status == 404
    assert await updates(api, source) == []

    status, merged = await api.call("POST", path, who=agent, body={"into": target})
    assert status == 200, merged
    assert (merged["source"]["status"], merged["source"]["merged_into_id"]) == ("resolved", target)
    assert (merged["target"]["id"], merged["messages_moved"], merged["already_merged"]) == (target, 1, False)
    status, messages = await api.call("GET", f"/conversations/{target}/messages")
    assert [m["body"] for m in messages["data"]] == ["first", "second"]
    assert messages["data"][1]["id"] == moved
    status, messages = await api.call("GET", f"/conversations/{source}/messages")
    assert messages["data"] == []
    [source_event] = await updates(api, source)
    [target_event] = await updates(api, target)
    assert source_event["changes"]["merged_into_id"] == {"old": None, "new": target}
    assert target_event["changes"] == {"merged_from": {"old": None, "new": source}}

    status, again = await api.call("POST", path, body={"into": target})  # a retry
    assert status == 200
    assert again["already_merged"] is True
    assert (again["source"]["merged_into_id"], again["target"]["id"]) == (target, target)
    assert len(await updates(api, source)) == 1


# --- read marks -----------------------------------------------------------------------------------


async def test_read_and_unread_are_per_agent(api: Api) -> None:
    agent = await make_tenant(api.db, "acme", role=Role.AGENT)
    inbox_id = await api.create_inbox()
    _, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")
    await add_message(api, conversation_id, "one", ago=3)
    await add_message(api, conversation_id, "reply", inbound=False, ago=2)
    last = await add_message(api, conversation_id, "two", ago=1)

    status, state = await api.call("POST", f"/conversations/{conversation_id}/read", who=agent)
    assert (status, state) == (
        200,
        {"conversation_id": conversation_id, "last_read_message_id": last, "unread_count": 0},
    )
    status, detail = await api.call("GET", f"/conversations/{conversation_id}", who=agent)
    assert detail["unread_count"] == 0
    status, detail = await api.call("GET", f"/conversations/{conversation_id}")  # the admin has read nothing
    assert detail["unread_count"] == 2
    status, state = await api.call("POST", f"/conversations/{conversation_id}/unread", who=agent)
    assert (status, state["unread_count"], state["last_read_message_id"]) == (200, 1, last - 1)
    status, page = await api.call("GET", "/conversations", who=agent)
    assert page["data"][0]["unread_count"] == 1

    globex, theirs = await other_tenant(api)
    for action in ("read", "unread"):
        status, body = await api.call("POST", f"/conversations/{theirs}/{action}")
        assert (status, body["error"]["code"]) == (404, "not_found")
        status, _ = await api.call("POST", f"/conversations/{conversation_id}/{action}", who=globex)
        assert status == 404


# --- the list -------------------------------------------------------------------------------------


async def test_the_list_views_filters_sorts_and_counts(api: Api) -> None:
    agent = await make_tenant(api.db, "acme", role=Role.AGENT)
    sms = await api.create_inbox()
    _, mine = await add_conversation(
        api.db, api.admin.tenant_id, sms, "+14155550100", assignee_id=agent.user_id
    )
    _, waiting = await add_conversation(api.db, api.admin.tenant_id, sms, "+14155550101")
    _, resolved = await add_conversation(
        api.db, api.admin.tenant_id, sms, "+14155550102", status=ConversationStatus.RESOLVED
    )
    await add_message(api, waiting, "Where is my order? " * 20, ago=30)
    await add_message(api, mine, "hi", ago=5)
    await add_message(api, mine, "hello, how can I help?", inbound=False, ago=4)
    await api.call("PATCH", f"/conversations/{mine}", body={"priority": "urgent"})
    await api.call("PUT", f"/conversations/{waiting}/labels", body={"labels": ["Shipping"]})
    async with api.db.transaction() as session:
        team = Team(tenant_id=api.admin.tenant_id, name="Logistics")
        session.add(team)
        await session.flush()
        contact_id = (await session.get_one(Conversation, waiting)).contact_id
        session.add(
            ConversationRouting(
                conversation_id=waiting,
                tenant_id=api.admin.tenant_id,
                contact_id=contact_id,
                channel_kind="chat",
                state="waiting",
                team_id=team.id,
            )
        )

    async def ids(who: TenantAccess | None = None, **params: Any) -> list[int]:
        status, page = await api.call("GET", "/conversations", who=who, params=params)
        assert status == 200, page
        return [c["id"] for c in page["data"]]

    assert await ids(agent, view="mine") == [mine]
    assert await ids(agent, view="unassigned") == [resolved, waiting]  # the newest first
    assert await ids(status="open", sort="waiting") == [waiting, mine]  # `mine` was answered

    # Priority scoring rescores `waiting` when its labels change: 30 minutes waiting make it medium.
    async def idle() -> bool:
        return await api.count(OutboxEvent, OutboxEvent.completed_at.is_(None)) == 0

    api.client.app[NOTIFIER].notify()
    await eventually(idle)
    assert await ids(sort="priority") == [mine, waiting, resolved]
    assert await ids(channel="twilio_sms", status="open") == [mine, waiting]
    assert await ids(channel="email") == []
    assert await ids(label="SHIPPING") == [waiting]
    assert await ids(priority="urgent") == [mine]
    assert await ids(team_id=team.id) == [waiting]
    globex, _ = await other_tenant(api)
    assert await ids(globex, team_id=team.id) == []
    for bad in ({"sort": "oldest"}, {"view": "theirs"}, {"channel": "pigeon"}, {"priority": "asap"}):
        status, body = await api.call("GET", "/conversations", params=bad)
        assert (status, body["error"]["code"]) == (422, "validation_error"), bad

    status, page = await api.call(
        "GET", "/conversations", who=agent, params={"status": "open", "sort": "waiting"}
    )
    row = page["data"][0]
    assert row["id"] == waiting
    assert row["contact_name"] == "Customer +14155550101"
    assert (row["inbox_name"], row["channel"], row["assignee_name"]) == ("Support line", "twilio_sms", None)
    assert row["last_message_preview"].startswith("Where is my order? Where")
    assert len(row["last_message_preview"]) <= 140 and row["last_message_preview"].endswith("…")
    assert [label["name"] for label in row["labels"]] == ["Shipping"]
    assert row["unread_count"] == 1 and row["waiting_since"] is not None
    assert page["data"][1]["assignee_name"] == "agent@acme.example.com"

    status, counts = await api.call("GET", "/conversations/counts", who=agent, params={"status": "open"})
    assert status == 200, counts
    assert counts == {
        "mine": {"total": 1, "unread": 1},
        "unassigned": {"total": 1, "unread": 1},
        "all": {"total": 2, "unread": 2},
    }
    await api.call("POST", f"/conversations/{waiting}/read", who=agent)
    status, counts = await api.call("GET", "/conversations/counts", who=agent, params={"status": "open"})
    assert counts["all"] == {"total": 2, "unread": 1}
    status, counts = await api.call("GET", "/conversations/counts", who=globex)
    assert counts["all"] == {"total": 1, "unread": 0}  # globex's own conversation has no messages


async def test_the_list_sorts_by_the_soonest_sla_due(api: Api) -> None:
    sms = await api.create_inbox()
    _, later = await add_conversation(api.db, api.admin.tenant_id, sms, "+14155550110")
    _, sooner = await add_conversation(api.db, api.admin.tenant_id, sms, "+14155550111")
    _, untimed = await add_conversation(api.db, api.admin.tenant_id, sms, "+14155550112")
    now = utcnow()
    async with api.db.transaction() as session:
        policy = SlaPolicy(tenant_id=api.admin.tenant_id, name="Standard", first_response_minutes=60)
        session.add(policy)
        await session.flush()

        def clock(conversation_id: int, kind: str, due_in: timedelta, **extra: Any) -> SlaClock:
            return SlaClock(
                tenant_id=api.admin.tenant_id,
                conversation_id=conversation_id,
                policy_id=policy.id,
                kind=kind,
                target_minutes=60,
                started_at=now,
                warn_at=now + due_in * 0.8,
                due_at=now + due_in,
                **extra,
            )

        session.add_all(
            [
                clock(later, "first_response", timedelta(hours=2)),
                clock(sooner, "resolution", timedelta(minutes=30)),
                # Paused and stopped clocks do not count: the conversation waits on the customer.
                clock(later, "resolution", timedelta(minutes=5), paused_at=now),
                clock(untimed, "first_response", timedelta(minutes=1), stopped_at=now),
            ]
        )

    status, page = await api.call("GET", "/conversations", params={"status": "open", "sort": "sla_due"})
    assert status == 200, page
    assert [c["id"] for c in page["data"]] == [sooner, later, untimed]
    # Page by page, the cursor keeps the same order.
    seen: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"status": "open", "sort": "sla_due", "limit": 1}
        if cursor:
            params["cursor"] = cursor
        status, page = await api.call("GET", "/conversations", params=params)
        assert status == 200, page
        seen += [c["id"] for c in page["data"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert seen == [sooner, later, untimed]
