"""The deals board and the contact's timeline in a real browser against `parley serve`."""

from __future__ import annotations

import pytest
from playwright.async_api import expect
from sqlalchemy import func, select

from crm_core.deals import DEFAULT_STAGES, open_deal
from crm_core.models import Contact, Deal, Pipeline, PipelineStage, TimelineEntry
from parley.db import Database
from parley.models import Role
from parley.outbox import emit
from tests.conftest import eventually
from tests.ui.conftest import Browsing, ParleyServer, make_agent, screenshot

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def _board(db: Database, tenant_id: int, owner_id: int) -> tuple[dict[str, int], dict[str, int]]:
    """A pipeline with the default stages and three deals in New; returns stage and deal ids by name."""
    async with db.transaction() as session:
        pipeline = Pipeline(tenant_id=tenant_id, name="Sales")
        session.add(pipeline)
        await session.flush()
        stages: dict[str, PipelineStage] = {}
        for position, (name, probability, outcome) in enumerate(DEFAULT_STAGES):
            stages[name] = PipelineStage(
                tenant_id=tenant_id,
                pipeline_id=pipeline.id,
                name=name,
                position=position,
                probability=probability,
                outcome=outcome,
            )
            session.add(stages[name])
        await session.flush()
        deals = {}
        for title, amount in (("Alpha <b>deal</b>", 10000), ("Beta", 20000), ("Gamma", 30000)):
            deal = Deal(
                tenant_id=tenant_id,
                pipeline_id=pipeline.id,
                stage_id=stages["New"].id,
                title=title,
                amount_minor=amount,
                currency="USD",
                owner_id=owner_id,
            )
            await open_deal(session, deal, stages["New"])
            deals[title] = deal.id
        return {name: s.id for name, s in stages.items()}, deals


async def _where(db: Database, deal_id: int) -> tuple[int, int]:
    async with db.sessionmaker() as session:
        row = (await session.execute(select(Deal.stage_id, Deal.position).where(Deal.id == deal_id))).one()
        return row.stage_id, row.position


async def test_dragging_a_card_to_another_stage_persists_and_the_keyboard_can_move_it_too(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", role=Role.AGENT, name="Ada Agent")
    stages, deals = await _board(db, agent.tenant_id, agent.user_id)
    page = await browsing.signed_in(parley_server, agent, path="/deals")
    column = page.locator(f'.board-column[data-stage-id="{stages["New"]}"]')
    await expect(column.locator(".deal-card")).to_have_count(3)
    await expect(column.get_by_role("heading", name="Alpha <b>deal</b>")).to_be_visible()  # text, not markup
    await expect(column.locator(".column-amount")).to_have_text("$600.00")

    # Drag Beta onto Qualified.
    beta = page.locator(f'.deal-card[data-deal-id="{deals["Beta"]}"]')
    qualified = page.locator(f'.cards[data-stage-id="{stages["Qualified"]}"]')
    await beta.drag_to(qualified)
    await expect(qualified.locator(f'[data-deal-id="{deals["Beta"]}"]')).to_be_visible()
    await expect(column.locator(".deal-card")).to_have_count(2)
    await expect(
        page.locator(f'.board-column[data-stage-id="{stages["Qualified"]}"] .column-amount')
    ).to_have_text("$200.00")
    assert await _where(db, deals["Beta"]) == (stages["Qualified"], 0)
    await page.reload()
    await expect(qualified.locator(f'[data-deal-id="{deals["Beta"]}"]')).to_be_visible()

    # Drag Gamma above Beta within Qualified: the drop's place is kept.
    gamma = page.locator(f'.deal-card[data-deal-id="{deals["Gamma"]}"]')
    await gamma.drag_to(
        qualified.locator(f'[data-deal-id="{deals["Beta"]}"]'), target_position={"x": 20, "y": 3}
    )
    await expect(qualified.locator(".deal-card").first).to_have_attribute("data-deal-id", str(deals["Gamma"]))
    assert await _where(db, deals["Gamma"]) == (stages["Qualified"], 0)
    assert await _where(db, deals["Beta"]) == (stages["Qualified"], 1)
    await screenshot(page, "deals-board")

    # Without a mouse: choose Proposal in Alpha's stage select and press Move with the keyboard.
    alpha = page.locator(f'.deal-card[data-deal-id="{deals["Alpha <b>deal</b>"]}"]')
    await alpha.get_by_label("Stage of Alpha <b>deal</b>").select_option(label="Proposal")
    await alpha.get_by_role("button", name="Move", exact=True).focus()
    await page.keyboard.press("Enter")
    proposal = page.locator(f'.cards[data-stage-id="{stages["Proposal"]}"]')
    await expect(proposal.locator(f'[data-deal-id="{deals["Alpha <b>deal</b>"]}"]')).to_be_visible()
    # And Beta one place up in Qualified.
    await page.get_by_role("button", name="Move Beta up").focus()
    await page.keyboard.press("Enter")
    await expect(qualified.locator(".deal-card").first).to_have_attribute("data-deal-id", str(deals["Beta"]))
    await page.reload()
    await expect(proposal.locator(f'[data-deal-id="{deals["Alpha <b>deal</b>"]}"]')).to_be_visible()
    await expect(qualified.locator(".deal-card").first).to_have_attribute("data-deal-id", str(deals["Beta"]))
    assert await _where(db, deals["Alpha <b>deal</b>"]) == (stages["Proposal"], 0)
    await expect(page.locator("#forecast-owner")).to_contain_text("Ada Agent")
    assert browsing.watch.problems == []


async def test_the_contact_timeline_loads_and_shows_older_entries(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    agent = await make_agent(db, "acme", role=Role.AGENT, name="Ada Agent")
    async with db.transaction() as session:
        contact = Contact(tenant_id=agent.tenant_id, name="Ann", attributes={})
        session.add(contact)
        await session.flush()
        contact_id = contact.id
        await emit(
            session,
            agent.tenant_id,
            *[
                (
                    "ticket.created",
                    {"ticket_id": n, "contact_id": contact_id, "subject": f"<i>Broken</i> {n}"},
                )
                for n in range(30)
            ],
        )

    async def written() -> bool:  # by the server's dispatcher
        async with db.sessionmaker() as session:
            stmt = select(func.count()).select_from(TimelineEntry)
            return int((await session.execute(stmt)).scalar_one()) == 30

    await eventually(written, timeout=30)
    page = await browsing.signed_in(parley_server, agent, path=f"/contacts/{contact_id}")
    timeline = page.locator(f"#cp-timeline-list-{contact_id}")
    await expect(timeline.locator(".timeline-item")).to_have_count(20)
    await expect(timeline.locator(".timeline-detail").first).to_contain_text("<i>Broken</i>")
    await timeline.get_by_role("button", name="Show older").click()
    await expect(timeline.locator(".timeline-item")).to_have_count(30)
    await expect(timeline.get_by_role("button", name="Show older")).to_have_count(0)
    await page.get_by_label("Show").select_option(label="Deals")
    await expect(timeline.locator(".timeline-item")).to_have_count(0)
    await expect(timeline).to_contain_text("Nothing yet.")
    assert browsing.watch.problems == []
