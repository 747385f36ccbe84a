"""The contact panel's Timeline section through the aiohttp client, on both databases: it loads with
the panel, pages with "Show older", filters, keeps customer text as text, and stays in its tenant."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from html import unescape

import pytest_asyncio
from sqlalchemy import func, select

from crm_core.timeline import KINDS
from gateway.keys import NOTIFIER
from gateway.ui.timeline_views import describe
from inbox.timeline_feed import TimelineItem
from parley.db import Database
from parley.models import OutboxEvent, Role
from parley.outbox import emit
from parley.settings import Settings
from tests.conftest import eventually
from tests.ui.adminui_support import ClientFactory, UiClient, make_ui_client

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(1)>"


async def settle(ui: UiClient) -> None:
    ui.client.app[NOTIFIER].notify()

    async def idle() -> bool:
        async with ui.db.sessionmaker() as session:
            stmt = select(func.count()).select_from(OutboxEvent).where(OutboxEvent.completed_at.is_(None))
            return int((await session.execute(stmt)).scalar_one()) == 0

    await eventually(idle, timeout=30)


@pytest_asyncio.fixture
async def ui(aiohttp_client: ClientFactory, db: Database, settings: Settings) -> AsyncIterator[UiClient]:
    client = await make_ui_client(aiohttp_client, db, settings)
    yield client
    await settle(client)


def items(html: str) -> list[str]:
    return [
        unescape(re.sub(r"<[^>]+>", " ", m))
        for m in re.findall(r'<li class="timeline-item.*?</li>', html, re.S)
    ]


async def test_the_timeline_section_pages_filters_and_escapes(ui: UiClient) -> None:
    admin = await ui.person(Role.ADMIN)
    status, contact = await ui.api(admin, "POST", "/contacts", {"name": "Ann", "phone": "+14155550100"})
    assert status == 201, contact
    async with ui.db.transaction() as session:
        await emit(
            session,
            admin.tenant_id,
            *[
                (
                    "ticket.created",
                    {"ticket_id": n, "contact_id": contact["id"], "subject": f"{HOSTILE} #{n}"},
                )
                for n in range(25)
            ],
        )
    await settle(ui)

    panel = await ui.get(admin, f"/contacts/{contact['id']}")
    assert panel.status == 200
    assert f'hx-get="/contacts/{contact["id"]}/timeline"' in panel.text

    first = await ui.get(admin, f"/contacts/{contact['id']}/timeline", htmx=True)
    assert first.status == 200
    assert "<script>alert" not in first.text and "onerror=alert(1)>" not in first.text
    assert "&lt;script&gt;" in first.text
    shown = items(first.text)
    assert len(shown) == 20
    assert all("Ticket #" in line and "created" in line for line in shown)
    more = re.search(r'hx-get="([^"]+before=[^"]+)"', first.text)
    assert more is not None
    rest = await ui.get(admin, unescape(more.group(1)), htmx=True)
    older = items(rest.text)
    assert len(older) == 5 and "Show older" not in rest.text
    assert sorted(int(line.split("#")[1].split()[0]) for line in shown + older) == list(range(25))

    deals_only = await ui.get(admin, f"/contacts/{contact['id']}/timeline?kind=deal", htmx=True)
    assert items(deals_only.text) == [] and "Nothing yet." in deals_only.text
    bad = await ui.get(admin, f"/contacts/{contact['id']}/timeline?before=garbage", htmx=True)
    assert bad.status == 400

    stranger = await ui.person(Role.ADMIN, tenant="globex")
    assert (await ui.get(stranger, f"/contacts/{contact['id']}/timeline", htmx=True)).status == 404


def test_every_kind_has_its_own_line() -> None:
    """No kind falls through to the bare kind name; money is in the deal's currency."""
    data = {"title": "Renewal", "amount_minor": 125000, "currency": "EUR", "to_stage": "Won", "rating": 5}
    titles = {}
    for kind in KINDS:
        title, _ = describe(TimelineItem(kind, datetime.now(UTC), 0, 1, 1, data, 2, 3, 4, 5, 6))
        assert title and title != kind, kind
        titles[kind] = title
    assert len(set(titles.values())) == len(KINDS)
    assert describe(TimelineItem("deal.won", datetime.now(UTC), 0, 1, 1, data))[1] == "€1,250.00 · ? → Won"
