"""The CRM timeline through the API on both databases: every kind once, order and pages, merges,
companies, tenancy and roles.

Tickets and campaigns are being built by others: their events are emitted here by hand, with the
topic names and payloads they will use.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from crm_core.models import TimelineEntry
from inbox.models import Message
from parley.db import utcnow
from parley.models import OutboxEvent, Role
from parley.outbox import emit
from tests.conftest import make_tenant
from tests.crm.test_crm_api import contact, crm_events
from tests.gateway.test_api import Api, add_conversation

STORED_ONCE = [
    "conversation.opened",
    "conversation.resolved",
    "deal.opened",
    "deal.stage_changed",
    "deal.won",
    "ticket.created",
    "ticket.updated",
    "ticket.status_changed",
    "csat.rated",
    "campaign.sent",
    "campaign.replied",
    "consent.changed",
    "lifecycle.changed",
]


async def send(api: Api, *events: tuple[str, dict[str, Any]], tenant_id: int | None = None) -> None:
    """Emit events as their owners will, and let the dispatcher run them."""
    async with api.db.transaction() as session:
        await emit(session, tenant_id or api.admin.tenant_id, *events)
    await crm_events(api)


async def add_message(
    api: Api,
    conversation_id: int,
    inbox_id: int,
    *,
    body: str = "",
    direction: str = "inbound",
    extra: dict[str, Any] | None = None,
    at: Any = None,
    private: bool = False,
) -> int:
    async with api.db.transaction() as session:
        message = Message(
            tenant_id=api.admin.tenant_id,
            inbox_id=inbox_id,
            conversation_id=conversation_id,
            direction=direction,
            sender_type="contact" if direction == "inbound" else "user",
            body=body,
            status="received" if direction == "inbound" else "sent",
            extra=extra or {},
            private=private,
            created_at=at or utcnow(),
        )
        session.add(message)
        await session.flush()
        return message.id


async def timeline(api: Api, path: str, who: Any = None, **params: Any) -> list[dict[str, Any]]:
    """Every item of a feed, following the cursor page by page."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"before": cursor} if cursor else {})}
        status, page = await api.call("GET", path, who=who, params=query)
        assert status == 200, page
        items += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def redeliver_everything(api: Api) -> None:
    """At-least-once delivery: every event is delivered again to every handler."""
    async with api.db.transaction() as session:
        await session.execute(
            update(OutboxEvent).values(completed_at=None, handled=[], available_at=utcnow(), last_error=None)
        )
    await crm_events(api)


async def test_every_kind_lands_once_even_when_every_event_is_delivered_twice(api: Api) -> None:
    ann = await contact(api, name="Ann", phone="+14155550100")
    inbox_id = await api.create_inbox()
    _, conversation_id = await add_conversation(
        api.db, api.admin.tenant_id, inbox_id, "+14155550100", contact_id=ann["id"]
    )
    await send(
        api,
        (
            "conversation.opened",
            {"conversation_id": conversation_id, "inbox_id": inbox_id, "contact_id": ann["id"]},
        ),
    )
    await add_message(api, conversation_id, inbox_id, body="<b>Hi</b> {{ 7*7 }}")
    await add_message(api, conversation_id, inbox_id, body="Hello Ann", direction="outbound")
    await add_message(
        api, conversation_id, inbox_id, extra={"call": {"status": "completed", "duration": 133}}
    )
    await add_message(api, conversation_id, inbox_id, extra={"voicemail": {"duration": 42}})
    await add_message(
        api, conversation_id, inbox_id, body="internal note", direction="outbound", private=True
    )

    status, answer = await api.call("POST", "/pipelines", body={"name": "Sales"})
    assert status == 201, answer
    stages = {s["name"]: s["id"] for s in answer["stages"]}
    status, deal = await api.call(
        "POST",
        "/deals",
        body={"title": "Ann's order", "amount_minor": 125000, "currency": "EUR", "contact_id": ann["id"]},
    )
    assert status == 201, deal
    for stage in ("Qualified", "Won"):
        status, moved = await api.call("POST", f"/deals/{deal['id']}/move", body={"stage_id": stages[stage]})
        assert status == 200, moved
    status, resolved = await api.call(
        "PATCH", f"/conversations/{conversation_id}", body={"status": "resolved"}
    )
    assert status == 200, resolved
    await send(
        api,
        ("ticket.created", {"ticket_id": 7, "contact_id": ann["id"], "subject": "Broken <script>"}),
        (
            "ticket.updated",
            {
                "ticket_id": 7,
                "contact_id": ann["id"],
                "changes": {"priority": {"old": "low", "new": "high"}},
                "deep": {"a": {"b": {"c": 1}}},
            },
        ),
        ("ticket.status_changed", {"ticket_id": 7, "contact_id": ann["id"], "from": "open", "to": "solved"}),
        ("csat.rated", {"ticket_id": 7, "contact_id": ann["id"], "rating": 5}),
        ("campaign.sent", {"contact_id": ann["id"], "campaign_id": 3, "message_id": 99}),
        ("campaign.replied", {"contact_id": ann["id"], "campaign_id": 3, "message_id": 100}),
        ("contact.consent_changed", {"contact_id": ann["id"], "channel": "sms", "granted": False}),
    )

    first = await timeline(api, f"/contacts/{ann['id']}/timeline")
    await redeliver_everything(api)
    again = await timeline(api, f"/contacts/{ann['id']}/timeline")
    assert again == first

    kinds = Counter(item["kind"] for item in first)
    for kind in STORED_ONCE:
        assert kinds[kind] >= 1, kind
    # Exactly once per event: the contact became a lead, then an opportunity, then a customer.
    assert {k: kinds[k] for k in STORED_ONCE if k != "lifecycle.changed"} == {
        k: 1 for k in STORED_ONCE if k != "lifecycle.changed"
    }
    assert kinds["lifecycle.changed"] == len(await api.events("contact.lifecycle_changed"))
    assert (kinds["message.in"], kinds["message.out"], kinds["call"], kinds["voicemail"]) == (1, 1, 1, 1)
    assert await api.count(TimelineEntry) == sum(
        n for k, n in kinds.items() if k not in {"message.in", "message.out", "call", "voicemail"}
    )

    by_kind = {item["kind"]: item for item in first}
    assert by_kind["message.in"]["data"]["text"] == "<b>Hi</b> {{ 7*7 }}"  # plain text, as written
    assert by_kind["message.in"]["data"]["channel"] == "twilio_sms"
    assert by_kind["call"]["data"]["call"] == {"status": "completed", "duration": 133}
    assert "internal note" not in [item["data"].get("text") for item in first]
    won = by_kind["deal.won"]
    assert (won["deal_id"], won["data"]["from_stage"], won["data"]["to_stage"]) == (
        deal["id"],
        "Qualified",
        "Won",
    )
    assert by_kind["ticket.status_changed"]["ticket_id"] == 7
    # Nested values are kept two levels deep, no deeper.
    updated = by_kind["ticket.updated"]["data"]
    assert (updated["changes"], updated["deep"]) == ({"priority": {"old": "low", "new": "high"}}, {"a": {}})
    assert by_kind["campaign.replied"]["campaign_id"] == 3
    assert by_kind["consent.changed"]["data"] == {"channel": "sms", "granted": False}
    assert by_kind["conversation.resolved"]["conversation_id"] == conversation_id

    # Filters: a family, a kind, several; unknown kinds are refused.
    deal_kinds = {i["kind"] for i in await timeline(api, f"/contacts/{ann['id']}/timeline", kind="deal")}
    assert deal_kinds == {"deal.opened", "deal.stage_changed", "deal.won"}
    calls = await timeline(api, f"/contacts/{ann['id']}/timeline", kind="call,voicemail,message.out")
    assert sorted(i["kind"] for i in calls) == ["call", "message.out", "voicemail"]
    status, answer = await api.call("GET", f"/contacts/{ann['id']}/timeline", params={"kind": "deal,gossip"})
    assert (status, answer["error"]["details"][0]["field"]) == (422, "query.kind")


async def test_the_feed_is_newest_first_and_pages_without_gaps_or_repeats(api: Api) -> None:
    bob = await contact(api, name="Bob", phone="+14155550111")
    inbox_id = await api.create_inbox()
    _, conversation_id = await add_conversation(
        api.db, api.admin.tenant_id, inbox_id, "+14155550111", contact_id=bob["id"]
    )
    start = utcnow() - timedelta(days=1)
    # Messages and entries interleaved, several at the very same instant.
    for n in range(9):
        await add_message(api, conversation_id, inbox_id, body=f"m{n}", at=start + timedelta(minutes=n // 2))
    events = [
        ("ticket.created", {"ticket_id": n, "contact_id": bob["id"], "subject": f"t{n}"}) for n in range(8)
    ]
    await send(api, *events)
    async with api.db.transaction() as session:
        for n, entry_id in enumerate(
            sorted(
                e.id
                for e in (
                    await session.execute(
                        TimelineEntry.__table__.select().where(TimelineEntry.contact_id == bob["id"])
                    )
                ).all()
            )
        ):
            await session.execute(
                update(TimelineEntry)
                .where(TimelineEntry.id == entry_id)
                .values(occurred_at=start + timedelta(minutes=n // 3))
            )

    everything = await timeline(api, f"/contacts/{bob['id']}/timeline", limit=200)
    assert len(everything) == 17
    paged = await timeline(api, f"/contacts/{bob['id']}/timeline", limit=3)
    assert [i["id"] for i in paged] == [i["id"] for i in everything]
    assert len({i["id"] for i in paged}) == 17
    times = [i["occurred_at"] for i in everything]
    assert times == sorted(times, reverse=True)

    # Something new does not shift the pages already being read.
    status, page = await api.call("GET", f"/contacts/{bob['id']}/timeline", params={"limit": 5})
    await add_message(api, conversation_id, inbox_id, body="newest")
    rest = await timeline(api, f"/contacts/{bob['id']}/timeline", limit=5, **{"before": page["next_cursor"]})
    assert [i["id"] for i in page["data"] + rest] == [i["id"] for i in everything]

    for bad in ("nonsense", "eyJ4IjoxfQ"):
        status, answer = await api.call("GET", f"/contacts/{bob['id']}/timeline", params={"before": bad})
        assert (status, answer["error"]["code"]) == (400, "invalid_cursor")


async def test_after_a_merge_the_survivor_has_both_histories_and_the_merge(api: Api) -> None:
    inbox_id = await api.create_inbox()
    ann = await contact(api, name="Ann", phone="+14155550100")
    anne = await contact(api, name="Anne", email="anne@example.com")
    _, ann_conversation = await add_conversation(
        api.db, api.admin.tenant_id, inbox_id, "+14155550100", contact_id=ann["id"]
    )
    await add_message(api, ann_conversation, inbox_id, body="from ann")
    await send(
        api,
        ("ticket.created", {"ticket_id": 1, "contact_id": anne["id"], "subject": "anne's ticket"}),
        ("contact.consent_changed", {"contact_id": ann["id"], "channel": "sms", "granted": True}),
    )
    before = {i["id"] for i in await timeline(api, f"/contacts/{ann['id']}/timeline")} | {
        i["id"] for i in await timeline(api, f"/contacts/{anne['id']}/timeline")
    }

    status, report = await api.call(
        "POST", f"/contacts/{ann['id']}/merge", body={"merge_id": anne["id"], "reason": "same person"}
    )
    assert status == 200, report
    await crm_events(api)
    # An event about the merged contact that arrives late lands on the survivor.
    await send(api, ("campaign.sent", {"contact_id": anne["id"], "campaign_id": 4, "message_id": 1}))

    after = await timeline(api, f"/contacts/{ann['id']}/timeline")
    ids = {i["id"] for i in after}
    assert before <= ids
    merged = [i for i in after if i["kind"] == "contact.merged"]
    assert len(merged) == 1 and merged[0]["data"]["merged_id"] == anne["id"]
    assert merged[0]["data"]["merged_name"] == "Anne"
    assert "campaign.sent" in {i["kind"] for i in after}
    assert {i["contact_id"] for i in after} == {ann["id"]}
    status, _ = await api.call("GET", f"/contacts/{anne['id']}/timeline")
    assert status == 404


async def test_a_companys_timeline_is_its_contacts_and_its_own_deals(api: Api) -> None:
    status, acme = await api.call("POST", "/companies", body={"name": "Acme", "domain": "acmecorp.com"})
    assert status == 201, acme
    ann = await contact(api, name="Ann", email="ann@acmecorp.com")
    bob = await contact(api, name="Bob", email="bob@acmecorp.com")
    eve = await contact(api, name="Eve", email="eve@elsewhere.org")
    for person in (ann, bob):
        status, answer = await api.call("PATCH", f"/contacts/{person['id']}", body={"company_id": acme["id"]})
        assert status == 200, answer
    status, _ = await api.call("POST", "/pipelines", body={"name": "Sales"})
    status, company_deal = await api.call(
        "POST",
        "/deals",
        body={"title": "Acme licence", "amount_minor": 1, "currency": "USD", "company_id": acme["id"]},
    )
    assert status == 201, company_deal
    await send(
        api,
        ("ticket.created", {"ticket_id": 1, "contact_id": ann["id"]}),
        ("ticket.created", {"ticket_id": 2, "contact_id": bob["id"]}),
        ("ticket.created", {"ticket_id": 3, "contact_id": eve["id"]}),
    )
    feed = await timeline(api, f"/companies/{acme['id']}/timeline")
    assert sorted(i["ticket_id"] for i in feed if i["kind"] == "ticket.created") == [1, 2]
    deals = [i for i in feed if i["kind"] == "deal.opened"]
    assert [(d["deal_id"], d["contact_id"]) for d in deals] == [(company_deal["id"], None)]
    assert len({i["id"] for i in feed}) == len(feed)
    # The company's deal is not on any one contact's timeline.
    assert "deal.opened" not in {i["kind"] for i in await timeline(api, f"/contacts/{ann['id']}/timeline")}


async def test_other_tenants_get_404_and_roles_see_only_what_they_may(api: Api) -> None:
    ann = await contact(api, name="Ann", phone="+14155550100")
    status, acme = await api.call("POST", "/companies", body={"name": "Acme"})
    status, _ = await api.call("POST", "/pipelines", body={"name": "Sales"})
    status, deal = await api.call(
        "POST", "/deals", body={"title": "T", "amount_minor": 1, "currency": "USD", "contact_id": ann["id"]}
    )
    assert status == 201, deal
    await send(api, ("ticket.created", {"ticket_id": 1, "contact_id": ann["id"]}))

    other = await make_tenant(api.db, "globex")
    for path in (f"/contacts/{ann['id']}/timeline", f"/companies/{acme['id']}/timeline"):
        status, answer = await api.call("GET", path, who=other)
        assert (status, answer["error"]["code"]) == (404, "not_found"), path
    # An event naming another tenant's contact writes nothing for either tenant.
    await send(api, ("ticket.created", {"ticket_id": 2, "contact_id": ann["id"]}), tenant_id=other.tenant_id)
    assert await api.count(TimelineEntry, TimelineEntry.ticket_id == 2) == 0

    designer = await make_tenant(api.db, "acme", role=Role.BOT_DESIGNER, email="bots@acme.example.com")
    seen = {i["kind"] for i in await timeline(api, f"/contacts/{ann['id']}/timeline", who=designer)}
    assert "ticket.created" in seen and not any(k.startswith("deal.") for k in seen)
    marketer = await make_tenant(api.db, "acme", role=Role.MARKETER, email="mkt@acme.example.com")
    seen = {i["kind"] for i in await timeline(api, f"/contacts/{ann['id']}/timeline", who=marketer)}
    assert "deal.opened" in seen


async def test_the_timeline_routes_are_in_the_openapi_document(api: Api) -> None:
    async with api.client.get("/api/v1/openapi.json") as response:
        document = await response.json()
    for path in ("/api/v1/contacts/{contact_id}/timeline", "/api/v1/companies/{company_id}/timeline"):
        parameters = {p["name"] for p in document["paths"][path]["get"]["parameters"]}
        assert {"before", "kind", "limit"} <= parameters
