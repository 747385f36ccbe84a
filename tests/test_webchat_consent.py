"""The web chat widget's consent frame on both databases: a visitor declines marketing, audited."""

from __future__ import annotations

from sqlalchemy import select

from crm_core.models import ChannelIdentity, Consent
from parley.audit import AuditEntry
from tests.test_webchat_end_to_end import Gateway, gateway

__all__ = ["gateway"]


async def test_a_visitor_declines_marketing_in_the_widget(gateway: Gateway) -> None:
    chat, _, _ = await gateway.connect()
    await chat.say("Hello")
    await chat.send(type="consent", purpose="marketing", granted=False)
    saved = await chat.expect("consent_saved")
    assert (saved["purpose"], saved["granted"]) == ("marketing", False)

    async with gateway.db.sessionmaker() as session:
        contact_id = (await session.execute(select(ChannelIdentity.contact_id))).scalar_one()
        consents = (await session.execute(select(Consent).order_by(Consent.channel))).scalars().all()
        entries = (await session.execute(select(AuditEntry).order_by(AuditEntry.id))).scalars().all()
    assert [(c.contact_id, c.channel, c.purpose, c.granted, c.source) for c in consents] == [
        (contact_id, "email", "marketing", False, "webchat-widget"),
        (contact_id, "webchat", "marketing", False, "webchat-widget"),
    ]
    assert [(e.action, e.actor_type, e.actor_id, e.details["channel"]) for e in entries] == [
        ("consent.changed", "contact", contact_id, "webchat"),
        ("consent.changed", "contact", contact_id, "email"),
    ]
    assert "contact.consent_changed" in await gateway.topics()

    # Only marketing may be chosen here, and only as a yes or no.
    await chat.send(type="consent", purpose="all", granted=False)
    assert (await chat.expect("error"))["code"] == "malformed_frame"
    await chat.send(type="consent", purpose="marketing", granted="no")
    assert (await chat.expect("error"))["code"] == "malformed_frame"
    await chat.send(type="consent", purpose="marketing", granted=True)
    await chat.expect("consent_saved")
    async with gateway.db.sessionmaker() as session:
        granted = (await session.execute(select(Consent.granted))).scalars().all()
    assert granted == [True, True]
    await chat.ws.close()
