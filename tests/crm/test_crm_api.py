"""The CRM through the API, as a sales rep, a support lead and an admin would use it, on both databases.

Messy data (national and international numbers, mixed-case and plus-addressed emails, duplicates),
merges checked in the database afterwards, and another tenant's ids never reaching its data.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from crm_core.models import (
    ChannelIdentity,
    Company,
    Consent,
    Contact,
    ContactMerge,
    ContactTag,
    Deal,
    LifecycleChange,
    ScoreEvent,
)
from gateway.keys import NOTIFIER
from inbox.models import Conversation, ConversationStatus, Message
from parley.db import Database, utcnow
from parley.models import OutboxEvent, Role
from tests.conftest import eventually, make_tenant
from tests.gateway.test_api import Api, add_conversation


async def contact(api: Api, who: Any = None, **body: Any) -> dict[str, Any]:
    status, answer = await api.call("POST", "/contacts", who=who, body=body)
    assert status == 201, answer
    return dict(answer)


async def crm_events(api: Api) -> None:
    """Let the app's dispatcher run the CRM's handlers over everything written so far; all must succeed."""
    api.client.app[NOTIFIER].notify()

    async def all_handled() -> bool:
        return await api.count(OutboxEvent, OutboxEvent.completed_at.is_(None)) == 0

    await eventually(all_handled)
    failures = await rows(
        api.db, select(OutboxEvent.topic, OutboxEvent.last_error).where(OutboxEvent.last_error.is_not(None))
    )
    assert failures == []


async def one(db: Database, stmt: Any) -> Any:
    async with db.sessionmaker() as session:
        return (await session.execute(stmt)).scalar_one()


async def rows(db: Database, stmt: Any) -> list[Any]:
    async with db.sessionmaker() as session:
        return list((await session.execute(stmt)).all())


# --- contacts: messy data, attributes, filters ---------------------------------------------------


async def test_national_numbers_read_in_the_tenants_region_resolve_to_one_contact(api: Api) -> None:
    status, settings = await api.call("PATCH", "/crm/settings", body={"default_region": "gb"})
    assert (status, settings["default_region"]) == (200, "GB")
    ann = await contact(api, name="Ann", phone="020 7946 0018", email="Ann.Lee+News@Example.COM")
    assert (ann["phone"], ann["email"]) == ("+442079460018", "ann.lee+news@example.com")

    # The same number in another form is the same identity: a conflict, not a second contact.
    for phone in ["+44 20 7946 0018", "0044 (20) 7946-0018", "02079460018"]:
        status, answer = await api.call("POST", "/contacts", body={"name": "Again", "phone": phone})
        assert (status, answer["error"]["code"]) == (409, "conflict"), phone
    us = await contact(api, name="Bob", phone="(415) 555-0123", region="US")
    assert us["phone"] == "+14155550123"
    status, answer = await api.call("POST", "/contacts", body={"phone": "555-0123"})
    assert (status, answer["error"]["details"][0]["field"]) == (422, "body.phone")
    assert await api.count(Contact) == 2

    async def search(q: str) -> list[int]:
        status, page = await api.call("GET", "/contacts", params={"q": q})
        assert status == 200, page
        return [c["id"] for c in page["data"]]

    assert await search("(020) 7946-0018") == [ann["id"]]
    assert await search("ANN.LEE+NEWS@example.com") == [ann["id"]]
    assert await search("+1 415 555 0123") == [us["id"]]

    # A WhatsApp id added to Ann: one contact across channels.
    path = f"/contacts/{ann['id']}/identities"
    status, identity = await api.call(
        "POST", path, body={"kind": "whatsapp_user_id", "address": "US.13491208655302741918"}
    )
    assert status == 201, identity
    status, answer = await api.call(
        "POST", path, body={"kind": "phone", "address": "(415) 555-0123", "region": "US"}
    )
    assert (status, answer["error"]["code"]) == (409, "conflict")  # Bob's: merge instead
    status, detail = await api.call("GET", f"/contacts/{ann['id']}")
    assert {(i["kind"], i["address"]) for i in detail["identities"]} == {
        ("phone", "+442079460018"),
        ("email", "ann.lee+news@example.com"),
        ("whatsapp_user_id", "US.13491208655302741918"),
    }


async def test_custom_attributes_are_checked_against_their_definitions(api: Api) -> None:
    for definition in [
        {"key": "seats", "label": "Seats", "type": "number"},
        {"key": "plan", "label": "Plan", "type": "enum", "options": ["free", "pro"]},
        {"key": "renewal", "label": "Renewal", "type": "date"},
        {"key": "vip", "label": "VIP", "type": "boolean"},
    ]:
        status, answer = await api.call("POST", "/crm/attributes", body=definition)
        assert status == 201, answer
    status, answer = await api.call(
        "POST", "/crm/attributes", body={"key": "plan", "label": "x", "type": "string"}
    )
    assert status == 409
    status, answer = await api.call(
        "POST", "/crm/attributes", body={"key": "tier", "label": "x", "type": "enum"}
    )
    assert status == 422

    bad = {
        "seats": "three",
        "plan": "gold",
        "renewal": "next week",
        "vip": "yes",
        "note": "free text is fine",
    }
    status, answer = await api.call("POST", "/contacts", body={"name": "Ann", "attributes": bad})
    assert status == 422
    assert {d["field"] for d in answer["error"]["details"]} == {
        "body.attributes.seats",
        "body.attributes.plan",
        "body.attributes.renewal",
        "body.attributes.vip",
    }
    assert await api.count(Contact) == 0

    good = {"seats": 3, "plan": "pro", "renewal": "2027-01-31", "vip": True, "note": "met at the fair"}
    ann = await contact(api, name="Ann", attributes=good)
    assert ann["attributes"] == good
    bob = await contact(api, name="Bob", attributes={"seats": 12.5, "plan": "free"})
    status, answer = await api.call("PATCH", f"/contacts/{bob['id']}", body={"attributes": {"seats": True}})
    assert (status, answer["error"]["details"][0]["field"]) == (422, "body.attributes.seats")

    async def where(attribute: str) -> list[int]:
        status, page = await api.call("GET", "/contacts", params={"attribute": attribute})
        assert status == 200, page
        return [c["id"] for c in page["data"]]

    assert await where("plan:pro") == [ann["id"]]
    assert await where("seats:12.5") == [bob["id"]]
    assert await where("vip:true") == [ann["id"]]
    status, answer = await api.call("GET", "/contacts", params={"attribute": "seats:many"})
    assert (status, answer["error"]["details"][0]["field"]) == (422, "query.attribute")


async def test_contacts_filter_by_tag_stage_company_and_page_in_any_sort_order(api: Api) -> None:
    status, acme = await api.call("POST", "/companies", body={"name": "Acme", "domain": "ACME.io"})
    assert (status, acme["domain"]) == (201, "acme.io")
    names = ["delia", "Ann", "carl", "Bea", None, "ann"]
    made = []
    for i, name in enumerate(names):
        body: dict[str, Any] = {"phone": f"+1415555{i:04d}", "tags": ["VIP"] if i % 2 else ["trial", "beta"]}
        if name:
            body["name"] = name
        if i < 3:
            body["company_id"] = acme["id"]
        made.append(await contact(api, **body))
    assert made[1]["tags"] == ["vip"] and made[0]["tags"] == ["beta", "trial"]
    status, _ = await api.call(
        "PATCH", f"/contacts/{made[2]['id']}", body={"lifecycle_stage": "sql", "tags": []}
    )
    assert status == 200

    async def ids(**params: Any) -> list[int]:
        found: list[int] = []
        cursor = None
        while True:
            query = {**params, "limit": 2} | ({"cursor": cursor} if cursor else {})
            status, page = await api.call("GET", "/contacts", params=query)
            assert status == 200, page
            found += [c["id"] for c in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return found

    by_id = [c["id"] for c in made]
    assert await ids(tag="vip") == [by_id[5], by_id[3], by_id[1]]
    assert await ids(lifecycle_stage="sql") == [by_id[2]]
    assert await ids(company_id=acme["id"], sort="id") == by_id[:3]
    # Names sort case-insensitively, ties by id, no name first: every contact exactly once.
    assert await ids(sort="name") == [by_id[4], by_id[1], by_id[5], by_id[3], by_id[2], by_id[0]]
    assert await ids(sort="-name") == [by_id[0], by_id[2], by_id[3], by_id[5], by_id[1], by_id[4]]
    assert sorted(await ids(sort="created_at")) == sorted(by_id)
    status, answer = await api.call("GET", "/contacts", params={"sort": "name", "cursor": "bm9wZQ"})
    assert (status, answer["error"]["code"]) == (400, "invalid_cursor")
    status, history = await api.call("GET", f"/contacts/{made[2]['id']}/lifecycle")
    assert history["stage"] == "sql"
    assert [(h["from_stage"], h["to_stage"], h["user_id"]) for h in history["history"]][-1] == (
        "lead",
        "sql",
        api.admin.user_id,
    )


async def test_business_email_domains_make_companies_free_mail_does_not(api: Api) -> None:
    ann = await contact(api, name="Ann", email="Ann@Acme-Robotics.com")
    bob = await contact(api, name="Bob", email="bob@gmail.com")
    carla = await contact(api, name="Carla", email="carla@acme-robotics.com")
    assert ann["company_id"] is not None and ann["company_id"] == carla["company_id"]
    assert bob["company_id"] is None
    status, company = await api.call("GET", f"/companies/{ann['company_id']}")
    assert (company["name"], company["domain"]) == ("Acme-robotics", "acme-robotics.com")
    # A contact first known by phone gets a company when an email is added.
    dan = await contact(api, name="Dan", phone="+14155550199")
    status, _ = await api.call("PATCH", f"/contacts/{dan['id']}", body={"email": "dan@globex.example"})
    assert status == 200
    await crm_events(api)
    status, dan = await api.call("GET", f"/contacts/{dan['id']}")
    status, globex = await api.call("GET", "/companies", params={"domain": "globex.example"})
    assert dan["company_id"] == globex["data"][0]["id"]
    assert await api.count(Company) == 2


# --- duplicates and merges -----------------------------------------------------------------------


async def test_likely_duplicates_are_suggested_with_reasons(api: Api) -> None:
    a = await contact(api, name="Ann Lee", email="ann.lee@gmail.com")
    b = await contact(api, name="Annie", email="AnnLee+promo@googlemail.com")
    # WhatsApp still reports Mexican mobiles with the old 1 (+52 1 55…), which is no valid number
    # any more: the pipeline stores it as the channel gave it.
    async with api.db.transaction() as session:
        marco = Contact(tenant_id=api.admin.tenant_id, name="Marco", phone="+5215512345678", attributes={})
        session.add(marco)
        await session.flush()
        session.add(
            ChannelIdentity(
                tenant_id=api.admin.tenant_id, contact_id=marco.id, kind="phone", address="+5215512345678"
            )
        )
    c = {"id": marco.id}
    d = await contact(api, name="Marco R", phone="+52 55 1234 5678")
    e = await contact(api, name="Sam Park", email="sam@initech.example")
    f = await contact(api, name="sam park", phone="+14155550142")
    status, _ = await api.call("PATCH", f"/contacts/{f['id']}", body={"company_id": e["company_id"]})
    assert status == 200
    g = await contact(api, name="Unrelated", email="ann@acme.example")

    status, found = await api.call("GET", "/contacts/duplicates")
    assert status == 200
    pairs = {(p["contact_id"], p["other_id"]): p["reasons"] for p in found["data"]}
    assert pairs == {
        (a["id"], b["id"]): ["same email (annlee@gmail.com)"],
        (c["id"], d["id"]): ["same phone (+525512345678)"],
        (e["id"], f["id"]): ["same name at the same company"],
    }
    status, mine = await api.call("GET", f"/contacts/{b['id']}/duplicates")
    assert [(p["other_id"], p["reasons"]) for p in mine["data"]] == [
        (a["id"], ["same email (annlee@gmail.com)"])
    ]
    status, mine = await api.call("GET", f"/contacts/{g['id']}/duplicates")
    assert mine["data"] == []


async def _merge_fixture(api: Api) -> dict[str, Any]:
    """Survivor Ann (phone, SMS conversation open, SMS consent granted) and duplicate Anne (email,
    an open and a resolved conversation in the same inbox, a deal, SMS opt-out, tags, score)."""
    inbox_id = await api.create_inbox()
    ann = await contact(api, name="Ann", phone="+14155550100", tags=["vip"])
    anne = await contact(
        api, email="ANN@acme.example", tags=["trial", "vip"], attributes={"source": "webinar"}
    )
    _, ann_open = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "", contact_id=ann["id"])
    _, anne_open = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "", contact_id=anne["id"])
    _, anne_old = await add_conversation(
        api.db, api.admin.tenant_id, inbox_id, "", contact_id=anne["id"], status=ConversationStatus.RESOLVED
    )
    async with api.db.transaction() as session:
        session.add(
            Message(
                tenant_id=api.admin.tenant_id,
                inbox_id=inbox_id,
                conversation_id=anne_open,
                direction="inbound",
                sender_type="contact",
                sender_id=anne["id"],
                body="Any discount?",
                status="received",
            )
        )
        earlier = utcnow().replace(year=2025)
        session.add(
            Consent(
                tenant_id=api.admin.tenant_id,
                contact_id=ann["id"],
                channel="sms",
                purpose="all",
                granted=True,
                source="form",
                changed_at=utcnow(),
            )
        )
        session.add(
            Consent(
                tenant_id=api.admin.tenant_id,
                contact_id=anne["id"],
                channel="sms",
                purpose="all",
                granted=False,
                source="keyword:STOP",
                changed_at=earlier,
            )
        )
        session.add(
            Consent(
                tenant_id=api.admin.tenant_id,
                contact_id=anne["id"],
                channel="email",
                purpose="marketing",
                granted=True,
                source="form",
                changed_at=earlier,
            )
        )
    status, _ = await api.call("POST", "/pipelines", body={"name": "Sales"})
    assert status == 201
    status, deal = await api.call(
        "POST",
        "/deals",
        body={"title": "Acme", "currency": "usd", "amount_minor": 100000, "contact_id": anne["id"]},
    )
    assert status == 201, deal
    await crm_events(api)  # Anne: company from her email, lifecycle history
    return {
        "ann": ann,
        "anne": anne,
        "ann_open": ann_open,
        "anne_open": anne_open,
        "anne_old": anne_old,
        "deal": deal,
        "inbox_id": inbox_id,
    }


async def _state(db: Database, contact_ids: list[int]) -> dict[str, Any]:
    """Everything a merge touches, read from the database."""
    return {
        "contacts": await rows(
            db,
            select(Contact.id, Contact.name, Contact.email, Contact.lifecycle_stage)
            .where(Contact.id.in_(contact_ids))
            .order_by(Contact.id),
        ),
        "identities": await rows(
            db,
            select(ChannelIdentity.contact_id, ChannelIdentity.kind, ChannelIdentity.address).order_by(
                ChannelIdentity.id
            ),
        ),
        "conversations": await rows(
            db,
            select(Conversation.id, Conversation.contact_id, Conversation.status).order_by(Conversation.id),
        ),
        "messages": await rows(db, select(Message.id, Message.sender_id).order_by(Message.id)),
        "consents": await rows(
            db,
            select(Consent.contact_id, Consent.channel, Consent.purpose, Consent.granted).order_by(
                Consent.id
            ),
        ),
        "deals": await rows(db, select(Deal.id, Deal.contact_id)),
        "tags": await rows(
            db, select(ContactTag.contact_id, ContactTag.tag).order_by(ContactTag.contact_id, ContactTag.tag)
        ),
        "history": await rows(
            db, select(LifecycleChange.contact_id, LifecycleChange.to_stage).order_by(LifecycleChange.id)
        ),
        "merges": await rows(db, select(ContactMerge.id)),
        "events": await rows(db, select(func.count()).select_from(OutboxEvent)),
    }


async def test_merge_preview_changes_nothing_and_merging_moves_everything(api: Api) -> None:
    f = await _merge_fixture(api)
    ann, anne = f["ann"], f["anne"]
    before = await _state(api.db, [ann["id"], anne["id"]])
    body = {"merge_id": anne["id"], "reason": "same person, says support"}

    status, preview = await api.call("POST", f"/contacts/{ann['id']}/merge/preview", body=body)
    assert status == 200, preview
    assert preview["merge_id"] is None
    assert await _state(api.db, [ann["id"], anne["id"]]) == before

    status, report = await api.call("POST", f"/contacts/{ann['id']}/merge", body=body)
    assert status == 200, report
    assert {k: v for k, v in report.items() if k != "merge_id"} == {
        k: v for k, v in preview.items() if k != "merge_id"
    }
    assert report["conversations_resolved"] == [f["anne_open"]]
    assert sorted(report["conversations_moved"]) == sorted([f["anne_open"], f["anne_old"]])
    assert report["deals_moved"] == [f["deal"]["id"]]
    assert report["tags_added"] == ["trial"]
    assert report["lifecycle_stage"] == "opportunity"  # Anne's open deal made her one

    db = api.db
    assert await api.count(Contact, Contact.id == anne["id"]) == 0
    survivor = await one(db, select(Contact).where(Contact.id == ann["id"]))
    assert (survivor.name, survivor.email, survivor.attributes) == (
        "Ann",
        "ann@acme.example",
        {"source": "webinar"},
    )
    assert survivor.company_id is not None  # Anne's, from her business email
    assert set(
        await rows(
            db,
            select(ChannelIdentity.kind, ChannelIdentity.address).where(
                ChannelIdentity.contact_id == ann["id"]
            ),
        )
    ) == {
        ("phone", "+14155550100"),
        ("email", "ann@acme.example"),
    }
    conversations = dict(
        await rows(
            db, select(Conversation.id, Conversation.status).where(Conversation.contact_id == ann["id"])
        )
    )
    assert conversations == {f["ann_open"]: "open", f["anne_open"]: "resolved", f["anne_old"]: "resolved"}
    assert await rows(db, select(Message.sender_id)) == [(ann["id"],)]
    assert await one(db, select(Deal.contact_id).where(Deal.id == f["deal"]["id"])) == ann["id"]
    # A withdrawal wins over a later grant; a decision only Anne made moves over.
    assert set(
        await rows(
            db,
            select(Consent.channel, Consent.purpose, Consent.granted, Consent.source).where(
                Consent.contact_id == ann["id"]
            ),
        )
    ) == {
        ("sms", "all", False, "keyword:STOP"),
        ("email", "marketing", True, "form"),
    }
    assert await api.count(Consent) == 2
    assert await rows(
        db, select(ContactTag.tag).where(ContactTag.contact_id == ann["id"]).order_by(ContactTag.tag)
    ) == [("trial",), ("vip",)]
    assert await api.count(LifecycleChange, LifecycleChange.contact_id == anne["id"]) == 0
    audit = await one(db, select(ContactMerge))
    assert (audit.survivor_id, audit.merged_id, audit.user_id, audit.reason) == (
        ann["id"],
        anne["id"],
        api.admin.user_id,
        "same person, says support",
    )
    assert audit.merged_snapshot["email"] == "ann@acme.example"
    assert await api.events("contact.merged") == [
        {"survivor_id": ann["id"], "merged_id": anne["id"], "merge_id": audit.id}
    ]
    moved = {"contact_id": {"old": anne["id"], "new": ann["id"]}}
    updates = {
        e["conversation_id"]: e["changes"]
        for e in await api.events("conversation.updated")
        if e.get("reason") != "priority_scored"  # Ann is a VIP: priority scoring raises hers
    }
    assert updates == {
        f["anne_open"]: moved | {"status": {"old": "open", "new": "resolved"}},
        f["anne_old"]: moved,
    }
    status, merges = await api.call("GET", f"/contacts/{ann['id']}/merges")
    assert [m["merged_id"] for m in merges["data"]] == [anne["id"]]

    # The merged contact is gone: merging it again is a 404, and nothing changes.
    status, answer = await api.call("POST", f"/contacts/{ann['id']}/merge", body=body)
    assert status == 404
    status, answer = await api.call("POST", f"/contacts/{ann['id']}/merge", body={"merge_id": ann["id"]})
    assert (status, answer["error"]["details"][0]["field"]) == (422, "body.merge_id")


# --- lifecycle and scoring -----------------------------------------------------------------------


async def test_scores_explain_themselves_decay_and_promote_leads_to_mql(api: Api) -> None:
    status, _ = await api.call(
        "PATCH", "/crm/settings", body={"mql_threshold": 60, "score_half_life_days": 10}
    )
    for rule in [
        {
            "name": "Asked about pricing",
            "trigger": "message.received",
            "condition": {"keywords": ["pricing", "quote"]},
            "points": 30,
        },
        {"name": "Gave an email", "trigger": "email.captured", "points": 15},
        {"name": "Deal opened", "trigger": "deal.opened", "points": 20},
        {
            "name": "Pro plan",
            "trigger": "attribute",
            "condition": {"attribute": "plan", "op": "eq", "value": "pro"},
            "points": 10,
        },
    ]:
        status, answer = await api.call("POST", "/crm/scoring-rules", body=rule)
        assert status == 201, answer
    status, answer = await api.call(
        "POST", "/crm/scoring-rules", body={"name": "x", "trigger": "attribute", "points": 1}
    )
    assert status == 422
    status, answer = await api.call(
        "POST", "/crm/scoring-rules", body={"name": "x", "trigger": "tweeted", "points": 1}
    )
    assert status == 422

    inbox_id = await api.create_inbox()
    lead_id, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")
    async with api.db.transaction() as session:
        for n, text in enumerate(["Hi", "What is your PRICING for 10 seats?", "pricing again"]):
            session.add(
                Message(
                    tenant_id=api.admin.tenant_id,
                    inbox_id=inbox_id,
                    conversation_id=conversation_id,
                    direction="inbound",
                    sender_type="contact",
                    sender_id=lead_id,
                    body=text,
                    status="received",
                    provider_message_id=f"SM{n}",
                )
            )
    async with api.db.transaction() as session:
        ids = (await session.execute(select(Message.id).order_by(Message.id))).scalars().all()
        from parley.outbox import emit

        for message_id in ids:
            await emit(
                session,
                api.admin.tenant_id,
                (
                    "message.received",
                    {
                        "message_id": message_id,
                        "conversation_id": conversation_id,
                        "contact_id": lead_id,
                        "inbox_id": inbox_id,
                    },
                ),
            )
    await crm_events(api)
    status, score = await api.call("GET", f"/contacts/{lead_id}/score")
    assert score["score"] == 60 and score["mql_threshold"] == 60
    assert [(c["rule_name"], c["source"]) for c in score["contributions"]] == [
        ("Asked about pricing", f"message:{ids[1]}"),
        ("Asked about pricing", f"message:{ids[2]}"),
    ]
    status, history = await api.call("GET", f"/contacts/{lead_id}/lifecycle")
    assert history["stage"] == "mql"
    assert history["history"][-1]["reason"] == "score 60 reached the MQL threshold 60"
    changed = await api.events("contact.lifecycle_changed")
    assert changed == [
        {
            "contact_id": lead_id,
            "from": "lead",
            "to": "mql",
            "reason": "score 60 reached the MQL threshold 60",
        }
    ]

    # Delivered again (the outbox is at-least-once): nothing scores twice.
    async with api.db.transaction() as session:
        await emit(
            session,
            api.admin.tenant_id,
            (
                "message.received",
                {
                    "message_id": ids[1],
                    "conversation_id": conversation_id,
                    "contact_id": lead_id,
                    "inbox_id": inbox_id,
                },
            ),
        )
    await crm_events(api)
    assert await api.count(ScoreEvent) == 2

    # Attribute rules hold while true; events halve every half-life.
    status, _ = await api.call("PATCH", f"/contacts/{lead_id}", body={"attributes": {"plan": "pro"}})
    status, score = await api.call("GET", f"/contacts/{lead_id}/score")
    assert score["score"] == 70
    async with api.db.transaction() as session:
        events = (await session.execute(select(ScoreEvent))).scalars().all()
        for event in events:
            event.occurred_at = event.occurred_at.replace(year=event.occurred_at.year - 1)
    status, score = await api.call("GET", f"/contacts/{lead_id}/score")
    assert 10 <= score["score"] < 10.01
    assert {c["rule_name"]: c["current_points"] for c in score["contributions"]}["Pro plan"] == 10

    # An email and a deal score too, and the contact becomes an opportunity.
    status, _ = await api.call("PATCH", f"/contacts/{lead_id}", body={"email": "lead@initech.example"})
    status, _ = await api.call("POST", "/pipelines", body={"name": "Sales"})
    status, deal = await api.call(
        "POST", f"/conversations/{conversation_id}/deals", body={"currency": "EUR", "amount_minor": 5000}
    )
    assert status == 201, deal
    await crm_events(api)
    status, score = await api.call("GET", f"/contacts/{lead_id}/score")
    assert {c["rule_name"] for c in score["contributions"]} >= {"Gave an email", "Deal opened"}
    status, history = await api.call("GET", f"/contacts/{lead_id}/lifecycle")
    assert history["stage"] == "opportunity"


async def test_contacts_from_inbound_messages_get_history_keys_and_companies(api: Api) -> None:
    """What the pipeline creates (raw SQL on PostgreSQL) is completed by the `contact.created` handler."""
    async with api.db.transaction() as session:
        visitor = Contact(tenant_id=api.admin.tenant_id, attributes={})
        emailer = Contact(tenant_id=api.admin.tenant_id, email="Boss@Initech.example", attributes={})
        session.add_all([visitor, emailer])
        await session.flush()
        session.add(
            ChannelIdentity(
                tenant_id=api.admin.tenant_id, contact_id=visitor.id, kind="web_visitor", address="v-123"
            )
        )
        session.add(
            ChannelIdentity(
                tenant_id=api.admin.tenant_id,
                contact_id=emailer.id,
                kind="email",
                address="boss@initech.example",
            )
        )
        from parley.outbox import emit

        await emit(
            session,
            api.admin.tenant_id,
            ("contact.created", {"contact_id": visitor.id}),
            ("contact.created", {"contact_id": emailer.id}),
        )
    await crm_events(api)
    await crm_events(api)
    status, v = await api.call("GET", f"/contacts/{visitor.id}/lifecycle")
    assert (status, v["stage"]) == (200, "visitor")
    status, e = await api.call("GET", f"/contacts/{emailer.id}")
    assert e["company_id"] is not None and e["lifecycle_stage"] == "lead"
    assert (
        await one(api.db, select(ChannelIdentity.match_key).where(ChannelIdentity.contact_id == emailer.id))
        == "email:boss@initech.example"
    )
    assert await api.count(LifecycleChange, LifecycleChange.contact_id == emailer.id) == 1


# --- deals ---------------------------------------------------------------------------------------


async def test_deals_on_a_board_move_close_and_forecast(api: Api) -> None:
    rep = await make_tenant(api.db, "acme", role=Role.AGENT, email="rep@acme.example.com")
    status, pipeline = await api.call("POST", "/pipelines", body={"name": "Sales"})
    stages = {s["name"]: s for s in pipeline["stages"]}
    assert [(s["name"], s["probability"], s["outcome"]) for s in pipeline["stages"]][:2] == [
        ("New", 10, "open"),
        ("Qualified", 25, "open"),
    ]
    buyer = await contact(api, name="Buyer", email="buyer@initech.example")

    async def deal(title: str, **body: Any) -> dict[str, Any]:
        status, answer = await api.call(
            "POST", "/deals", who=body.pop("who", rep), body={"title": title, "currency": "USD", **body}
        )
        assert status == 201, answer
        return dict(answer)

    a = await deal("A", amount_minor=10_000, expected_close="2027-01-15", contact_id=buyer["id"])
    b = await deal("B", amount_minor=20_001, expected_close="2027-01-20", stage_id=stages["Proposal"]["id"])
    c = await deal("C", amount_minor=30_000, expected_close="2027-02-01", currency="eur", who=api.admin)
    d = await deal("D", amount_minor=5_000)
    assert (a["owner_id"], a["company_id"], a["position"]) == (rep.user_id, buyer["company_id"], 0)
    assert (c["currency"], c["owner_id"]) == ("EUR", api.admin.user_id)

    async def column(stage: str) -> list[str]:
        status, board = await api.call("GET", f"/pipelines/{pipeline['id']}/board")
        assert status == 200, board
        return next(
            [d["title"] for d in col["deals"]] for col in board["columns"] if col["stage"]["name"] == stage
        )

    assert await column("New") == ["A", "C", "D"]
    status, moved = await api.call(
        "POST", f"/deals/{d['id']}/move", body={"stage_id": stages["New"]["id"], "position": 0}
    )
    assert status == 200 and moved["position"] == 0
    assert await column("New") == ["D", "A", "C"]
    status, moved = await api.call(
        "POST", f"/deals/{a['id']}/move", body={"stage_id": stages["Proposal"]["id"], "position": 0}
    )
    assert await column("New") == ["D", "C"] and await column("Proposal") == ["A", "B"]
    status, won = await api.call("POST", f"/deals/{a['id']}/move", body={"stage_id": stages["Won"]["id"]})
    assert won["closed_at"] is not None
    status, buyer_now = await api.call("GET", f"/contacts/{buyer['id']}")
    assert buyer_now["lifecycle_stage"] == "customer"
    status, back = await api.call(
        "POST", f"/deals/{a['id']}/move", body={"stage_id": stages["Negotiation"]["id"]}
    )
    assert back["closed_at"] is None
    assert [e["to_stage_id"] for e in await api.events("deal.stage_changed")] == [
        stages["Proposal"]["id"],
        stages["Won"]["id"],
        stages["Negotiation"]["id"],
    ]

    # Weighted: A 10000*75% + B 20001*50% (=10000.5, half-even per group) for the rep in USD.
    status, by_owner = await api.call("GET", "/deals/forecast", params={"group_by": "owner"})
    assert status == 200, by_owner
    assert [
        (r["group"], r["currency"], r["deals"], r["amount_minor"], r["weighted_minor"])
        for r in by_owner["data"]
    ] == [
        (str(api.admin.user_id), "EUR", 1, 30_000, 3_000),
        (str(rep.user_id), "USD", 3, 35_001, 7_500 + 10_000 + 500),
    ]
    status, by_month = await api.call("GET", "/deals/forecast", params={"group_by": "month"})
    assert [(r["group"], r["currency"], r["weighted_minor"]) for r in by_month["data"]] == [
        ("2027-01", "USD", 17_500),
        ("2027-02", "EUR", 3_000),
        (None, "USD", 500),
    ]
    status, january = await api.call(
        "GET", "/deals/forecast", params={"group_by": "month", "close_to": "2027-01-31"}
    )
    assert [r["group"] for r in january["data"]] == ["2027-01"]

    async def titles(**params: Any) -> list[str]:
        status, page = await api.call("GET", "/deals", params=params)
        assert status == 200, page
        return [d["title"] for d in page["data"]]

    assert await titles(owner_id=str(rep.user_id), sort="-amount_minor") == ["B", "A", "D"]
    assert await titles(sort="expected_close") == ["A", "B", "C", "D"]
    assert await titles(close_from="2027-01-16", close_to="2027-12-31") == ["C", "B"]
    assert await titles(contact_id=str(buyer["id"])) == ["A"]
    assert await titles(stage_id=str(stages["New"]["id"]), sort="position") == ["D", "C"]

    status, answer = await api.call("POST", "/deals", body={"title": "X", "currency": "ABC"})
    assert (status, answer["error"]["details"][0]["field"]) == (422, "body.currency")
    status, answer = await api.call("PATCH", f"/stages/{stages['Proposal']['id']}", body={"probability": 101})
    assert status == 422
    status, answer = await api.call("DELETE", f"/stages/{stages['New']['id']}")
    assert status == 409
    status, other = await api.call(
        "POST", "/pipelines", body={"name": "Partners", "stages": [{"name": "Talking", "probability": 5}]}
    )
    status, answer = await api.call(
        "POST", f"/deals/{b['id']}/move", body={"stage_id": other["stages"][0]["id"]}
    )
    assert (status, answer["error"]["details"][0]["field"]) == (422, "body.stage_id")


async def test_a_deal_from_a_conversation_takes_its_contact_company_and_assignee(api: Api) -> None:
    rep = await make_tenant(api.db, "acme", role=Role.AGENT, email="rep@acme.example.com")
    await api.call("POST", "/pipelines", body={"name": "Sales"})
    inbox_id = await api.create_inbox()
    buyer = await contact(api, name="Buyer", email="buyer@initech.example")
    _, conversation_id = await add_conversation(
        api.db, api.admin.tenant_id, inbox_id, "", contact_id=buyer["id"], assignee_id=rep.user_id
    )
    status, deal = await api.call(
        "POST",
        f"/conversations/{conversation_id}/deals",
        who=rep,
        body={"currency": "GBP", "amount_minor": 990, "source": "bot"},
    )
    assert status == 201, deal
    assert (
        deal["title"],
        deal["contact_id"],
        deal["company_id"],
        deal["owner_id"],
        deal["conversation_ids"],
        deal["source"],
    ) == (
        "Buyer",
        buyer["id"],
        buyer["company_id"],
        rep.user_id,
        [conversation_id],
        "bot",
    )
    assert await api.events("deal.opened") == [
        {"deal_id": deal["id"], "contact_id": buyer["id"], "source": "bot"}
    ]


# --- tenancy and roles ---------------------------------------------------------------------------


async def test_another_tenants_crm_is_invisible_and_untouchable(api: Api) -> None:
    other = await make_tenant(api.db, "globex")
    theirs = await contact(api, who=other, name="Theirs", email="t@globex.example", phone="+14155550111")
    status, their_pipeline = await api.call("POST", "/pipelines", who=other, body={"name": "Theirs"})
    status, their_deal = await api.call(
        "POST",
        "/deals",
        who=other,
        body={"title": "T", "currency": "USD", "amount_minor": 7, "contact_id": theirs["id"]},
    )
    assert status == 201
    status, their_rule = await api.call(
        "POST", "/crm/scoring-rules", who=other, body={"name": "r", "trigger": "email.captured", "points": 1}
    )
    status, their_attr = await api.call(
        "POST", "/crm/attributes", who=other, body={"key": "k", "label": "K", "type": "string"}
    )

    mine = await contact(
        api, name="Mine", email="t@globex.example", phone="+14155550111"
    )  # same addresses: no conflict
    status, my_pipeline = await api.call("POST", "/pipelines", body={"name": "Mine"})
    status, my_deal = await api.call(
        "POST", "/deals", body={"title": "M", "currency": "USD", "amount_minor": 5}
    )

    for method, path, body in [
        ("GET", f"/contacts/{theirs['id']}/duplicates", None),
        ("GET", f"/contacts/{theirs['id']}/score", None),
        ("GET", f"/contacts/{theirs['id']}/lifecycle", None),
        ("GET", f"/contacts/{theirs['id']}/merges", None),
        ("POST", f"/contacts/{theirs['id']}/identities", {"kind": "telegram", "address": "42"}),
        ("POST", f"/contacts/{mine['id']}/merge", {"merge_id": theirs["id"]}),
        ("POST", f"/contacts/{mine['id']}/merge/preview", {"merge_id": theirs["id"]}),
        ("POST", f"/contacts/{theirs['id']}/merge", {"merge_id": mine["id"]}),
        ("GET", f"/companies/{theirs['company_id']}", None),
        ("PATCH", f"/companies/{theirs['company_id']}", {"name": "mine"}),
        ("DELETE", f"/companies/{theirs['company_id']}", None),
        ("GET", f"/pipelines/{their_pipeline['id']}", None),
        ("GET", f"/pipelines/{their_pipeline['id']}/board", None),
        ("DELETE", f"/pipelines/{their_pipeline['id']}", None),
        ("PATCH", f"/stages/{their_pipeline['stages'][0]['id']}", {"name": "x"}),
        ("GET", f"/deals/{their_deal['id']}", None),
        ("PATCH", f"/deals/{their_deal['id']}", {"title": "x"}),
        ("POST", f"/deals/{their_deal['id']}/move", {"stage_id": my_pipeline["stages"][1]["id"]}),
        ("DELETE", f"/deals/{their_deal['id']}", None),
        ("PATCH", f"/crm/scoring-rules/{their_rule['id']}", {"points": 99}),
        ("DELETE", f"/crm/attributes/{their_attr['id']}", None),
    ]:
        status, answer = await api.call(method, path, body=body)
        assert (status, answer["error"]["code"]) == (404, "not_found"), (method, path, answer)

    for method, path, body, field in [
        ("POST", "/deals", {"title": "x", "currency": "USD", "contact_id": theirs["id"]}, "body.contact_id"),
        (
            "POST",
            "/deals",
            {"title": "x", "currency": "USD", "company_id": theirs["company_id"]},
            "body.company_id",
        ),
        (
            "POST",
            "/deals",
            {"title": "x", "currency": "USD", "stage_id": their_pipeline["stages"][0]["id"]},
            "body.stage_id",
        ),
        ("POST", "/deals", {"title": "x", "currency": "USD", "owner_id": other.user_id}, "body.owner_id"),
        (
            "POST",
            f"/deals/{my_deal['id']}/move",
            {"stage_id": their_pipeline["stages"][0]["id"]},
            "body.stage_id",
        ),
        ("PATCH", f"/deals/{my_deal['id']}", {"contact_id": theirs["id"]}, "body.contact_id"),
        ("PATCH", f"/contacts/{mine['id']}", {"company_id": theirs["company_id"]}, "body.company_id"),
    ]:
        status, answer = await api.call(method, path, body=body)
        assert (status, answer["error"]["details"][0]["field"]) == (422, field), (method, path, answer)

    listings = {
        "/contacts/duplicates": ("data", "contact_id"),
        "/companies": ("data", "id"),
        "/pipelines": ("data", "id"),
        "/deals": ("data", "id"),
        "/crm/scoring-rules": ("data", "id"),
        "/crm/attributes": ("data", "id"),
    }
    for path in listings:
        status, page = await api.call("GET", path)
        assert status == 200, path
        assert their_deal["id"] not in [d["id"] for d in page["data"]] or path != "/deals"
    status, deals = await api.call("GET", "/deals")
    assert [d["id"] for d in deals["data"]] == [my_deal["id"]]
    status, pipelines = await api.call("GET", "/pipelines")
    assert [p["id"] for p in pipelines["data"]] == [my_pipeline["id"]]
    status, rules = await api.call("GET", "/crm/scoring-rules")
    assert rules["data"] == []
    status, forecast = await api.call("GET", "/deals/forecast", params={"group_by": "owner"})
    assert [r["amount_minor"] for r in forecast["data"]] == [5]
    status, companies = await api.call("GET", "/companies")
    assert theirs["company_id"] not in [c["id"] for c in companies["data"]]
    assert mine["company_id"] != theirs["company_id"]
    # Their rows are all still theirs.
    assert await one(api.db, select(Deal.contact_id).where(Deal.id == their_deal["id"])) == theirs["id"]
    assert await api.count(Contact, Contact.tenant_id == other.tenant_id) == 1


async def test_who_may_merge_configure_and_sell(api: Api) -> None:
    agent = await make_tenant(api.db, "acme", role=Role.AGENT)
    marketer = await make_tenant(api.db, "acme", role=Role.MARKETER)
    a = await contact(api, name="A")
    b = await contact(api, name="B")
    rule = {"name": "r", "trigger": "email.captured", "points": 5}
    for who, method, path, body in [
        (marketer, "POST", f"/contacts/{a['id']}/merge", {"merge_id": b["id"]}),
        (marketer, "POST", "/deals", {"title": "x", "currency": "USD"}),
        (agent, "POST", "/pipelines", {"name": "x"}),
        (agent, "POST", "/crm/attributes", {"key": "k", "label": "K", "type": "string"}),
        (agent, "PATCH", "/crm/settings", {"mql_threshold": 1}),
        (agent, "POST", "/crm/scoring-rules", rule),
    ]:
        status, answer = await api.call(method, path, who=who, body=body)
        assert (status, answer["error"]["code"]) == (403, "forbidden"), (who, path)
    status, _ = await api.call("POST", "/crm/scoring-rules", who=marketer, body=rule)
    assert status == 201
    status, _ = await api.call("GET", "/deals", who=marketer)
    assert status == 200
    await api.call("POST", "/pipelines", body={"name": "Sales"})
    status, _ = await api.call("POST", "/deals", who=agent, body={"title": "x", "currency": "USD"})
    assert status == 201
    status, _ = await api.call("POST", f"/contacts/{a['id']}/merge", who=agent, body={"merge_id": b["id"]})
    assert status == 200
