"""The deals board through the aiohttp client, on both databases: columns, cards, totals and the
forecast; the keyboard's move form; owner filter; roles and tenants."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from sqlalchemy import select

from crm_core.models import Deal
from parley.db import Database
from parley.models import Role
from parley.settings import Settings
from tests.ui.adminui_support import ClientFactory, Person, UiClient, make_ui_client
from tests.ui.test_timeline_views import settle

HOSTILE = "<script>alert(1)</script>"


@pytest_asyncio.fixture
async def ui(aiohttp_client: ClientFactory, db: Database, settings: Settings) -> AsyncIterator[UiClient]:
    client = await make_ui_client(aiohttp_client, db, settings)
    yield client
    await settle(client)


async def deal(ui: UiClient, who: Person, **body: Any) -> dict[str, Any]:
    status, answer = await ui.api(who, "POST", "/deals", body)
    assert status == 201, answer
    return dict(answer)


async def column_of(ui: UiClient) -> dict[int, tuple[int, int]]:
    async with ui.db.sessionmaker() as session:
        rows = (await session.execute(select(Deal.id, Deal.stage_id, Deal.position))).all()
    return {d: (s, p) for d, s, p in rows}


async def test_the_board_shows_columns_cards_totals_and_the_forecast(ui: UiClient) -> None:
    admin = await ui.person(Role.ADMIN)
    status, pipeline = await ui.api(admin, "POST", "/pipelines", {"name": "Sales"})
    assert status == 201, pipeline
    stages = {s["name"]: s["id"] for s in pipeline["stages"]}
    status, ann = await ui.api(admin, "POST", "/contacts", {"name": "Ann", "phone": "+14155550100"})
    big = await deal(
        ui,
        admin,
        title=f"Big {HOSTILE}",
        amount_minor=125000,
        currency="EUR",
        contact_id=ann["id"],
        expected_close="2030-03-15",
    )
    small = await deal(
        ui, admin, title="Small", amount_minor=1000, currency="EUR", expected_close="2030-04-01"
    )
    yen = await deal(ui, admin, title="Yen", amount_minor=5000, currency="JPY")
    status, _ = await ui.api(admin, "POST", f"/deals/{small['id']}/move", {"stage_id": stages["Proposal"]})
    assert status == 200

    board = await ui.get(admin, "/deals")
    assert board.status == 200
    assert HOSTILE not in board.text and "Big &lt;script&gt;" in board.text
    text = board.texts()
    for expected in ("€1,250.00", "€10.00", "¥5,000", "Ann", "closes 2030-03-15", "Weighted forecast"):
        assert expected in text, expected
    # New (10%): €1,250 and ¥5,000; Proposal (50%): €10.
    assert "weighted €125.00 + ¥500" in " ".join(text.split())
    assert "weighted €5.00" in " ".join(text.split())
    assert "2030-03" in text and "2030-04" in text  # per month
    assert admin.user_id and 'draggable="true"' in board.text

    # The keyboard's move: a stage from the select, then one place up within the column.
    moved = await ui.post(
        admin, f"/deals/{big['id']}/move", {"stage_id": str(stages["Proposal"]), "step": "stage"}, htmx=True
    )
    assert moved.status == 200 and 'id="board"' in moved.text
    positions = await column_of(ui)
    assert positions[big["id"]] == (stages["Proposal"], 1) and positions[small["id"]] == (
        stages["Proposal"],
        0,
    )
    await ui.post(
        admin, f"/deals/{big['id']}/move", {"stage_id": str(stages["Proposal"]), "step": "up"}, htmx=True
    )
    positions = await column_of(ui)
    assert positions[big["id"]] == (stages["Proposal"], 0) and positions[small["id"]] == (
        stages["Proposal"],
        1,
    )
    plain = await ui.post(
        admin, f"/deals/{yen['id']}/move", {"stage_id": str(stages["Won"]), "pipeline": str(pipeline["id"])}
    )
    assert (plain.status, plain.headers["Location"]) == (303, f"/deals?pipeline={pipeline['id']}")
    assert (await column_of(ui))[yen["id"]] == (stages["Won"], 0)

    # A stage of another pipeline is refused.
    status, other = await ui.api(admin, "POST", "/pipelines", {"name": "Partners"})
    refused = await ui.post(admin, f"/deals/{big['id']}/move", {"stage_id": str(other["stages"][0]["id"])})
    assert refused.status == 422
    # The pipeline switcher: the other board is empty.
    assert "Big &lt;script&gt;" not in (await ui.get(admin, f"/deals?pipeline={other['id']}")).text


async def test_owner_filter_roles_and_tenants(ui: UiClient) -> None:
    admin = await ui.person(Role.ADMIN)
    agent = await ui.person(Role.AGENT)
    marketer = await ui.person(Role.MARKETER)
    designer = await ui.person(Role.BOT_DESIGNER)
    status, pipeline = await ui.api(admin, "POST", "/pipelines", {"name": "Sales"})
    assert status == 201, pipeline
    mine = await deal(ui, agent, title="Agent's deal", amount_minor=100, currency="USD")
    theirs = await deal(ui, admin, title="Admin's deal", amount_minor=100, currency="USD")

    filtered = await ui.get(agent, f"/deals?owner={agent.user_id}")
    assert "Agent&#39;s deal" in filtered.text and "Admin&#39;s deal" not in filtered.text

    seen = await ui.get(marketer, "/deals")
    assert seen.status == 200 and "Admin&#39;s deal" in seen.text
    assert 'draggable="true"' not in seen.text and "deal-move" not in seen.text
    refused = await ui.post(
        marketer, f"/deals/{theirs['id']}/move", {"stage_id": str(pipeline["stages"][1]["id"])}
    )
    assert refused.status == 403
    assert (await ui.get(designer, "/deals")).status == 403

    stranger = await ui.person(Role.ADMIN, tenant="globex")
    assert "Agent&#39;s deal" not in (await ui.get(stranger, "/deals")).text
    moved = await ui.post(
        stranger, f"/deals/{mine['id']}/move", {"stage_id": str(pipeline["stages"][1]["id"])}
    )
    assert moved.status == 404
    assert (await column_of(ui))[mine["id"]][0] == pipeline["stages"][0]["id"]
