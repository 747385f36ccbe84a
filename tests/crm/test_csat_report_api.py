"""The CSAT report and settings on both databases: arithmetic per agent, team, inbox, day; tenancy; roles."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from inbox.csat_models import CsatSurvey
from parley.models import Role
from routing.models import ConversationRouting, Team
from tests.conftest import make_tenant
from tests.gateway.test_api import Api, add_conversation

DAY1 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
DAY2 = datetime(2026, 11, 3, 23, 30, tzinfo=UTC)


async def _surveys(
    api: Api, tenant_id: int, rows: list[tuple[datetime, int | None, int | None, int]]
) -> None:
    """(sent at, agent, rating, inbox) per survey, each on its own conversation."""
    for n, (sent_at, agent_id, rating, inbox_id) in enumerate(rows):
        contact_id, conversation_id = await add_conversation(api.db, tenant_id, inbox_id, f"+1415555{n:04d}")
        async with api.db.transaction() as session:
            session.add(
                CsatSurvey(
                    tenant_id=tenant_id,
                    conversation_id=conversation_id,
                    contact_id=contact_id,
                    inbox_id=inbox_id,
                    channel="twilio_sms",
                    resolved_at=sent_at,
                    agent_id=agent_id,
                    sent_via="message",
                    sent_at=sent_at,
                    expires_at=sent_at + timedelta(days=7),
                    rating=rating,
                    rated_at=None if rating is None else sent_at,
                )
            )


def _row(data: list[dict[str, Any]], group: Any) -> dict[str, Any]:
    [row] = [r for r in data if r["group"] == (None if group is None else str(group))]
    return row


async def test_the_report_counts_responses_averages_and_csat_share(api: Api) -> None:
    a = await make_tenant(api.db, "acme", role=Role.AGENT, email="a@acme.example.com")
    b = await make_tenant(api.db, "acme", role=Role.AGENT, email="b@acme.example.com")
    inbox1, inbox2 = await api.create_inbox(), await api.create_inbox()
    await _surveys(
        api,
        api.admin.tenant_id,
        [
            (DAY1, a.user_id, 5, inbox1),
            (DAY1, a.user_id, 4, inbox1),
            (DAY1, a.user_id, None, inbox2),
            (DAY1, b.user_id, 2, inbox2),
            (DAY2, a.user_id, 3, inbox1),
            (DAY2, b.user_id, None, inbox1),
            (DAY2, b.user_id, 5, inbox2),
            (DAY1 - timedelta(days=5), a.user_id, 1, inbox1),  # before the range
        ],
    )
    other = await make_tenant(api.db, "globex")
    other_inbox = await api.create_inbox(other)
    await _surveys(api, other.tenant_id, [(DAY1, None, 1, other_inbox)])
    # Agent a's conversations are routed to a team; b's are not.
    async with api.db.transaction() as session:
        team = Team(tenant_id=api.admin.tenant_id, name="Tier 1")
        session.add(team)
        await session.flush()
        for survey in (
            await session.scalars(select(CsatSurvey).where(CsatSurvey.agent_id == a.user_id))
        ).all():
            session.add(
                ConversationRouting(
                    conversation_id=survey.conversation_id,
                    tenant_id=survey.tenant_id,
                    contact_id=survey.contact_id,
                    channel_kind="sms",
                    state="closed",
                    team_id=team.id,
                )
            )
        team_id = team.id

    async def report(group_by: str) -> dict[str, Any]:
        status, body = await api.call(
            "GET", "/reports/csat", params={"from": "2026-11-02", "to": "2026-11-03", "group_by": group_by}
        )
        assert status == 200, body
        return dict(body)

    by_agent = await report("agent")
    assert by_agent["total"] == {
        "group": None,
        "sent": 7,
        "responses": 5,
        "response_rate": 0.7143,
        "average": 3.8,
        "csat": 60.0,
    }
    assert _row(by_agent["data"], a.user_id) == {
        "group": str(a.user_id),
        "sent": 4,
        "responses": 3,
        "response_rate": 0.75,
        "average": 4.0,
        "csat": 66.67,
    }
    assert _row(by_agent["data"], b.user_id) == {
        "group": str(b.user_id),
        "sent": 3,
        "responses": 2,
        "response_rate": 0.6667,
        "average": 3.5,
        "csat": 50.0,
    }
    by_day = await report("day")
    assert [(r["group"], r["sent"], r["responses"], r["average"]) for r in by_day["data"]] == [
        ("2026-11-02", 4, 3, 3.6667),
        ("2026-11-03", 3, 2, 4.0),
    ]
    by_inbox = await report("inbox")
    assert (_row(by_inbox["data"], inbox1)["sent"], _row(by_inbox["data"], inbox2)["sent"]) == (4, 3)
    by_team = await report("team")
    assert (_row(by_team["data"], team_id)["sent"], _row(by_team["data"], None)["sent"]) == (4, 3)

    status, _ = await api.call("GET", "/reports/csat", params={"from": "2026-11-03", "to": "2026-11-02"})
    assert status == 400
    status, theirs = await api.call(
        "GET", "/reports/csat", who=other, params={"from": "2026-11-02", "to": "2026-11-03"}
    )
    assert theirs["total"]["sent"] == 1
    status, _ = await api.call(
        "GET", "/reports/csat", who=a, params={"from": "2026-11-02", "to": "2026-11-03"}
    )
    assert status == 403
    supervisor = await make_tenant(api.db, "acme", role=Role.SUPERVISOR, email="s@acme.example.com")
    status, _ = await api.call(
        "GET", "/reports/csat", who=supervisor, params={"from": "2026-11-02", "to": "2026-11-03"}
    )
    assert status == 200


async def test_csat_settings_are_per_tenant_and_admin_managed(api: Api) -> None:
    status, current = await api.call("GET", "/csat/settings")
    assert status == 200 and current["enabled"] is False
    status, saved = await api.call(
        "PUT",
        "/csat/settings",
        body={
            "enabled": True,
            "question": "Rate us?",
            "whatsapp_template": {"name": "HX" + "a" * 32, "variables": {"1": "{link}"}},
        },
    )
    assert status == 200 and saved["enabled"] and saved["question"] == "Rate us?"
    assert saved["whatsapp_template"]["variables"] == {"1": "{link}"}
    other = await make_tenant(api.db, "globex")
    _, theirs = await api.call("GET", "/csat/settings", who=other)
    assert theirs["enabled"] is False
    agent = await make_tenant(api.db, "acme", role=Role.AGENT, email="agent@acme.example.com")
    status, _ = await api.call("PUT", "/csat/settings", who=agent, body={"enabled": False})
    assert status == 403
