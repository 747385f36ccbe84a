"""RFC 8058 end to end on both databases: an agent's email carries List-Unsubscribe, and its one-click
POST (what a mail client sends) withdraws consent, so the next reply is not sent."""

from __future__ import annotations

import re

import aiohttp
import pytest
from sqlalchemy import select

from crm_core.models import Consent
from inbox.models import Conversation
from tests.conftest import eventually, message_row
from tests.test_email_end_to_end import Mail, customer_mail, mail

__all__ = ["mail"]

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


async def test_the_one_click_url_in_an_agents_email_unsubscribes_and_stops_the_next_reply(mail: Mail) -> None:
    await mail.send(customer_mail())
    await eventually(lambda: mail.count(Conversation))
    (conversation,) = await mail.rows(Conversation)
    await mail.reply(conversation.id, "We are on it.")
    (sent,) = await mail.sent(1)
    message = sent.message

    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    links = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
    assert len(links) == 2 and links[1] == "mailto:support@parley.test?subject=unsubscribe"
    url = links[0]
    base = str(mail.client.make_url("/")).rstrip("/")
    assert url.startswith(f"{base}/u/")

    # What a mail client does with the header: POST the body to the URL, no cookies, no login.
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url,
            data="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as response,
    ):
        assert response.status == 200
    (consent,) = await mail.rows(Consent)
    assert (consent.contact_id, consent.channel, consent.purpose, consent.granted) == (
        conversation.contact_id,
        "email",
        "transactional",
        False,
    )

    blocked = await mail.reply(conversation.id, "One more thing.")

    async def failed() -> bool:
        return (await message_row(mail.db, blocked)).status == "failed"

    await eventually(failed)
    assert (await message_row(mail.db, blocked)).error_code == "opted_out"
    assert len(mail.smarthost.received) == 1
    async with mail.db.sessionmaker() as session:
        assert (await session.execute(select(Consent.source))).scalar_one() == "one-click-unsubscribe"
