"""Consent per contact, channel and purpose: recorded from keywords, forms and the API."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.models import Consent
from parley.audit import Actor, audit
from parley.db import utcnow
from parley.outbox import emit

# A carrier-level STOP blocks every message on the channel, marketing or not.
ALL_PURPOSES = "all"


async def record_consent(
    session: AsyncSession,
    *,
    tenant_id: int,
    contact_id: int,
    channel: str,
    granted: bool,
    source: str,
    purpose: str = ALL_PURPOSES,
) -> bool:
    """Store the contact's latest decision; return True if it changed anything."""
    row = (
        await session.execute(
            select(Consent).where(
                Consent.contact_id == contact_id, Consent.channel == channel, Consent.purpose == purpose
            )
        )
    ).scalar_one_or_none()
    if row is None:
        session.add(
            Consent(
                tenant_id=tenant_id,
                contact_id=contact_id,
                channel=channel,
                purpose=purpose,
                granted=granted,
                source=source,
            )
        )
        await session.flush()
        return True
    if row.granted == granted:
        return False
    row.granted, row.source, row.changed_at = granted, source, utcnow()
    await session.flush()
    return True


async def has_opted_out(session: AsyncSession, *, contact_id: int, channel: str) -> bool:
    """True if the contact withdrew consent for every message on this channel."""
    granted = (
        await session.execute(
            select(Consent.granted).where(
                Consent.contact_id == contact_id,
                Consent.channel == channel,
                Consent.purpose == ALL_PURPOSES,
            )
        )
    ).scalar_one_or_none()
    return granted is False


# What a decision covers: "all" messages on a channel, or only one kind of them.
PURPOSES = ("all", "marketing", "transactional")
CONSENT_CHANGED_TOPIC = "contact.consent_changed"


async def change_consent(
    session: AsyncSession,
    *,
    tenant_id: int,
    contact_id: int,
    channel: str,
    purpose: str,
    granted: bool,
    source: str,
    actor: Actor,
) -> bool:
    """Record a decision, announce it (`contact.consent_changed`), audit it; True if anything changed."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}: one of {', '.join(PURPOSES)}")
    changed = await record_consent(
        session,
        tenant_id=tenant_id,
        contact_id=contact_id,
        channel=channel,
        granted=granted,
        source=source,
        purpose=purpose,
    )
    if changed:
        await emit(
            session, tenant_id, (CONSENT_CHANGED_TOPIC, consent_event(contact_id, channel, purpose, granted))
        )
        await audit_consent(
            session,
            tenant_id=tenant_id,
            contact_id=contact_id,
            channel=channel,
            purpose=purpose,
            granted=granted,
            source=source,
            actor=actor,
        )
    return changed


def consent_event(contact_id: int, channel: str, purpose: str, granted: bool) -> dict[str, object]:
    """The payload of `contact.consent_changed`."""
    return {"contact_id": contact_id, "channel": channel, "purpose": purpose, "granted": granted}


async def audit_consent(
    session: AsyncSession,
    *,
    tenant_id: int,
    contact_id: int,
    channel: str,
    purpose: str,
    granted: bool,
    source: str,
    actor: Actor,
) -> None:
    """The audit entry of a consent decision: also the contact's consent history."""
    await audit(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="consent.changed",
        object_type="contact",
        object_id=contact_id,
        details={"channel": channel, "purpose": purpose, "granted": granted, "source": source},
    )


async def withdrawn(session: AsyncSession, *, contact_id: int, channel: str, purpose: str) -> bool:
    """True if the contact withdrew consent for messages of `purpose` (or for all) on this channel."""
    rows = await session.execute(
        select(Consent.granted).where(
            Consent.contact_id == contact_id,
            Consent.channel == channel,
            Consent.purpose.in_({ALL_PURPOSES, purpose}),
        )
    )
    return any(granted is False for granted in rows.scalars())
