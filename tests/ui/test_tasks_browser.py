"""'My tasks' in a real browser against `parley serve`: a rule's task shows up, the agent completes it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from playwright.async_api import expect
from sqlalchemy import select

from crm_core.models import Contact
from crm_core.tasks import Task, TaskRule, create_task
from crm_core.tickets import open_ticket
from parley.db import Database, utcnow
from parley.models import Role
from parley.outbox import emit
from routing.models import Team, TeamMember
from tests.conftest import eventually
from tests.ui.conftest import Browsing, ParleyServer, make_agent, screenshot

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def test_an_agent_completes_the_task_a_rule_gave_them(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", role=Role.AGENT, name="Ada Agent")
    tenant = agent.tenant_id
    async with db.transaction() as session:
        contact = Contact(tenant_id=tenant, name="Ann <b>Customer</b>")
        team = Team(tenant_id=tenant, name="Tier 2")
        session.add_all([contact, team])
        await session.flush()
        session.add(TeamMember(team_id=team.id, user_id=agent.user_id, tenant_id=tenant))
        session.add(
            TaskRule(
                tenant_id=tenant,
                name="Reopened twice",
                trigger="ticket.status_changed",
                conditions=[{"field": "reopen_count", "op": ">=", "value": 2}],
                template={
                    "type": "call_back",
                    "title": "Call {{ contact.name }} about ticket {{ ticket_id }}",
                    "due_in_hours": 2,
                    "suggested_action": {"kind": "call", "label": "Ask what is still wrong"},
                },
                assignee={"rule": "team", "team_id": team.id},
            )
        )
        await create_task(
            session,
            tenant,
            {
                "title": "Overdue paperwork",
                "due_at": utcnow() - timedelta(hours=1),
                "assignee_id": agent.user_id,
            },
        )
        ticket = await open_ticket(session, tenant_id=tenant, subject="Still broken", contact_id=contact.id)
        # The ticket service's event, as it will emit it when a ticket is reopened a second time.
        await emit(
            session,
            tenant,
            (
                "ticket.status_changed",
                {
                    "ticket_id": ticket.id, "contact_id": contact.id, "conversation_id": None,
                    "team_id": team.id,
                    "assignee_id": None, "from": "solved", "to": "open", "reopen_count": 2,
                },
            ),
        )  # fmt: skip

    async def rule_task() -> Task | None:
        async with db.sessionmaker() as session:
            return await session.scalar(select(Task).where(Task.rule_id.is_not(None)))

    await eventually(rule_task)
    created = await rule_task()
    assert created is not None and created.assignee_id == agent.user_id

    page = await browsing.signed_in(parley_server, agent, path="/tasks")
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav.get_by_role("link", name="My tasks")).to_contain_text("2")
    rows = page.locator("tr.task-row")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_have_class("task-row overdue")  # soonest due first: the overdue one
    await expect(rows.nth(0)).to_contain_text("Overdue")
    mine = page.locator(f"#task-{created.id}")
    await expect(mine.locator(".task-title")).to_have_text(
        f"Call Ann <b>Customer</b> about ticket {ticket.id}"
    )
    await expect(mine).to_contain_text("Ask what is still wrong")
    await expect(mine.get_by_role("link", name=f"Ticket #{ticket.number}")).to_have_attribute(
        "href", f"/tickets/{ticket.id}"
    )
    await screenshot(page, "my-tasks")

    await mine.get_by_role("button", name="Complete").click()
    await expect(page.locator(f"#task-{created.id}")).to_have_count(0)
    await expect(rows).to_have_count(1)
    await expect(nav.get_by_role("link", name="My tasks")).to_contain_text("1")
    async with db.sessionmaker() as session:
        done = await session.get(Task, created.id)
        assert done is not None and done.status == "done" and done.completed_at is not None

    # The small form adds a task for oneself.
    await page.get_by_label("Title").fill("Send the renewal quote")
    await page.get_by_label("Priority").select_option("high")
    await page.get_by_role("button", name="Add task").click()
    await expect(rows).to_have_count(2)
    await expect(page.locator("tr.task-row", has_text="Send the renewal quote")).to_contain_text("high")
    assert not browsing.watch.problems, browsing.watch.problems


async def test_completing_needs_the_forms_csrf_token(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", role=Role.AGENT)
    async with db.transaction() as session:
        task = await create_task(session, agent.tenant_id, {"title": "Mine", "assignee_id": agent.user_id})
        assert task is not None
    page = await browsing.signed_in(parley_server, agent, path="/tasks")
    response = await page.request.post(
        f"{parley_server.url}/tasks/{task.id}/complete", form={"csrf_token": "forged"}
    )
    assert response.status == 403
    async with db.sessionmaker() as session:
        assert (await session.get(Task, task.id)).status == "open"  # type: ignore[union-attr]
