"""SLAs through the API on both databases: calendars, policies, a conversation's clocks, roles, tenancy."""

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
from parley.models import Role, User
from parley.settings import Settings
from tests.conftest import TenantAccess, eventually, make_tenant
from tests.routing.world import add_inbox, add_team, open_conversation

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

OFFICE = {
    "name": "Paris office",
    "time_zone": "Europe/Paris",
    "hours": {day: [["09:00", "12:30"], ["13:30", "18:00"]] for day in ("mon", "tue", "wed", "thu", "fri")},
    "holiday_country": "fr",
    "custom_holidays": ["2026-12-24"],
}


@dataclass
class Api:
    client: TestClient[Any, Any]
    db: Database
    admin: TenantAccess

    async def call(
        self, method: str, path: str, *, who: TenantAccess | None = None, body: Any = None
    ) -> tuple[int, Any]:
        async with self.client.request(
            method,
            f"/api/v1{path}",
            data=None if body is None else json.dumps(body),
            headers=(who or self.admin).headers,
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    def notify(self) -> None:
        from gateway.keys import NOTIFIER

        self.client.app[NOTIFIER].notify()


async def _colleague(api: Api, role: Role) -> TenantAccess:
    """Another user of the admin's tenant, with `role` and a token."""
    async with api.db.transaction() as session:
        user = User(
            tenant_id=api.admin.tenant_id, email=f"{role}@acme.example.com", password_hash="-", role=role
        )
        session.add(user)
        await session.flush()
        return TenantAccess(api.admin.tenant_id, user.id, await issue_token(session, user))


@pytest_asyncio.fixture
async def api(aiohttp_client: ClientFactory, db: Database, settings: Settings) -> Api:
    client = await aiohttp_client(create_app(settings))
    return Api(client, db, await make_tenant(db, "acme"))


async def test_calendars_are_validated_and_managed(api: Api) -> None:
    status, calendar = await api.call("POST", "/sla/calendars", body=OFFICE)
    assert status == 201, calendar
    assert calendar["holiday_country"] == "FR" and calendar["custom_holidays"] == ["2026-12-24"]
    assert calendar["hours"]["mon"] == [["09:00", "12:30"], ["13:30", "18:00"]]
    assert (await api.call("POST", "/sla/calendars", body=OFFICE))[0] == 409

    for wrong, field in (
        ({"time_zone": "Mars/Olympus"}, "unknown time zone"),
        ({"holiday_country": "XX"}, "XX"),
        ({"holiday_country": "US", "holiday_subdivision": "ZZ"}, "ZZ"),
        ({"hours": {"mon": [["18:00", "09:00"]]}}, "ends before it starts"),
        ({"hours": {"mon": [["09:00", "25:00"]]}}, "hours"),
        ({"hours": {}}, "at least one weekday"),
    ):
        status, error = await api.call("POST", "/sla/calendars", body={**OFFICE, "name": "Other", **wrong})
        assert status == 422, (wrong, error)
        assert field in json.dumps(error), (wrong, error)

    changed = {
        **OFFICE,
        "time_zone": "America/New_York",
        "holiday_country": "US",
        "holiday_subdivision": "NY",
    }
    status, updated = await api.call("PUT", f"/sla/calendars/{calendar['id']}", body=changed)
    assert (status, updated["time_zone"], updated["holiday_subdivision"]) == (200, "America/New_York", "NY")
    status, listed = await api.call("GET", "/sla/calendars")
    assert [c["id"] for c in listed["data"]] == [calendar["id"]]

    status, policy = await api.call(
        "POST",
        "/sla/policies",
        body={"name": "Office", "first_response_minutes": 60, "calendar_id": calendar["id"]},
    )
    assert status == 201
    assert (await api.call("DELETE", f"/sla/calendars/{calendar['id']}"))[0] == 409  # in use
    assert (await api.call("DELETE", f"/sla/policies/{policy['id']}"))[0] == 204
    assert (await api.call("DELETE", f"/sla/calendars/{calendar['id']}"))[0] == 204
    assert (await api.call("GET", f"/sla/calendars/{calendar['id']}"))[0] == 404


async def test_policies_check_what_they_name(api: Api) -> None:
    tenant = api.admin.tenant_id
    inbox = await add_inbox(api.db, tenant)
    team = await add_team(api.db, tenant, "Tier 2")
    body = {
        "name": "Urgent support",
        "inbox_id": inbox,
        "team_id": team,
        "priority": "urgent",
        "first_response_minutes": 15,
        "next_response_minutes": 30,
        "resolution_minutes": 480,
        "warning_fraction": 0.75,
        "escalations": [
            {"type": "notify_slack", "on": ["warning", "breach"], "webhook_url": "https://hooks.slack.com/x"},
            {"type": "reassign", "on": ["breach"], "team_id": team},
            {"type": "raise_priority", "on": ["warning"]},
        ],
    }
    status, policy = await api.call("POST", "/sla/policies", body=body)
    assert status == 201, policy
    assert policy["escalations"][1] == {"type": "reassign", "on": ["breach"], "team_id": team}
    assert policy["priority"] == "urgent" and policy["warning_fraction"] == 0.75

    other = await make_tenant(api.db, "globex")
    their_inbox = await add_inbox(api.db, other.tenant_id)
    their_team = await add_team(api.db, other.tenant_id, "Theirs")
    for wrong, code in (
        ({"inbox_id": their_inbox}, "invalid_inbox"),
        ({"team_id": their_team}, "invalid_team"),
        ({"calendar_id": 10**6}, "invalid_calendar"),
        ({"escalations": [{"type": "reassign", "on": ["breach"], "team_id": their_team}]}, "invalid_team"),
        (
            {"escalations": [{"type": "notify_in_app", "on": ["breach"], "user_ids": [other.user_id]}]},
            "invalid_user",
        ),
        ({"escalations": [{"type": "reassign", "on": ["breach"]}]}, "validation_error"),
        ({"escalations": [{"type": "notify_email", "on": ["breach"]}]}, "validation_error"),
        (
            {"escalations": [{"type": "notify_slack", "on": ["breach"], "webhook_url": "file:///etc"}]},
            "validation_error",
        ),
        ({"escalations": [{"type": "launch_rocket", "on": ["breach"]}]}, "validation_error"),
        ({"priority": "critical"}, "validation_error"),
        ({"warning_fraction": 1.5}, "validation_error"),
    ):
        status, error = await api.call("POST", "/sla/policies", body={**body, **wrong})
        assert (status, error["error"]["code"]) == (422, code), wrong

    status, changed = await api.call("PUT", f"/sla/policies/{policy['id']}", body={**body, "enabled": False})
    assert (status, changed["enabled"]) == (200, False)
    # Another tenant's policy does not exist for them, and their list is empty.
    assert (await api.call("GET", f"/sla/policies/{policy['id']}", who=other))[0] == 404
    assert (await api.call("PUT", f"/sla/policies/{policy['id']}", who=other, body=body))[0] == 404
    assert (await api.call("DELETE", f"/sla/policies/{policy['id']}", who=other))[0] == 404
    assert (await api.call("GET", "/sla/policies", who=other))[1]["data"] == []


async def test_agents_read_but_do_not_manage(api: Api) -> None:
    agent = await _colleague(api, Role.AGENT)
    hook = "https://hooks.slack.com/services/T0/B0/secret"
    status, policy = await api.call(
        "POST",
        "/sla/policies",
        body={
            "name": "Chat",
            "first_response_minutes": 5,
            "escalations": [{"type": "notify_slack", "on": ["breach"], "webhook_url": hook}],
        },
    )
    assert status == 201 and policy["escalations"][0]["webhook_url"] == hook
    status, listed = await api.call("GET", "/sla/policies", who=agent)
    assert status == 200 and [p["id"] for p in listed["data"]] == [policy["id"]]
    # The webhook URL is a credential: agents see that there is one, not what it is.
    assert listed["data"][0]["escalations"][0]["webhook_url"] == "(hidden)"
    assert hook not in json.dumps(await api.call("GET", f"/sla/policies/{policy['id']}", who=agent))
    assert (await api.call("POST", "/sla/policies", who=agent, body={"name": "x"}))[0] == 403
    assert (await api.call("POST", "/sla/calendars", who=agent, body=OFFICE))[0] == 403


async def test_a_conversation_shows_its_clocks(api: Api) -> None:
    tenant = api.admin.tenant_id
    inbox = await add_inbox(api.db, tenant)
    status, _ = await api.call(
        "POST",
        "/sla/policies",
        body={"name": "Chat", "inbox_id": inbox, "first_response_minutes": 30, "resolution_minutes": 600},
    )
    assert status == 201
    conversation = await open_conversation(api.db, tenant, inbox)
    api.notify()

    async def timed() -> bool:
        return len((await api.call("GET", f"/conversations/{conversation}/sla"))[1]["clocks"]) == 2

    await eventually(timed)
    status, sla = await api.call("GET", f"/conversations/{conversation}/sla")
    assert status == 200
    clocks = {c["kind"]: c for c in sla["clocks"]}
    first = clocks["first_response"]
    assert first["state"] == "running" and first["target_minutes"] == 30
    assert 0 < first["remaining_seconds"] <= 30 * 60
    assert sla["next_due_at"] == first["due_at"]

    # Resolving through the API stops every clock: met.
    status, _ = await api.call("PATCH", f"/conversations/{conversation}", body={"status": "resolved"})
    assert status == 200
    api.notify()

    async def stopped() -> bool:
        clocks = (await api.call("GET", f"/conversations/{conversation}/sla"))[1]["clocks"]
        return all(c["state"] == "met" for c in clocks)

    await eventually(stopped)
    assert (await api.call("GET", f"/conversations/{conversation}/sla"))[1]["next_due_at"] is None

    other = await make_tenant(api.db, "globex")
    assert (await api.call("GET", f"/conversations/{conversation}/sla", who=other))[0] == 404
    assert (await api.call("GET", "/conversations/999999/sla"))[0] == 404
