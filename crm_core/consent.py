"""Consent per contact, channel and purpose: recorded from keywords, forms and the API."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.models import Consent
from parley.db import utcnow

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
