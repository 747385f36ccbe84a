"""Routing through the API on both databases: teams, profiles, policies, the queue, overrides, tenancy."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest_asyncio
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from parley.auth import issue_token
from parley.db import Database
from parley.models import Presence, Role, User
from parley.settings import Settings
from tests.conftest import TenantAccess, eventually, make_tenant
from tests.routing.world import add_agent, add_inbox, assignees, open_conversation

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@dataclass
class Api:
    client: TestClient[Any, Any]
    db: Database
    admin: TenantAccess

    async def call(
        self, method: str, path: str, *, who: TenantAccess | None = None, body: Any = None, **params: Any
    ) -> tuple[int, Any]:
        async with self.client.request(
            method,
            f"/api/v1{path}",
            data=None if body is None else json.dumps(body),
            params=params or None,
            headers=(who or self.admin).headers,
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    def notify(self) -> None:
        from gateway.keys import NOTIFIER

        self.client.app[NOTIFIER].notify()


@pytest_asyncio.fixture
async def api(aiohttp_client: ClientFactory, db: Database, settings: Settings) -> Api:
    client = await aiohttp_client(create_app(settings))
    return Api(client, db, await make_tenant(db, "acme"))


async def _token_for(db: Database, user_id: int) -> TenantAccess:
    async with db.transaction() as session:
        user = await session.get(User, user_id)
        assert user is not None
        return TenantAccess(user.tenant_id, user.id, await issue_token(session, user))


async def test_a_team_inbox_queues_until_the_member_comes_online(api: Api) -> None:
    tenant = api.admin.tenant_id
    status, team = await api.call("POST", "/teams", body={"name": "Billing"})
    assert status == 201
    member = await add_agent(api.db, tenant, presence=Presence.OFFLINE)
    outsider = await add_agent(api.db, tenant, capacity={"chat": 10})
    status, team = await api.call("PUT", f"/teams/{team['id']}/members/{member}")
    assert (status, team["member_ids"]) == (200, [member])
    inbox = await add_inbox(api.db, tenant)
    status, policy = await api.call(
        "PUT",
        f"/inboxes/{inbox}/routing",
        body={"serving_team_id": team["id"], "strategies": ["round_robin"]},
    )
    assert status == 200 and policy["serving_team_id"] == team["id"]

    first = await open_conversation(api.db, tenant, inbox)
    second = await open_conversation(api.db, tenant, inbox)
    api.notify()

    async def queued() -> bool:
        status, entry = await api.call("GET", f"/conversations/{second}/queue")
        return status == 200 and entry["state"] == "waiting" and entry["position"] == 2

    await eventually(queued)
    status, entry = await api.call("GET", f"/conversations/{first}/queue")
    assert entry["position"] == 1 and entry["waiting"] == 2 and entry["estimated_wait_seconds"] is None
    status, listing = await api.call("GET", "/queue", team_id=team["id"])
    assert [e["conversation_id"] for e in listing["data"]] == [first, second] and listing["total"] == 2
    assert await assignees(api.db, first, second) == [None, None]  # the outsider is not in the team

    member_access = await _token_for(api.db, member)
    status, _ = await api.call("PUT", "/me/presence", who=member_access, body={"presence": "online"})
    assert status == 200

    async def served() -> bool:
        return await assignees(api.db, first, second) == [member, member]

    await eventually(served)
    status, entry = await api.call("GET", f"/conversations/{first}/queue")
    assert (entry["state"], entry["position"]) == ("assigned", None)
    assert outsider != member


async def test_raising_capacity_through_the_profile_serves_the_queue(api: Api) -> None:
    tenant = api.admin.tenant_id
    agent = await add_agent(api.db, tenant, capacity={"chat": 0})
    inbox = await add_inbox(api.db, tenant)
    conversation = await open_conversation(api.db, tenant, inbox)
    api.notify()

    async def waiting() -> bool:
        return (await api.call("GET", f"/conversations/{conversation}/queue"))[0] == 200

    await eventually(waiting)
    status, profile = await api.call(
        "PUT",
        f"/agents/{agent}/profile",
        body={
            "capacity": {"chat": 1},
            "skills": {"billing": 3},
            "languages": ["EN"],
            "time_zone": "Europe/Paris",
            "working_hours": {"mon": [["09:00", "17:00"]]},
        },
    )
    assert status == 200, profile
    assert profile["languages"] == ["en"] and profile["capacity"] == {"chat": 1}
    # Hours limit Mondays only; make it any time again so the test does not depend on the weekday.
    status, profile = await api.call("PUT", f"/agents/{agent}/profile", body={"capacity": {"chat": 1}})
    assert status == 200

    async def served() -> bool:
        return await assignees(api.db, conversation) == [agent]

    await eventually(served)
    status, got = await api.call("GET", f"/agents/{agent}/profile")
    assert got["last_assigned_at"] is not None and got["presence"] == "online"


async def test_a_supervisor_overrides_and_an_agent_may_not(api: Api) -> None:
    tenant = api.admin.tenant_id
    full = await add_agent(api.db, tenant, capacity={"chat": 1})
    other = await add_agent(api.db, tenant, capacity={"chat": 1})
    inbox = await add_inbox(api.db, tenant, strategies=["manual"])
    conversation = await open_conversation(api.db, tenant, inbox)
    supervisor = await make_tenant(api.db, "acme", role=Role.SUPERVISOR)
    agent = await _token_for(api.db, other)
    marketer = await make_tenant(api.db, "acme", role=Role.MARKETER)

    for who in (agent, marketer):
        status, body = await api.call(
            "POST", f"/conversations/{conversation}/assignment", who=who, body={"assignee_id": other}
        )
        assert (status, body["error"]["code"]) == (403, "forbidden")
    for method, path, body in (
        ("POST", "/teams", {"name": "x"}),
        ("PUT", f"/agents/{other}/profile", {}),
        ("PUT", f"/inboxes/{inbox}/routing", {}),
    ):
        assert (await api.call(method, path, who=agent, body=body))[0] == 403

    status, entry = await api.call(
        "POST", f"/conversations/{conversation}/assignment", who=supervisor, body={"assignee_id": full}
    )
    assert (status, entry["state"]) == (200, "assigned")
    second = await open_conversation(api.db, tenant, inbox)
    # Over capacity on purpose: an override is a person's decision.
    status, _ = await api.call(
        "POST", f"/conversations/{second}/assignment", who=supervisor, body={"assignee_id": full}
    )
    assert status == 200
    assert await assignees(api.db, conversation, second) == [full, full]

    status, body = await api.call(
        "POST", f"/conversations/{second}/assignment", who=supervisor, body={"assignee_id": 999999}
    )
    assert (status, body["error"]["code"]) == (422, "invalid_assignee")


async def test_conversation_needs_reorder_the_queue(api: Api) -> None:
    tenant = api.admin.tenant_id
    inbox = await add_inbox(api.db, tenant)
    first = await open_conversation(api.db, tenant, inbox)
    second = await open_conversation(api.db, tenant, inbox)
    api.notify()

    async def both_waiting() -> bool:
        return all([await _is_waiting(api, c) for c in (first, second)])

    await eventually(both_waiting)
    status, entry = await api.call("PUT", f"/conversations/{second}/routing", body={"priority": 10})
    assert (status, entry["position"]) == (200, 1)
    status, entry = await api.call("GET", f"/conversations/{first}/queue")
    assert entry["position"] == 2

    agent = await add_agent(api.db, tenant, presence=Presence.OFFLINE, capacity={"chat": 1}, skills={"de": 1})
    status, entry = await api.call(
        "PUT", f"/conversations/{first}/routing", body={"required_skills": {"de": 1}, "priority": 20}
    )
    assert status == 200
    async with api.db.transaction() as session:
        from routing.presence import set_presence

        await set_presence(session, tenant, agent, Presence.ONLINE)
    api.notify()

    async def served() -> bool:
        return await assignees(api.db, first, second) == [agent, None]

    await eventually(served)


async def test_invalid_settings_are_refused_and_nothing_is_stored(api: Api) -> None:
    tenant = api.admin.tenant_id
    agent = await add_agent(api.db, tenant)
    inbox = await add_inbox(api.db, tenant)
    marketer = await make_tenant(api.db, "acme", role=Role.MARKETER)
    cases = [
        ("PUT", f"/inboxes/{inbox}/routing", {"strategies": ["telepathy"]}, "body.strategies"),
        ("PUT", f"/inboxes/{inbox}/routing", {"strategies": ["sticky", "sticky"]}, "body.strategies"),
        ("PUT", f"/agents/{agent}/profile", {"time_zone": "Mars/Olympus"}, "body.time_zone"),
        ("PUT", f"/agents/{agent}/profile", {"capacity": {"fax": 3}}, "body.capacity"),
        (
            "PUT",
            f"/agents/{agent}/profile",
            {"working_hours": {"mon": [["9am", "5pm"]]}},
            "body.working_hours",
        ),
        ("PUT", f"/agents/{agent}/profile", {"working_hours": {"someday": []}}, "body.working_hours"),
    ]
    for method, path, body, field in cases:
        status, answer = await api.call(method, path, body=body)
        assert status == 422, (path, body, answer)
        assert answer["error"]["details"][0]["field"].startswith(field), answer
    status, policy = await api.call("GET", f"/inboxes/{inbox}/routing")
    assert policy["strategies"] == []
    status, answer = await api.call("PUT", f"/inboxes/{inbox}/routing", body={"serving_team_id": 12345})
    assert (status, answer["error"]["code"]) == (422, "invalid_team")
    status, answer = await api.call("PUT", f"/agents/{marketer.user_id}/profile", body={})
    assert (status, answer["error"]["code"]) == (422, "not_an_agent")
    assert (await api.call("POST", "/teams", body={"name": "Sales"}))[0] == 201
    assert (await api.call("POST", "/teams", body={"name": "Sales"}))[0] == 409


async def test_every_tenant_sees_only_its_own_routing(api: Api) -> None:
    tenant = api.admin.tenant_id
    other = await make_tenant(api.db, "globex")
    _, team = await api.call("POST", "/teams", body={"name": "Billing"})
    agent = await add_agent(api.db, tenant, presence=Presence.OFFLINE)
    inbox = await add_inbox(api.db, tenant)
    conversation = await open_conversation(api.db, tenant, inbox)
    api.notify()

    async def queued() -> bool:
        return (await api.call("GET", f"/conversations/{conversation}/queue"))[0] == 200

    await eventually(queued)
    theirs = [
        ("GET", f"/conversations/{conversation}/queue", None),
        ("PUT", f"/conversations/{conversation}/routing", {"priority": 1}),
        ("POST", f"/conversations/{conversation}/assignment", {"assignee_id": other.user_id}),
        ("GET", f"/agents/{agent}/profile", None),
        ("PUT", f"/agents/{agent}/profile", {}),
        ("PUT", f"/teams/{team['id']}/members/{other.user_id}", None),
        ("GET", f"/teams/{team['id']}/routing", None),
        ("GET", f"/inboxes/{inbox}/routing", None),
        ("PUT", f"/inboxes/{inbox}/routing", {}),
        ("DELETE", f"/teams/{team['id']}", None),
    ]
    for method, path, body in theirs:
        status, answer = await api.call(method, path, who=other, body=body)
        assert (status, answer["error"]["code"]) == (404, "not_found"), (method, path, answer)
    # Adding a user of another tenant to one's own team is refused too.
    status, _ = await api.call("PUT", f"/teams/{team['id']}/members/{other.user_id}")
    assert status == 404
    status, listing = await api.call("GET", "/queue", who=other)
    assert (status, listing["data"], listing["total"]) == (200, [], 0)
    status, teams = await api.call("GET", "/teams", who=other)
    assert teams["data"] == []
    status, listing = await api.call("GET", "/queue")
    assert [e["conversation_id"] for e in listing["data"]] == [conversation]


async def test_the_conversation_api_resolving_or_handing_over_keeps_the_queue_moving(api: Api) -> None:
    from sqlalchemy import select

    from routing.models import Assignment

    tenant = api.admin.tenant_id
    first_agent = await add_agent(api.db, tenant, capacity={"chat": 1})
    inbox = await add_inbox(api.db, tenant)
    held = await open_conversation(api.db, tenant, inbox)
    api.notify()

    async def taken() -> bool:
        return await assignees(api.db, held) == [first_agent]

    await eventually(taken)
    waiting = await open_conversation(api.db, tenant, inbox)
    api.notify()

    async def queued() -> bool:
        status, entry = await api.call("GET", f"/conversations/{waiting}/queue")
        return status == 200 and entry["position"] == 1

    await eventually(queued)

    # Handing the held conversation to someone else by hand frees the first agent's slot.
    second_agent = await add_agent(api.db, tenant, capacity={"chat": 0})
    status, _ = await api.call("PATCH", f"/conversations/{held}", body={"assignee_id": second_agent})
    assert status == 200

    async def handed_over() -> bool:
        return await assignees(api.db, held, waiting) == [second_agent, first_agent]

    await eventually(handed_over)
    async with api.db.sessionmaker() as session:
        reasons = (
            await session.execute(
                select(Assignment.conversation_id, Assignment.user_id, Assignment.reason).order_by(
                    Assignment.id
                )
            )
        ).all()
    assert [(r.conversation_id, r.user_id) for r in reasons] == [
        (held, first_agent),
        (held, second_agent),
        (waiting, first_agent),
    ]
    assert [r.reason for r in reasons] == ["least_loaded", "manual", "least_loaded"]

    # Resolving through the API serves the next one.
    third = await open_conversation(api.db, tenant, inbox)
    api.notify()
    await eventually(lambda: _is_waiting(api, third))
    status, _ = await api.call("PATCH", f"/conversations/{waiting}", body={"status": "resolved"})
    assert status == 200

    async def next_served() -> bool:
        return await assignees(api.db, third) == [first_agent]

    await eventually(next_served)


async def _is_waiting(api: Api, conversation_id: int) -> bool:
    status, entry = await api.call("GET", f"/conversations/{conversation_id}/queue")
    return status == 200 and entry["state"] == "waiting"
