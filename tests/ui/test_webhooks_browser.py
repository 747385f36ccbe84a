"""The Webhooks admin screen in a real browser against `parley serve`, delivering to a local receiver."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import expect

from parley.db import Database
from parley.models import Role
from tests.conftest import eventually, make_twilio_inbox
from tests.fakes.twilio_api import FakeTwilioApi, load_fixture, post_signed
from tests.ui.conftest import Browsing, ParleyServer, make_agent, screenshot
from tests.webhooks.conftest import Receiver, receiver
from tests.webhooks.test_outbound_webhooks import receiver_verifies

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

__all__ = ["receiver"]  # the local webhook receiver fixture


@pytest_asyncio.fixture
async def server_allowing_loopback(
    db: Database, database_url: str, tmp_path: Path
) -> AsyncIterator[ParleyServer]:
    """`parley serve` allowed to deliver webhooks to a receiver on this machine."""
    server = ParleyServer(database_url, tmp_path, env={"PARLEY_WEBHOOKS_ALLOW_PRIVATE": "1"})
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_an_admin_subscribes_and_sees_an_inbound_sms_in_the_delivery_log(
    db: Database,
    server_allowing_loopback: ParleyServer,
    browsing: Browsing,
    receiver: Receiver,
    fake_twilio: FakeTwilioApi,
) -> None:
    server = server_allowing_loopback
    admin = await make_agent(db, "acme", role=Role.ADMIN, name="Ada Admin")
    inbox_id = await make_twilio_inbox(
        db, admin.tenant_id, fake_twilio.base_url, fake_twilio.account_sid, fake_twilio.auth_token
    )
    page = await browsing.signed_in(server, admin, path="/admin/webhooks")
    await expect(page.get_by_role("link", name="Webhooks")).to_have_attribute("aria-current", "page")
    await page.get_by_label("URL").fill(receiver.url)
    await page.get_by_label("Description").fill("CRM sync")
    await page.get_by_role("checkbox", name=re.compile(r"^message\.received")).check()
    await page.get_by_role("button", name="Add webhook").click()
    secret_box = page.locator("#webhook-secret-value")
    await expect(secret_box).to_have_text(re.compile(r"^whsec_"))
    secret = await secret_box.text_content()
    assert secret is not None
    await screenshot(page, "admin-webhook-secret")
    await page.get_by_role("link", name="Open the webhook").click()
    await expect(page).to_have_url(re.compile(r"/admin/webhooks/\d+$"))
    assert secret not in await page.content()  # shown once only
    await expect(page.get_by_text("No deliveries yet.")).to_be_visible()

    params = [(k, "Is my parcel on its way?" if k == "Body" else v) for k, v in load_fixture("inbound__sms")]
    async with aiohttp.ClientSession() as session:
        posted = await post_signed(
            session, f"{server.url}/webhooks/{inbox_id}", params, fake_twilio.auth_token
        )
    assert posted.status == 200
    await eventually(lambda: len(receiver.received) == 1, timeout=30)
    got = receiver.received[0]
    assert receiver_verifies(secret, got.body, got.headers["Parley-Signature"])
    assert got.json["data"]["message"]["body"] == "Is my parcel on its way?"

    await page.reload()
    row = page.locator("tr[data-delivery]")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("message.received")
    await expect(row).to_contain_text("succeeded")
    await expect(row).to_contain_text("HTTP 200")
    await screenshot(page, "admin-webhook-deliveries")

    # Disabling is one click; the page says so.
    await page.get_by_role("button", name="Disable").click()
    await expect(page.locator("#webhook-state")).to_contain_text("Disabled")
