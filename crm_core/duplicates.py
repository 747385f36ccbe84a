"""Likely duplicate contacts: one email or phone in another form, or one name at one company."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from crm_core.identities import match_key
from crm_core.models import ChannelIdentity, Contact


@dataclass(frozen=True, slots=True)
class DuplicateSuggestion:
    contact_id: int
    other_id: int
    reasons: tuple[str, ...]


async def fill_match_keys(session: AsyncSession, tenant_id: int, contact_id: int | None = None) -> int:
    """Compute the match key of identities that lack one (the pipeline inserts them bare); how many."""
    stmt = select(ChannelIdentity).where(
        ChannelIdentity.tenant_id == tenant_id,
        ChannelIdentity.match_key.is_(None),
        ChannelIdentity.kind.in_(("phone", "email")),
    )
    if contact_id is not None:
        stmt = stmt.where(ChannelIdentity.contact_id == contact_id)
    filled = 0
    for identity in (await session.execute(stmt.limit(10_000))).scalars():
        identity.match_key = match_key(identity.kind, identity.address)
        filled += 1
    await session.flush()
    return filled


def _reason(key: str | None) -> str:
    kind, _, value = (key or "").partition(":")
    return f"same {kind} ({value})"


async def duplicates_of(session: AsyncSession, contact: Contact) -> list[DuplicateSuggestion]:
    """Other contacts of the tenant that are likely the same person as `contact`."""
    await fill_match_keys(session, contact.tenant_id, contact.id)
    reasons: dict[int, list[str]] = defaultdict(list)
    mine = aliased(ChannelIdentity)
    theirs = aliased(ChannelIdentity)
    rows = await session.execute(
        select(theirs.contact_id, theirs.match_key)
        .join(mine, (mine.tenant_id == theirs.tenant_id) & (mine.match_key == theirs.match_key))
        .where(
            mine.contact_id == contact.id,
            theirs.contact_id != contact.id,
            theirs.tenant_id == contact.tenant_id,
        )
        .distinct()
    )
    for other_id, key in rows.all():
        reasons[other_id].append(_reason(key))
    if contact.name and contact.company_id is not None:
        same_name = await session.execute(
            select(Contact.id).where(
                Contact.tenant_id == contact.tenant_id,
                Contact.company_id == contact.company_id,
                func.lower(Contact.name) == contact.name.strip().lower(),
                Contact.id != contact.id,
            )
        )
        for other_id in same_name.scalars():
            reasons[other_id].append("same name at the same company")
    return [DuplicateSuggestion(contact.id, other, tuple(r)) for other, r in sorted(reasons.items())]


async def tenant_duplicates(
    session: AsyncSession, tenant_id: int, *, limit: int
) -> Sequence[DuplicateSuggestion]:
    """Pairs of the tenant's contacts that are likely one person, lowest ids first."""
    await fill_match_keys(session, tenant_id)
    a, b = aliased(ChannelIdentity), aliased(ChannelIdentity)
    pairs: dict[tuple[int, int], list[str]] = defaultdict(list)
    rows = await session.execute(
        select(a.contact_id, b.contact_id, a.match_key)
        .join(b, (a.tenant_id == b.tenant_id) & (a.match_key == b.match_key) & (a.contact_id < b.contact_id))
        .where(a.tenant_id == tenant_id, a.match_key.is_not(None))
        .distinct()
        .order_by(a.contact_id, b.contact_id)
        .limit(limit)
    )
    for first, second, key in rows.all():
        pairs[(first, second)].append(_reason(key))
    x, y = aliased(Contact), aliased(Contact)
    named = await session.execute(
        select(x.id, y.id)
        .join(
            y,
            (x.tenant_id == y.tenant_id)
            & (x.company_id == y.company_id)
            & (func.lower(x.name) == func.lower(y.name))
            & (x.id < y.id),
        )
        .where(x.tenant_id == tenant_id, x.company_id.is_not(None), x.name.is_not(None))
        .order_by(x.id, y.id)
        .limit(limit)
    )
    for first, second in named.all():
        pairs[(first, second)].append("same name at the same company")
    ordered = sorted(pairs.items())[:limit]
    return [DuplicateSuggestion(first, second, tuple(r)) for (first, second), r in ordered]
