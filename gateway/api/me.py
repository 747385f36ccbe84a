"""`/me`: who the token belongs to."""

from __future__ import annotations

from sqlalchemy import select

from gateway.api.routing import ApiRequest, RouteTable
from gateway.api.schemas import MeOut, TenantOut
from parley.models import Tenant, User

routes = RouteTable("me")


@routes.get("/me", allow=None)
async def get_me(call: ApiRequest) -> MeOut:
    """Get the user and tenant the API token acts for."""
    user, tenant = (
        await call.session.execute(
            select(User, Tenant)
            .join(Tenant, Tenant.id == User.tenant_id)
            .where(User.id == call.principal.user_id)
        )
    ).one()
    return MeOut(
        user_id=user.id,
        email=user.email,
        name=user.name,
        role=call.principal.role,
        tenant=TenantOut(id=tenant.id, name=tenant.name),
    )
