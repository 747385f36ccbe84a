"""Tickets through the API on both databases: from conversations, statuses, filters, tenancy, roles."""

from __future__ import annotations

from typing import Any

from crm_core.merge import merge_contacts
from crm_core.models import Company, Contact
from crm_core.ticket_models import Ticket, TicketConversation, TicketStatusChange
from inbox.models import Conversation, Message, MessageStatus
from parley.models import Role
from tests.conftest import make_tenant
from tests.gateway.test_api import Api, add_conversation


async def _conversation_with_message(api: Api, body: str, *, phone: str = "+14155550100") -> tuple[int, int]:
    inbox_id = await api.create_inbox()
    contact_id, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, phone)
    async with api.db.transaction() as session:
        company = Company(tenant_id=api.admin.tenant_id, name="Acme Ltd", domain="acme.example")
        session.add(company)
        await session.flush()
        contact = await session.get(Contact, contact_id)
        assert contact is not None
        contact.company_id = company.id
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        conversation.priority = "high"
        session.add(
            Message(
                tenant_id=api.admin.tenant_id,
                inbox_id=inbox_id,
                conversation_id=conversation_id,
                direction="inbound",
                sender_type="contact",
                sender_id=contact_id,
                body=body,
                status=MessageStatus.RECEIVED,
            )
        )
    return contact_id, conversation_id


async def test_an_agent_opens_a_ticket_from_a_conversation_with_its_contact_company_and_priority(
    api: Api,
) -> None:
    contact_id, conversation_id = await _conversation_with_message(
        api, "My parcel never arrived\nOrder 1234, sent last week"
    )
    agent = await make_tenant(api.db, "acme", role=Role.AGENT, email="agent@acme.example.com")
    status, ticket = await api.call("POST", f"/conversations/{conversation_id}/tickets", who=agent, body={})
    assert status == 201, ticket
    assert ticket["subject"] == "My parcel never arrived"
    assert ticket["contact_id"] == contact_id
    assert ticket["company_id"] is not None
    assert ticket["priority"] == "high"
    assert ticket["conversation_ids"] == [conversation_id]
    assert ticket["source"] == "agent" and ticket["status"] == "open" and ticket["number"] == 1
    assert ticket["created_by"] == agent.user_id
    created = await api.events("ticket.created")
    assert created == [
        {"ticket_id": ticket["id"], "contact_id": contact_id, "conversation_id": conversation_id}
    ]

    status, second = await api.call(
        "POST", f"/conversations/{conversation_id}/tickets", body={"subject": "Refund", "source": "bot"}
    )
    assert status == 201 and second["number"] == 2 and second["source"] == "bot"


async def test_status_moves_follow_the_workflow_and_reopening_counts(api: Api) -> None:
    _, conversation_id = await _conversation_with_message(api, "Help")
    _, ticket = await api.call("POST", f"/conversations/{conversation_id}/tickets", body={})
    path = f"/tickets/{ticket['id']}/status"
    for target in ("pending", "open", "solved"):
        status, ticket = await api.call("POST", path, body={"status": target})
        assert status == 200 and ticket["status"] == target
    assert ticket["solved_at"] is not None
    status, ticket = await api.call("POST", path, body={"status": "open"})
    assert ticket["reopen_count"] == 1 and ticket["solved_at"] is None
    await api.call("POST", path, body={"status": "solved"})
    status, ticket = await api.call("POST", path, body={"status": "closed"})
    assert status == 200 and ticket["closed_at"] is not None
    status, error = await api.call("POST", path, body={"status": "open"})
    assert status == 409 and error["error"]["code"] == "invalid_transition"
    status, _ = await api.call("POST", path, body={"status": "archived"})
    assert status == 422

    changed = await api.events("ticket.status_changed")
    assert [(e["from"], e["to"]) for e in changed] == [
        ("open", "pending"),
        ("pending", "open"),
        ("open", "solved"),
        ("solved", "open"),
        ("open", "solved"),
        ("solved", "closed"),
    ]
    assert changed[3]["reopen_count"] == 1 and changed[3]["conversation_id"] == conversation_id
    assert set(changed[0]) == {
        "ticket_id",
        "contact_id",
        "conversation_id",
        "team_id",
        "assignee_id",
        "from",
        "to",
        "reopen_count",
    }
    _, history = await api.call("GET", f"/tickets/{ticket['id']}/history")
    assert [h["to_status"] for h in history["data"]] == [
        "open",
        "pending",
        "open",
        "solved",
        "open",
        "solved",
        "closed",
    ]


async def test_updates_emit_only_what_changed_and_links_are_managed(api: Api) -> None:
    _, conversation_id = await _conversation_with_message(api, "Help")
    _, other = await add_conversation(api.db, api.admin.tenant_id, await api.create_inbox(), "+14155550111")
    _, ticket = await api.call("POST", "/tickets", body={"subject": "Printer on fire", "type": "incident"})
    assert ticket["type"] == "incident" and ticket["contact_id"] is None
    status, ticket = await api.call(
        "PATCH",
        f"/tickets/{ticket['id']}",
        body={
            "priority": "urgent",
            "subject": "Printer on fire",
            "type": "hardware_fault",
            "assignee_id": api.admin.user_id,
        },
    )
    assert status == 200 and ticket["type"] == "hardware_fault"
    updated = await api.events("ticket.updated")
    assert updated[-1]["changes"] == {
        "priority": ["none", "urgent"],
        "type": ["incident", "hardware_fault"],
        "assignee_id": [None, api.admin.user_id],
    }
    for conv in (conversation_id, other, other):
        status, ticket = await api.call(
            "POST", f"/tickets/{ticket['id']}/conversations", body={"conversation_id": conv}
        )
        assert status == 200
    assert ticket["conversation_ids"] == [conversation_id, other]
    status, _ = await api.call("DELETE", f"/tickets/{ticket['id']}/conversations/{conversation_id}")
    assert status == 204
    _, ticket = await api.call("GET", f"/tickets/{ticket['id']}")
    assert ticket["conversation_ids"] == [other]
    status, _ = await api.call("PATCH", f"/tickets/{ticket['id']}", body={"type": "Not A Slug"})
    assert status == 422
    status, _ = await api.call("DELETE", f"/tickets/{ticket['id']}")
    assert status == 204
    assert (await api.call("GET", f"/tickets/{ticket['id']}"))[0] == 404
    assert await api.count(TicketConversation) == 0 and await api.count(TicketStatusChange) == 0


async def test_list_filters_sorts_and_pages(api: Api) -> None:
    agent = await make_tenant(api.db, "acme", role=Role.AGENT, email="agent@acme.example.com")
    ids = []
    for n, (priority, assignee) in enumerate(
        [("low", None), ("urgent", agent.user_id), ("high", agent.user_id), ("none", None), ("urgent", None)]
    ):
        _, t = await api.call(
            "POST", "/tickets", body={"subject": f"T{n}", "priority": priority, "assignee_id": assignee}
        )
        ids.append(t["id"])
    await api.call("POST", f"/tickets/{ids[0]}/status", body={"status": "solved"})

    async def listed(**params: Any) -> list[int]:
        status, page = await api.call("GET", "/tickets", params=params)
        assert status == 200, page
        return [t["id"] for t in page["data"]]

    assert await listed() == ids[::-1]
    assert await listed(assignee_id=agent.user_id, sort="id") == [ids[1], ids[2]]
    assert await listed(assignee_id="none", sort="id") == [ids[0], ids[3], ids[4]]
    assert await listed(status="unresolved", sort="id") == ids[1:]
    assert await listed(status="solved") == [ids[0]]
    assert await listed(priority="urgent", sort="id") == [ids[1], ids[4]]
    assert await listed(sort="-priority") == [ids[4], ids[1], ids[2], ids[0], ids[3]]
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "sort": "-priority"}
        if cursor:
            params["cursor"] = cursor
        _, page = await api.call("GET", "/tickets", params=params)
        seen += [t["id"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [ids[4], ids[1], ids[2], ids[0], ids[3]]


async def test_another_tenants_tickets_are_404_and_roles_are_enforced(api: Api) -> None:
    _, conversation_id = await _conversation_with_message(api, "Help")
    _, ticket = await api.call("POST", f"/conversations/{conversation_id}/tickets", body={})
    other = await make_tenant(api.db, "globex")
    for method, path, body in (
        ("GET", f"/tickets/{ticket['id']}", None),
        ("PATCH", f"/tickets/{ticket['id']}", {"subject": "mine"}),
        ("POST", f"/tickets/{ticket['id']}/status", {"status": "solved"}),
        ("DELETE", f"/tickets/{ticket['id']}", None),
        ("POST", f"/conversations/{conversation_id}/tickets", {}),
    ):
        status, _ = await api.call(method, path, who=other, body=body)
        assert status == 404, (method, path)
    _, theirs = await api.call("GET", "/tickets", who=other)
    assert theirs["data"] == []
    # Their own numbering starts at 1; linking our conversation to their ticket is refused.
    _, own = await api.call("POST", "/tickets", who=other, body={"subject": "Theirs"})
    assert own["number"] == 1
    status, _ = await api.call(
        "POST", f"/tickets/{own['id']}/conversations", who=other, body={"conversation_id": conversation_id}
    )
    assert status == 422
    marketer = await make_tenant(api.db, "acme", role=Role.MARKETER, email="m@acme.example.com")
    assert (await api.call("GET", "/tickets", who=marketer))[0] == 403
    assert (await api.call("POST", "/tickets", who=marketer, body={"subject": "x"}))[0] == 403
    agent = await make_tenant(api.db, "acme", role=Role.AGENT, email="agent@acme.example.com")
    assert (await api.call("GET", f"/tickets/{ticket['id']}", who=agent))[0] == 200


async def test_merging_contacts_moves_their_tickets(api: Api) -> None:
    inbox_id = await api.create_inbox()
    survivor, _ = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")
    merged, _ = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550101")
    _, ticket = await api.call("POST", "/tickets", body={"subject": "Old issue", "contact_id": merged})
    async with api.db.transaction() as session:
        keep = await session.get(Contact, survivor)
        gone = await session.get(Contact, merged)
        assert keep is not None and gone is not None
        report = await merge_contacts(session, keep, gone, user_id=api.admin.user_id)
    assert report.other_references.get("tickets.contact_id") == 1
    async with api.db.sessionmaker() as session:
        row = await session.get(Ticket, ticket["id"])
        assert row is not None and row.contact_id == survivor
