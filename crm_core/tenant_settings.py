"""A tenant's CRM settings, with the defaults of a tenant that never changed them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.models import CrmSettings

DEFAULT_MQL_THRESHOLD = 50.0
DEFAULT_HALF_LIFE_DAYS = 30.0


@dataclass(frozen=True, slots=True)
class TenantCrmSettings:
    default_region: str | None = None
    mql_threshold: float = DEFAULT_MQL_THRESHOLD
    score_half_life_days: float = DEFAULT_HALF_LIFE_DAYS


async def crm_settings(session: AsyncSession, tenant_id: int) -> TenantCrmSettings:
    """The tenant's settings; the defaults if it has none stored."""
    row = (
        await session.execute(select(CrmSettings).where(CrmSettings.tenant_id == tenant_id))
    ).scalar_one_or_none()
    if row is None:
        return TenantCrmSettings()
    return TenantCrmSettings(row.default_region, row.mql_threshold, row.score_half_life_days)
