"""Rows the composer's tests start from: inboxes on the fake Twilio, contacts with conversations."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from crm_core.models import ChannelIdentity, Contact
from inbox.models import CannedResponse, Conversation, Inbox
from parley.crypto import SecretBox
from parley.db import Database, utcnow
from parley.models import User
from parley.sessions import csrf_token, digest, start_session
from tests.conftest import SECRET_KEY
from tests.fakes.twilio_api import FakeTwilioApi

CONTENT_SID = "HX" + "0123456789abcdef" * 2
TEMPLATE_BODY = "Hi {{first_name}}, your order {{2}} is ready. Reply to this message to talk to us."
WHATSAPP_TEMPLATES = [
    {"name": CONTENT_SID, "language": "en", "variables": ["first_name", "2"], "body": TEMPLATE_BODY}
]


async def make_inbox(
    db: Database,
    tenant_id: int,
    channel: str,
    fake: FakeTwilioApi | None = None,
    *,
    phone_number: str = "+15017122661",
    templates: list[dict[str, Any]] | None = None,
) -> int:
    """An inbox of `channel`; Twilio channels point at the fake Twilio."""
    settings: dict[str, Any] = {}
    secrets: dict[str, str] = {}
    if fake is not None:
        settings = {
            "account_sid": fake.account_sid,
            "phone_number": phone_number,
            "api_base_url": fake.base_url,
        }
        secrets = {"auth_token": fake.auth_token}
    if templates is not None:
        settings["templates"] = templates
    async with db.transaction() as session:
        inbox = Inbox(
            tenant_id=tenant_id,
            name=f"{channel} line",
            channel=channel,
            settings=settings,
            secrets_encrypted=SecretBox(SECRET_KEY).seal(secrets),
        )
        session.add(inbox)
        await session.flush()
        return inbox.id


async def make_conversation(
    db: Database,
    tenant_id: int,
    inbox_id: int,
    *,
    name: str | None = "Ann Lee",
    phone: str = "+14155550100",
    kind: str = "phone",
    address: str | None = None,
    last_inbound_ago: timedelta | None = timedelta(minutes=5),
) -> int:
    """A contact who wrote `last_inbound_ago` (None: never) and their open conversation in the inbox."""
    async with db.transaction() as session:
        contact = Contact(tenant_id=tenant_id, name=name, phone=phone)
        session.add(contact)
        await session.flush()
        identity = ChannelIdentity(
            tenant_id=tenant_id, contact_id=contact.id, kind=kind, address=address or phone
        )
        session.add(identity)
        await session.flush()
        now = utcnow()
        conversation = Conversation(
            tenant_id=tenant_id,
            inbox_id=inbox_id,
            contact_id=contact.id,
            identity_id=identity.id,
            status="open",
            last_message_at=now,
            last_inbound_at=None if last_inbound_ago is None else now - last_inbound_ago,
        )
        session.add(conversation)
        await session.flush()
        return conversation.id


async def make_canned(db: Database, tenant_id: int, short_code: str, title: str, content: str) -> int:
    async with db.transaction() as session:
        canned = CannedResponse(tenant_id=tenant_id, short_code=short_code, title=title, content=content)
        session.add(canned)
        await session.flush()
        return canned.id


@dataclass(frozen=True, slots=True)
class BrowserSession:
    """A signed-in web session: the cookie's token and the CSRF token its pages carry."""

    token: str
    csrf: str

    @property
    def cookies(self) -> dict[str, str]:
        return {"parley_session": self.token}


async def web_session(db: Database, user_id: int) -> BrowserSession:
    """Sign `user_id` in as the sign-in form would (a session row), without the form."""
    async with db.transaction() as session:
        user = (await session.execute(select(User).where(User.id == user_id))).scalar_one()
        token = await start_session(session, user)
    return BrowserSession(token, csrf_token(SECRET_KEY, digest(token)))
