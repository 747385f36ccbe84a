"""Priority scoring through the API on both databases: settings, dry runs, the conversation's explanation."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from gateway.keys import NOTIFIER
from inbox.models import Conversation
from parley.models import OutboxEvent, Role
from routing.prioritizer import recompute
from routing.priority import DEFAULT_CONFIG
from tests.conftest import eventually, make_tenant
from tests.gateway.test_api import Api, add_conversation, api
from tests.gateway.test_conversation_actions_api import add_message, other_tenant

__all__ = ["api"]


@pytest_asyncio.fixture(autouse=True)
async def settled(api: Api) -> AsyncIterator[None]:
    """Let the app's dispatcher finish what a test set off before the app stops."""
    yield
    api.client.app[NOTIFIER].notify()

    async def idle() -> bool:
        return await api.count(OutboxEvent, OutboxEvent.completed_at.is_(None)) == 0

    await eventually(idle, timeout=30)


async def _conversation(api: Api) -> int:
    inbox_id = await api.create_inbox()
    _, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")
    return conversation_id


async def _row(api: Api, conversation_id: int) -> Conversation:
    async with api.db.sessionmaker() as session:
        return await session.get_one(Conversation, conversation_id)


async def test_settings_start_as_the_defaults_and_only_admins_and_supervisors_change_them(api: Api) -> None:
    agent = await make_tenant(api.db, "acme", role=Role.AGENT)
    supervisor = await make_tenant(api.db, "acme", role=Role.SUPERVISOR)
    marketer = await make_tenant(api.db, "acme", role=Role.MARKETER)
    status, body = await api.call("GET", "/priority-scoring", who=agent)
    assert status == 200 and body["is_default"] is True
    assert body["config"]["thresholds"] == DEFAULT_CONFIG["thresholds"]
    assert body["config"]["deal_bands"]["EUR"][1] == {"min_amount_minor": 1_000_000, "points": 30}

    change = {
        "vip": {"tag": "gold", "points": 70},
        "thresholds": {"low": 5, "medium": 15, "high": 35, "urgent": 60},
    }
    for who in (agent, marketer):
        status, _ = await api.call("PUT", "/priority-scoring", who=who, body=change)
        assert status == 403
    status, body = await api.call("PUT", "/priority-scoring", who=supervisor, body=change)
    assert status == 200, body
    assert body["is_default"] is False and body["updated_by_id"] == supervisor.user_id
    assert body["config"]["vip"] == {"tag": "gold", "points": 70}
    assert body["config"]["urgency_phrases"] == DEFAULT_CONFIG["urgency_phrases"]  # left out: the default

    # Another tenant still has the defaults.
    globex, _ = await other_tenant(api)
    status, body = await api.call("GET", "/priority-scoring", who=globex)
    assert status == 200 and body["is_default"] is True


async def test_settings_are_validated(api: Api) -> None:
    for wrong in (
        {"thresholds": {"low": 50, "medium": 20, "high": 40, "urgent": 70}},  # decreasing
        {"deal_bands": {"eur": [{"min_amount_minor": 100, "points": 5}]}},  # not an ISO code
        {"lifecycle_points": {"customer": -5}},  # points are never negative
        {"lifecycle_points": {"prospect": 5}},  # no such stage
        {"colour": "red"},  # unknown field
    ):
        status, body = await api.call("PUT", "/priority-scoring", body=wrong)
        assert status == 422, (wrong, body)


async def test_saving_rescores_and_the_conversation_explains_its_priority(api: Api) -> None:
    conversation_id = await _conversation(api)
    await add_message(api, conversation_id, "I need a refund, the app is not working")
    async with api.db.transaction() as session:
        await recompute(session, api.admin.tenant_id, [conversation_id])
    status, body = await api.call("GET", f"/conversations/{conversation_id}")
    assert status == 200
    assert body["priority"] == "medium" and body["priority_source"] == "computed"
    assert body["priority_score"] == 25
    assert body["priority_reasons"] == [
        {"signal": "urgency", "label": "said 'not working'", "points": 15},
        {"signal": "urgency", "label": "said 'refund'", "points": 10},
    ]
    assert body["priority_explanation"] == "Priority medium because: said 'not working' · said 'refund'"

    status, _ = await api.call(
        "PUT",
        "/priority-scoring",
        body={"urgency_phrases": {"en": {"refund": 75}}, "urgency_max_points": 100},
    )
    assert status == 200

    async def rescored() -> bool:
        return (await _row(api, conversation_id)).priority == "urgent"

    await eventually(rescored)
    status, listing = await api.call("GET", "/conversations")
    [row] = [c for c in listing["data"] if c["id"] == conversation_id]
    assert row["priority_explanation"] == "Priority urgent because: said 'refund'"


async def test_a_priority_set_by_an_agent_says_so(api: Api) -> None:
    agent = await make_tenant(api.db, "acme", role=Role.AGENT)
    conversation_id = await _conversation(api)
    status, body = await api.call(
        "PATCH", f"/conversations/{conversation_id}", who=agent, body={"priority": "high"}
    )
    assert status == 200, body
    assert body["priority_source"] == "manual" and body["priority_set_by_id"] == agent.user_id
    assert body["priority_explanation"] == (
        "Priority high, set by hand; scoring resumes once the conversation is resolved"
    )


async def test_a_dry_run_scores_with_proposed_settings_and_saves_nothing(api: Api) -> None:
    agent = await make_tenant(api.db, "acme", role=Role.AGENT)
    conversation_id = await _conversation(api)
    await add_message(api, conversation_id, "Dringend: bitte Rückerstattung", ago=3)
    path = f"/conversations/{conversation_id}/priority/dry-run"

    status, body = await api.call(
        "POST", path, body={"config": {"urgency_phrases": {"de": {"dringend": 90}}, "urgency_max_points": 90}}
    )
    assert status == 200, body
    assert body["priority"] == "urgent" and body["score"] == 93
    assert [r["label"] for r in body["reasons"]] == ["waiting 3 min", "said 'dringend'"]
    assert body["explanation"] == "Priority urgent because: waiting 3 min · said 'dringend'"
    assert (body["current_priority"], body["current_source"]) == ("none", "computed")

    status, body = await api.call("POST", path, body={})  # the saved (default) settings
    assert status == 200 and body["priority"] == "medium" and body["score"] == 3 + 20 + 10

    row = await _row(api, conversation_id)
    assert (row.priority, row.priority_score) == ("none", None)  # nothing was saved
    status, settings = await api.call("GET", "/priority-scoring")
    assert settings["is_default"] is True

    assert (await api.call("POST", path, who=agent, body={}))[0] == 403
    globex, theirs = await other_tenant(api)
    assert (await api.call("POST", f"/conversations/{theirs}/priority/dry-run", body={}))[0] == 404
    status, _ = await api.call("POST", path, who=globex, body={})
    assert status in (403, 404)  # globex's admin may dry-run, but not on acme's conversation
    assert status == 404
