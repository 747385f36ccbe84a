"""`/me`: who the token belongs to, and their presence."""

from __future__ import annotations

from sqlalchemy import select

from gateway.api.routing import ApiRequest, RouteTable
from gateway.api.schemas import MeOut, PresenceUpdate, TenantOut
from parley.models import Presence, Tenant, User
from routing.presence import set_presence

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
        presence=Presence(user.presence),
        tenant=TenantOut(id=tenant.id, name=tenant.name),
    )


@routes.put("/me/presence", allow=None)
async def put_presence(call: ApiRequest, *, body: PresenceUpdate) -> MeOut:
    """Set whether you can take conversations now (voice calls and web chat ask before offering a human)."""
    if await set_presence(call.session, call.tenant_id, call.principal.user_id, body.presence):
        call.notify_after_commit()
    return await get_me(call)
