"""Tasks and task rules through the API on both databases: CRUD, filters, roles, tenancy, rules at work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_asyncio
from sqlalchemy import select

from crm_core.tasks import Task
from crm_core.tickets import open_ticket
from gateway.app import create_app
from parley.db import Database
from parley.models import OutboxEvent, Role
from parley.outbox import emit
from parley.settings import Settings
from routing.models import TeamMember
from tests.conftest import eventually, make_tenant
from tests.routing.test_sla_api import Api, ClientFactory, _colleague
from tests.routing.world import add_contact, add_team

SOON = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
LATER = (datetime.now(UTC) + timedelta(days=2)).isoformat()
SOONISH = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
PAST = (datetime.now(UTC) - timedelta(hours=1)).isoformat()

TASK_ROUTES = {
    ("get", "/api/v1/tasks"),
    ("post", "/api/v1/tasks"),
    ("get", "/api/v1/tasks/{task_id}"),
    ("patch", "/api/v1/tasks/{task_id}"),
    ("delete", "/api/v1/tasks/{task_id}"),
    ("post", "/api/v1/tasks/{task_id}/complete"),
    ("post", "/api/v1/tasks/{task_id}/reopen"),
    ("get", "/api/v1/task-rules"),
    ("post", "/api/v1/task-rules"),
    ("get", "/api/v1/task-rules/{rule_id}"),
    ("patch", "/api/v1/task-rules/{rule_id}"),
    ("delete", "/api/v1/task-rules/{rule_id}"),
}


@pytest_asyncio.fixture
async def api(aiohttp_client: ClientFactory, db: Database, settings: Settings) -> Api:
    client = await aiohttp_client(create_app(settings))
    return Api(client, db, await make_tenant(db, "acme"))


async def test_tasks_are_created_listed_completed_and_reopened(api: Api) -> None:
    contact = await add_contact(api.db, api.admin.tenant_id)
    agent = await _colleague(api, Role.AGENT)
    status, mine = await api.call(
        "POST",
        "/tasks",
        who=agent,
        body={
            "title": "Call Ada back",
            "type": "call_back",
            "priority": "high",
            "due_at": SOON,
            "contact_id": contact,
            "suggested_action": {"kind": "call", "label": "Call +1 555"},
        },
    )
    assert status == 201, mine
    assert (mine["assignee_id"], mine["created_by_user_id"], mine["source"]) == (
        agent.user_id,
        agent.user_id,
        "user",
    )
    assert datetime.fromisoformat(mine["remind_at"]) == datetime.fromisoformat(SOON) - timedelta(minutes=30)
    _, later = await api.call("POST", "/tasks", who=agent, body={"title": "Send quote", "due_at": LATER})
    _, undated = await api.call("POST", "/tasks", who=agent, body={"title": "Someday"})
    _, late = await api.call(
        "POST", "/tasks", body={"title": "Late", "due_at": PAST, "assignee_id": agent.user_id}
    )
    _, others = await api.call("POST", "/tasks", body={"title": "The admin's own", "due_at": SOONISH})

    status, page = await api.call("GET", "/tasks?assignee_id=me&status=active", who=agent)
    assert status == 200
    assert [t["id"] for t in page["data"]] == [late["id"], mine["id"], later["id"], undated["id"]]
    assert [t["overdue"] for t in page["data"]] == [True, False, False, False]
    status, first = await api.call("GET", "/tasks?assignee_id=me&limit=2", who=agent)
    _, rest = await api.call("GET", f"/tasks?assignee_id=me&limit=2&cursor={first['next_cursor']}", who=agent)
    assert [t["id"] for t in first["data"] + rest["data"]] == [
        late["id"],
        mine["id"],
        later["id"],
        undated["id"],
    ]
    _, overdue = await api.call("GET", "/tasks?overdue=true", who=agent)
    assert [t["id"] for t in overdue["data"]] == [late["id"]]
    _, by_contact = await api.call("GET", f"/tasks?contact_id={contact}", who=agent)
    assert [t["id"] for t in by_contact["data"]] == [mine["id"]]
    due_before = LATER.replace("+00:00", "Z")
    _, before = await api.call("GET", f"/tasks?due_before={due_before}&sort=-due_at")
    assert [t["id"] for t in before["data"]] == [others["id"], mine["id"], late["id"]]

    status, done = await api.call("POST", f"/tasks/{mine['id']}/complete", who=agent)
    assert status == 200 and done["status"] == "done" and done["completed_at"] is not None
    _, active = await api.call("GET", "/tasks?assignee_id=me&status=active", who=agent)
    assert mine["id"] not in [t["id"] for t in active["data"]]
    status, reopened = await api.call("POST", f"/tasks/{mine['id']}/reopen", who=agent)
    assert status == 200 and reopened["status"] == "open" and reopened["completed_at"] is None
    status, moved = await api.call(
        "PATCH", f"/tasks/{mine['id']}", who=agent, body={"due_at": LATER, "title": "Call Ada"}
    )
    assert status == 200 and moved["title"] == "Call Ada"
    assert datetime.fromisoformat(moved["remind_at"]) == datetime.fromisoformat(LATER) - timedelta(minutes=30)
    async with api.db.sessionmaker() as session:
        topics = (
            await session.scalars(select(OutboxEvent.topic).where(OutboxEvent.topic.like("task.%")))
        ).all()
    assert topics.count("task.completed") == 1 and topics.count("task.created") == 5


async def test_roles_and_tenancy(api: Api) -> None:
    agent = await _colleague(api, Role.AGENT)
    supervisor = await _colleague(api, Role.SUPERVISOR)
    marketer = await _colleague(api, Role.MARKETER)
    _, theirs = await api.call("POST", "/tasks", who=supervisor, body={"title": "Supervisor's"})
    # An agent reads the tenant's tasks but changes only their own, unassigned ones or those they made.
    assert (await api.call("GET", f"/tasks/{theirs['id']}", who=agent))[0] == 200
    assert (await api.call("POST", f"/tasks/{theirs['id']}/complete", who=agent))[0] == 403
    assert (await api.call("PATCH", f"/tasks/{theirs['id']}", who=agent, body={"title": "x"}))[0] == 403
    assert (await api.call("DELETE", f"/tasks/{theirs['id']}", who=agent))[0] == 403
    _, given = await api.call(
        "POST", "/tasks", who=agent, body={"title": "For the lead", "assignee_id": supervisor.user_id}
    )
    assert (await api.call("PATCH", f"/tasks/{given['id']}", who=agent, body={"priority": "low"}))[0] == 200
    # Supervisors change anyone's; marketers see no tasks at all; only supervisors and admins see rules.
    assert (await api.call("POST", f"/tasks/{given['id']}/complete", who=supervisor))[0] == 200
    assert (await api.call("GET", "/tasks", who=marketer))[0] == 403
    assert (await api.call("GET", "/task-rules", who=agent))[0] == 403
    rule = {"name": "r", "trigger": "conversation.opened", "template": {"title": "Welcome"}}
    assert (await api.call("POST", "/task-rules", who=agent, body=rule))[0] == 403
    assert (await api.call("POST", "/task-rules", who=supervisor, body=rule))[0] == 201

    # Another tenant's task and rule do not exist for this one; its ids are refused as context.
    other = await make_tenant(api.db, "globex")
    other_contact = await add_contact(api.db, other.tenant_id)
    _, foreign = await api.call("POST", "/tasks", who=other, body={"title": "Globex's"})
    _, foreign_rule = await api.call("POST", "/task-rules", who=other, body=rule)
    for method in ("GET", "PATCH", "DELETE"):
        body = {"title": "x"} if method == "PATCH" else None
        assert (await api.call(method, f"/tasks/{foreign['id']}", body=body))[0] == 404
        assert (
            await api.call(method, f"/task-rules/{foreign_rule['id']}", body=body if body is None else {})
        )[0] == 404
    assert (await api.call("POST", f"/tasks/{foreign['id']}/complete"))[0] == 404
    status, error = await api.call("POST", "/tasks", body={"title": "x", "contact_id": other_contact})
    assert status == 422 and error["error"]["details"][0]["field"] == "body.contact_id"
    _, listed = await api.call("GET", "/tasks")
    assert foreign["id"] not in [t["id"] for t in listed["data"]]


async def test_rules_are_validated_and_create_tasks_from_events(api: Api) -> None:
    tenant = api.admin.tenant_id
    team = await add_team(api.db, tenant, "Tier 2")
    lead = await _colleague(api, Role.SUPERVISOR)
    async with api.db.transaction() as session:
        session.add(TeamMember(team_id=team, user_id=lead.user_id, tenant_id=tenant))
    for wrong, field in (
        ({"trigger": "ticket.exploded"}, "body.trigger"),
        ({"trigger": "deal.idle"}, "body.idle_days"),
        ({"conditions": [{"field": "reopen_count", "op": "~="}]}, "body.conditions.0.op"),
        ({"assignee": {"rule": "team", "team_id": 999999}}, "body.assignee.team_id"),
    ):
        body = {"name": "r", "trigger": "ticket.status_changed", "template": {"title": "t"}, **wrong}
        status, error = await api.call("POST", "/task-rules", body=body)
        assert status == 422, (wrong, error)
        assert field in [d["field"] for d in error["error"]["details"]], error

    status, rule = await api.call(
        "POST",
        "/task-rules",
        body={
            "name": "Ticket reopened twice",
            "trigger": "ticket.status_changed",
            "conditions": [{"field": "reopen_count", "op": ">=", "value": 2}],
            "template": {
                "type": "review",
                "title": "Ticket {{ ticket_id }} reopened {{ reopen_count }} times",
                "due_in_hours": 8,
            },
            "assignee": {"rule": "supervisor"},
        },
    )
    assert status == 201, rule
    assert rule["template"]["due_in_hours"] == 8 and rule["assignee"]["rule"] == "supervisor"
    contact = await add_contact(api.db, tenant)
    async with api.db.transaction() as session:
        ticket = (await open_ticket(session, tenant_id=tenant, subject="Reopened", contact_id=contact)).id
    payload: dict[str, Any] = {
        "ticket_id": ticket, "contact_id": contact, "conversation_id": None, "team_id": team,
        "assignee_id": None, "from": "solved", "to": "open", "reopen_count": 2,
    }  # fmt: skip
    async with api.db.transaction() as session:
        await emit(session, tenant, ("ticket.status_changed", payload))
    api.notify()

    async def created() -> bool:
        async with api.db.sessionmaker() as session:
            return (await session.scalar(select(Task).where(Task.ticket_id == ticket))) is not None

    await eventually(created)
    _, listed = await api.call("GET", f"/tasks?ticket_id={ticket}", who=lead)
    (task,) = listed["data"]
    assert (task["title"], task["assignee_id"], task["rule_id"]) == (
        f"Ticket {ticket} reopened 2 times",
        lead.user_id,
        rule["id"],
    )

    status, disabled = await api.call("PATCH", f"/task-rules/{rule['id']}", body={"enabled": False})
    assert status == 200 and disabled["enabled"] is False
    assert (await api.call("DELETE", f"/task-rules/{rule['id']}"))[0] == 204
    assert (await api.call("GET", f"/tasks/{task['id']}"))[0] == 200  # the task stays


async def test_the_api_document_describes_tasks(api: Api) -> None:
    status, document = await api.call("GET", "/openapi.json")
    assert status == 200
    assert {"/api/v1/tasks", "/api/v1/tasks/{task_id}/complete", "/api/v1/task-rules"} <= set(
        document["paths"]
    )
