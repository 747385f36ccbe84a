"""The admin screens through the aiohttp client, on both databases: who sees what, tenancy, and that
each page shows what the API holds (webhook URLs, never secrets)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from channels.registry import CHANNELS
from gateway.ui.admin_views import CHANNEL_FORMS
from parley.db import Database
from parley.models import Role
from parley.settings import Settings
from tests.ui.adminui_support import ClientFactory, Person, UiClient, make_ui_client

SECRET = "s3cret-auth-token-value"

# Values for every field an inbox form marks required, per channel: the form must be enough to create one.
REQUIRED_VALUES = {
    "account_sid": "AC" + "0" * 32,
    "phone_number_id": "1234567890",
    "addresses": ["support@acme.example"],
    "allowed_origins": ["https://shop.example.com"],
    "auth_token": SECRET,
    "access_token": SECRET,
    "app_secret": SECRET,
    "verify_token": "verify-me",
    "bot_token": "xoxb-123-456-abc",
    "webhook_secret": "a-webhook-secret",
    "signing_secret": "0123456789abcdef0123456789abcdef",
}
CHANNEL_VALUES = {("telegram", "bot_token"): "123456:AAH-secret-from-botfather"}
# Either-or fields the form explains in words ("or a messaging service SID below").
EITHER = {"twilio_sms": {"phone_number": "+15017122661"}, "twilio_whatsapp": {"phone_number": "+15017122661"}}


def _value(channel: str, name: str) -> object:
    return CHANNEL_VALUES.get((channel, name), REQUIRED_VALUES[name])


@dataclass
class Admin:
    ui: UiClient
    admin: Person


@pytest_asyncio.fixture
async def setup(aiohttp_client: ClientFactory, db: Database, settings: Settings) -> AsyncIterator[Admin]:
    ui = await make_ui_client(aiohttp_client, db, settings)
    yield Admin(ui, await ui.person(Role.ADMIN))


def _admin_link(html: str) -> bool:
    return re.search(r'<a href="/admin"', html) is not None


@pytest.mark.parametrize(
    ("role", "home", "tabs"),
    [
        (
            Role.ADMIN,
            "/admin/inboxes",
            {
                "/admin/inboxes",
                "/admin/users",
                "/admin/teams",
                "/admin/webhooks",
                "/admin/audit",
                "/admin/privacy",
            },
        ),
        (Role.SUPERVISOR, "/admin/inboxes", {"/admin/inboxes", "/admin/teams"}),
        (Role.AGENT, None, set()),
        (Role.MARKETER, None, set()),
        (Role.BOT_DESIGNER, None, set()),
    ],
)
async def test_each_role_sees_only_the_admin_screens_it_may(
    setup: Admin, role: Role, home: str | None, tabs: set[str]
) -> None:
    who = setup.admin if role is Role.ADMIN else await setup.ui.person(role)
    landing = await setup.ui.get(who, "/admin")
    contacts = await setup.ui.get(who, "/account")
    assert _admin_link(contacts.text) == bool(tabs)
    if home is None:
        assert landing.status == 403
        assert "Not allowed" in landing.text
    else:
        assert landing.status == 303
        assert landing.headers["Location"] == home
    for path in ("/admin/inboxes", "/admin/inboxes/new", "/admin/users", "/admin/teams"):
        page = await setup.ui.get(who, path)
        allowed = path.split("/")[2] in {t.split("/")[2] for t in tabs}
        assert page.status == (200 if allowed else 403), (role, path, page.status)
        if allowed:
            shown = set(
                re.findall(
                    r'<a href="(/admin/\w+)"', page.text.split('class="admin-tabs"')[1].split("</nav>")[0]
                )
            )
            assert shown == tabs


@pytest.mark.parametrize(
    ("role", "home"),
    [
        (Role.ADMIN, "/inbox"),
        (Role.AGENT, "/inbox"),
        (Role.MARKETER, "/contacts"),
        (Role.BOT_DESIGNER, "/contacts"),
    ],
)
async def test_home_leads_each_role_to_a_page_it_may_open(setup: Admin, role: Role, home: str) -> None:
    who = setup.admin if role is Role.ADMIN else await setup.ui.person(role)
    landing = await setup.ui.get(who, "/")
    assert (landing.status, landing.headers["Location"]) == (303, home)
    assert (await setup.ui.get(who, home)).status == 200
    anonymous = await setup.ui.client.get("/", allow_redirects=False)
    assert anonymous.status in (302, 303) and anonymous.headers["Location"].startswith("/login")


async def test_inbox_pages_show_the_webhook_urls_and_never_the_secrets(setup: Admin) -> None:
    ui, admin = setup.ui, setup.admin
    status, inbox = await ui.api(
        admin,
        "POST",
        "/inboxes",
        {
            "name": "Support <line>",
            "channel": "twilio_sms",
            "settings": {"account_sid": "AC" + "1" * 32, "phone_number": "+15017122661"},
            "secrets": {"auth_token": SECRET},
        },
    )
    assert status == 201, inbox
    listing = await ui.get(admin, "/admin/inboxes")
    assert listing.status == 200
    assert "Support &lt;line&gt;" in listing.text
    assert inbox["webhook_url"] in listing.text

    page = await ui.get(admin, f"/admin/inboxes/{inbox['id']}?created=1")
    assert page.status == 200
    assert "Inbox created: give the provider these URLs" in page.text
    assert inbox["webhook_url"] in page.text
    assert inbox["status_callback_url"] in page.text
    assert SECRET not in page.text
    assert 'name="secrets.auth_token"' in page.text and 'value=""' in page.text
    assert "AC" + "1" * 32 in page.text  # settings are shown again, secrets are not
    assert f'data-api="DELETE /api/v1/inboxes/{inbox["id"]}"' in page.text
    assert "data-confirm=" in page.text

    stranger = await ui.person(Role.ADMIN, tenant="globex")
    assert (await ui.get(stranger, f"/admin/inboxes/{inbox['id']}")).status == 404
    assert inbox["webhook_url"] not in (await ui.get(stranger, "/admin/inboxes")).text
    assert (await ui.get(admin, "/admin/inboxes/999999")).status == 404


@pytest.mark.parametrize("channel", sorted(CHANNELS))
async def test_every_channel_form_has_what_the_api_needs_to_create_an_inbox(
    setup: Admin, channel: str
) -> None:
    ui, admin = setup.ui, setup.admin
    page = await ui.get(admin, f"/admin/inboxes/new?channel={channel}")
    assert page.status == 200
    form = CHANNEL_FORMS[channel]
    for f in form.settings:
        assert f'name="settings.{f.name}"' in page.text
    for f in form.secrets:
        assert f'name="secrets.{f.name}"' in page.text
    # Filling in just the required fields (as admin.js sends them) creates the inbox.
    body = {
        "name": f"{channel} inbox",
        "channel": channel,
        "settings": {f.name: _value(channel, f.name) for f in form.settings if f.required}
        | EITHER.get(channel, {}),
        "secrets": {f.name: _value(channel, f.name) for f in form.secrets if f.required},
    }
    status, created = await ui.api(admin, "POST", "/inboxes", body)
    assert status == 201, created
    shown = await ui.get(admin, f"/admin/inboxes/{created['id']}")
    assert created["webhook_url"] in shown.text


async def test_the_users_page_lists_this_tenants_users_with_their_roles(setup: Admin) -> None:
    ui, admin = setup.ui, setup.admin
    agent = await ui.person(Role.AGENT, email="agent.anne@acme.example.com")
    await ui.person(Role.ADMIN, tenant="globex", email="boss@globex.example.com")
    page = await ui.get(admin, "/admin/users")
    assert page.status == 200
    assert "agent.anne@acme.example.com" in page.text
    assert "boss@globex.example.com" not in page.text
    assert f'data-api="PATCH /api/v1/users/{agent.user_id}"' in page.text
    assert 'data-api="POST /api/v1/users"' in page.text
    assert "(you)" in page.text


async def test_teams_and_agent_profiles(setup: Admin) -> None:
    ui, admin = setup.ui, setup.admin
    supervisor = await ui.person(Role.SUPERVISOR)
    agent = await ui.person(Role.AGENT)
    marketer = await ui.person(Role.MARKETER)
    status, team = await ui.api(supervisor, "POST", "/teams", {"name": "Billing <team>"})
    assert status == 201, team
    status, _ = await ui.api(supervisor, "PUT", f"/teams/{team['id']}/members/{agent.user_id}")
    assert status == 200
    status, _ = await ui.api(
        supervisor,
        "PUT",
        f"/agents/{agent.user_id}/profile",
        {"skills": {"billing": 5}, "languages": ["es"], "time_zone": "Europe/Madrid"},
    )
    assert status == 200

    page = await ui.get(supervisor, "/admin/teams")
    assert page.status == 200
    assert "Billing &lt;team&gt;" in page.text
    assert f'href="/admin/agents/{agent.user_id}"' in page.text
    assert f'data-api="DELETE /api/v1/teams/{team["id"]}/members/{agent.user_id}"' in page.text
    assert f'href="/admin/agents/{marketer.user_id}"' not in page.text  # marketers take no conversations

    profile = await ui.get(supervisor, f"/admin/agents/{agent.user_id}")
    assert profile.status == 200
    assert 'value="billing:5"' in profile.text
    assert '<option value="Europe/Madrid" selected>' in profile.text
    assert f'data-api="PUT /api/v1/agents/{agent.user_id}/profile"' in profile.text
    assert "has no routing profile" in (await ui.get(admin, f"/admin/agents/{marketer.user_id}")).text

    stranger = await ui.person(Role.SUPERVISOR, tenant="globex")
    assert (await ui.get(stranger, f"/admin/agents/{agent.user_id}")).status == 404
    assert "Billing" not in (await ui.get(stranger, "/admin/teams")).text
    assert (await ui.get(agent, f"/admin/agents/{agent.user_id}")).status == 403
