"""The admins' privacy screens through the aiohttp client, on both databases: audit log and retention."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from sqlalchemy import select

from parley.audit import AuditEntry
from parley.db import Database
from parley.models import Role
from parley.settings import Settings
from tests.ui.adminui_support import ClientFactory, Person, UiClient, make_ui_client


@pytest_asyncio.fixture
async def ui(aiohttp_client: ClientFactory, db: Database, settings: Settings) -> AsyncIterator[UiClient]:
    yield await make_ui_client(aiohttp_client, db, settings)


async def test_an_admin_sets_retention_and_reads_it_in_the_audit_log(ui: UiClient, db: Database) -> None:
    admin: Person = await ui.person(Role.ADMIN)
    page = await ui.get(admin, "/admin/privacy")
    assert page.status == 200
    assert "No policy: conversations are kept for ever." in page.texts()
    assert 'data-api="PUT /api/v1/retention"' in page.text

    # What the page's form sends (admin.js): the session cookie and CSRF header.
    body = {"policies": [{"inbox_id": None, "resolved_after_days": 90}]}
    status, answer = await ui.api(admin, "PUT", "/retention", body)
    assert status == 200, answer
    page = await ui.get(admin, "/admin/privacy")
    assert "Every other inbox" in page.texts() and "90 days" in page.texts()
    async with db.sessionmaker() as session:
        (entry,) = (await session.execute(select(AuditEntry))).scalars()
    assert (entry.action, entry.actor_type, entry.actor_id) == ("retention.changed", "user", admin.user_id)

    audit = await ui.get(admin, "/admin/audit")
    assert audit.status == 200
    assert f'data-audit="{entry.id}"' in audit.text and "retention.changed" in audit.texts()
    filtered = await ui.get(admin, "/admin/audit?action=consent.changed")
    assert f'data-audit="{entry.id}"' not in filtered.text and "matches these filters" in filtered.texts()
    invalid = await ui.get(admin, "/admin/audit?object_id=abc")
    assert invalid.status == 200 and "not valid" in invalid.texts()

    # Text someone typed (a consent source) is shown escaped, never as markup.
    status, contact = await ui.api(admin, "POST", "/contacts", {"name": "Ann"})
    assert status == 201
    consent = {"channel": "email", "purpose": "marketing", "granted": False, "source": "<b>form</b>"}
    assert (await ui.api(admin, "PUT", f"/contacts/{contact['id']}/consent", consent))[0] == 200
    audit = await ui.get(admin, "/admin/audit?action=consent.changed")
    assert "<b>form</b>" not in audit.text and "&lt;b&gt;form&lt;/b&gt;" in audit.text


async def test_only_admins_open_the_privacy_screens_and_only_their_tenants_entries(ui: UiClient) -> None:
    admin = await ui.person(Role.ADMIN)
    assert (await ui.api(admin, "PUT", "/retention", {"policies": []}))[0] == 200
    for role in (Role.SUPERVISOR, Role.AGENT, Role.MARKETER):
        who = await ui.person(role)
        for path in ("/admin/audit", "/admin/privacy"):
            assert (await ui.get(who, path)).status == 403, (role, path)
    other = await ui.person(Role.ADMIN, tenant="globex")
    page = await ui.get(other, "/admin/audit")
    assert page.status == 200 and "retention.changed" not in page.texts()
