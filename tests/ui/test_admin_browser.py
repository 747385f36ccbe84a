"""The admin screens in a real browser against `parley serve`: inboxes, users and roles, teams."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect
from sqlalchemy import select

from inbox.models import Inbox
from parley.db import Database
from parley.models import Role, User
from routing.models import TeamMember
from tests.ui.conftest import Browsing, ParleyServer, make_agent, screenshot

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def test_an_admin_creates_an_sms_inbox_and_gets_the_webhook_url(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    admin = await make_agent(db, "acme", role=Role.ADMIN, name="Ada Admin")
    page = await browsing.signed_in(parley_server, admin, path="/account")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
    await expect(page).to_have_url(f"{parley_server.url}/admin/inboxes")
    await page.get_by_role("link", name="New inbox").click()
    await expect(page.get_by_label("Channel")).to_have_value("twilio_sms")

    await page.get_by_label("Name", exact=True).fill("Support line")
    await page.get_by_label("Account SID").fill("not-a-sid")
    await page.get_by_label("Phone number (E.164)").fill("+15017122661")
    await page.get_by_label("Auth token").fill("the-twilio-auth-token")
    await page.get_by_role("button", name="Create inbox").click()
    # The channel's own check refuses it, and says why, on the form.
    await expect(page.get_by_role("alert")).to_contain_text("Invalid twilio_sms configuration")
    async with db.sessionmaker() as session:
        assert (await session.execute(select(Inbox))).first() is None

    await page.get_by_label("Account SID").fill("AC" + "a" * 32)
    await page.get_by_role("button", name="Create inbox").click()
    await expect(page).to_have_url(re.compile(r"/admin/inboxes/\d+\?created=1$"))
    async with db.sessionmaker() as session:
        inbox = (await session.execute(select(Inbox))).scalar_one()
    webhook = f"{parley_server.url}/webhooks/{inbox.id}"
    await expect(
        page.get_by_role("heading", name="Inbox created: give the provider these URLs")
    ).to_be_visible()
    await expect(page.locator('code[data-url="Webhook URL"]')).to_have_text(webhook)
    await expect(page.locator('code[data-url="Status callback URL"]')).to_have_text(f"{webhook}/status")
    # The secret is never shown again: the field is empty and only says it is set.
    await expect(page.get_by_label(re.compile("^Auth token"))).to_have_value("")
    assert "the-twilio-auth-token" not in await page.content()
    await screenshot(page, "admin-inbox-created")

    # Renaming keeps the secret (an empty secret field means "keep").
    await page.get_by_label("Name", exact=True).fill("Support line (US)")
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("#admin-flash")).to_have_text("Saved.")
    async with db.sessionmaker() as session:
        renamed = (await session.execute(select(Inbox))).scalar_one()
    assert renamed.name == "Support line (US)"
    assert renamed.secrets_encrypted == inbox.secrets_encrypted

    await page.get_by_role("link", name="Inboxes").first.click()
    await expect(page.get_by_role("cell", name=webhook)).to_be_visible()
    await screenshot(page, "admin-inboxes")

    # Deleting asks first; saying no keeps it, saying yes removes it.
    await page.get_by_role("link", name="Support line (US)").click()
    page.once("dialog", lambda dialog: dialog.dismiss())
    await page.get_by_role("button", name="Delete this inbox…").click()
    await expect(page.get_by_role("button", name="Delete this inbox…")).to_be_enabled()
    async with db.sessionmaker() as session:
        assert (await session.execute(select(Inbox))).first() is not None
    page.once("dialog", lambda dialog: dialog.accept())
    await page.get_by_role("button", name="Delete this inbox…").click()
    await expect(page).to_have_url(f"{parley_server.url}/admin/inboxes")
    await expect(page.get_by_text("No inboxes yet")).to_be_visible()


async def test_an_admin_adds_a_user_changes_roles_and_cannot_remove_the_last_admin(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    admin = await make_agent(db, "acme", role=Role.ADMIN, name="Ada Admin")
    page = await browsing.signed_in(parley_server, admin, path="/admin/users")
    await page.get_by_label("Email", exact=True).fill("new.agent@acme.example.com")
    await page.get_by_label("Name", exact=True).fill("Nia New")
    await page.get_by_label("Initial password").fill("a long first password")
    await page.get_by_role("button", name="Add user").click()
    await expect(page.locator("#admin-flash")).to_have_text("User added.")
    row = page.locator('tr[data-user="new.agent@acme.example.com"]')
    await expect(row.get_by_label("Role of new.agent@acme.example.com")).to_have_value("agent")

    # An address already used is refused on the form.
    await page.get_by_label("Email", exact=True).fill("new.agent@acme.example.com")
    await page.get_by_role("button", name="Add user").click()
    await expect(page.locator(".new-user [role=alert]")).to_contain_text("already belongs to a user")

    await row.get_by_label("Role of new.agent@acme.example.com").select_option("supervisor")
    await row.get_by_role("button", name="Save").click()
    await expect(page.locator("#admin-flash")).to_have_text("Saved new.agent@acme.example.com.")
    async with db.sessionmaker() as session:
        user = (
            await session.execute(select(User).where(User.email == "new.agent@acme.example.com"))
        ).scalar_one()
    assert user.role == Role.SUPERVISOR

    # The only admin demoting themselves is refused, with the reason.
    mine = page.locator(f'tr[data-user="{admin.email}"]')
    await mine.get_by_label(f"Role of {admin.email}").select_option("agent")
    await mine.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("alert").filter(has_text="last active admin")).to_be_visible()
    async with db.sessionmaker() as session:
        me = (await session.execute(select(User).where(User.id == admin.user_id))).scalar_one()
    assert me.role == Role.ADMIN
    await page.reload()
    await screenshot(page, "admin-users")

    # Deactivating signs the user out: unticking "may sign in" and saving.
    row = page.locator('tr[data-user="new.agent@acme.example.com"]')
    await row.get_by_label("new.agent@acme.example.com may sign in").uncheck()
    await row.get_by_role("button", name="Save").click()
    await expect(page.locator("#admin-flash")).to_have_text("Saved new.agent@acme.example.com.")
    await expect(page.locator('tr[data-user="new.agent@acme.example.com"]')).to_have_class("inactive")
    async with db.sessionmaker() as session:
        user = (
            await session.execute(select(User).where(User.email == "new.agent@acme.example.com"))
        ).scalar_one()
    assert user.active is False


async def test_a_supervisor_builds_a_team_and_sets_an_agents_profile(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    supervisor = await make_agent(db, "acme", role=Role.SUPERVISOR, name="Sam Supervisor")
    agent = await make_agent(db, "acme", role=Role.AGENT, name="Ann Agent")
    page = await browsing.signed_in(parley_server, supervisor, path="/admin/inboxes")
    # Supervisors have no users screen.
    await expect(
        page.get_by_role("navigation", name="Admin").get_by_role("link", name="Users")
    ).to_have_count(0)
    await page.get_by_role("link", name="Teams").click()
    await page.get_by_label("Name").fill("Billing")
    await page.get_by_role("button", name="Create team").click()
    await expect(page.get_by_role("heading", name="Billing")).to_be_visible()
    await page.get_by_label("Agent to add to Billing").select_option(label="Ann Agent")
    await page.get_by_role("button", name="Add", exact=True).click()
    await expect(page.get_by_role("button", name="Remove Ann Agent from Billing")).to_be_visible()
    async with db.sessionmaker() as session:
        assert (await session.execute(select(TeamMember.user_id))).scalars().all() == [agent.user_id]
    await screenshot(page, "admin-teams")

    await page.locator(".team").get_by_role("link", name="Ann Agent").click()
    await page.get_by_label("Skills").fill("billing:11")
    await page.get_by_role("button", name="Save profile").click()
    await expect(page.get_by_role("alert")).to_contain_text("less than or equal to 10")
    await page.get_by_label("Skills").fill("billing:5, refunds:2")
    await page.get_by_label("Languages").fill("en, es")
    await page.get_by_label("chat").fill("3")
    await page.get_by_label("Time zone").select_option("Europe/Madrid")
    await page.get_by_role("button", name="Save profile").click()
    await expect(page.locator("#admin-flash")).to_have_text("Profile saved.")
    await expect(page.get_by_label("Skills")).to_have_value("billing:5, refunds:2")
    await expect(page.get_by_label("chat")).to_have_value("3")


async def test_an_agent_has_no_admin(db: Database, parley_server: ParleyServer, browsing: Browsing) -> None:
    agent = await make_agent(db, "acme", role=Role.AGENT)
    page = await browsing.signed_in(parley_server, agent, path="/account")
    await expect(page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin")).to_have_count(
        0
    )
    response = await page.goto(f"{parley_server.url}/admin/inboxes")
    assert response is not None and response.status == 403
    await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
