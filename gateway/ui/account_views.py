"""The signed-in person's own settings: name, time zone, presence, password."""

from __future__ import annotations

import zoneinfo
from functools import cache

from aiohttp import web
from sqlalchemy import select

from gateway.ui.web import Ui, page, redirect, secure_cookies
from parley.auth import hash_password, verify_password
from parley.models import Presence, User
from parley.sessions import MAX_AGE, MIN_PASSWORD_LENGTH, SESSION_COOKIE, end_all_sessions, start_session
from routing.models import AgentProfile
from routing.presence import set_presence


@cache
def time_zones() -> list[str]:
    return sorted(zone for zone in zoneinfo.available_timezones() if "/" in zone or zone == "UTC")


async def _account(
    ui: Ui, *, notice: str | None = None, error: str | None = None, status: int = 200
) -> web.Response:
    user = await ui.session.get(User, ui.user_id)
    assert user is not None
    return ui.render(
        "account.html",
        {
            "account": user,
            "time_zone_name": str(ui.time_zone),
            "time_zones": time_zones(),
            "presences": list(Presence),
            "notice": notice,
            "error": error,
            "min_length": MIN_PASSWORD_LENGTH,
        },
        status=status,
    )


@page()
async def account_page(ui: Ui) -> web.StreamResponse:
    changed = ui.request.query.get("password") == "changed"
    return await _account(ui, notice="Password changed; other sessions were signed out." if changed else None)


@page()
async def update_account(ui: Ui) -> web.StreamResponse:
    form = await ui.request.post()
    name = str(form.get("name", "")).strip()[:200]
    zone = str(form.get("time_zone", "UTC"))
    if zone not in time_zones():
        return await _account(ui, error=f"Unknown time zone: {zone}", status=422)
    user = await ui.session.get(User, ui.user_id)
    assert user is not None
    user.name = name or None
    profile = await ui.session.get(AgentProfile, ui.user_id)
    if profile is None:
        ui.session.add(AgentProfile(user_id=ui.user_id, tenant_id=ui.tenant_id, time_zone=zone))
    else:
        profile.time_zone = zone
    await ui.session.flush()
    ui.time_zone = zoneinfo.ZoneInfo(zone)
    return await _account(ui, notice="Saved.")


@page()
async def change_presence(ui: Ui) -> web.StreamResponse:
    form = await ui.request.post()
    try:
        presence = Presence(str(form.get("presence", "")))
    except ValueError:
        return web.Response(status=422, text="Unknown presence.")
    if await set_presence(ui.session, ui.tenant_id, ui.user_id, presence):
        ui.notify_after_commit()
    if ui.is_htmx():
        return web.Response(status=204)
    return redirect("/account")


@page()
async def change_password(ui: Ui) -> web.StreamResponse:
    form = await ui.request.post()
    current = str(form.get("current", ""))
    new = str(form.get("password", ""))
    user = (await ui.session.execute(select(User).where(User.id == ui.user_id))).scalar_one()
    if not verify_password(user.password_hash, current):
        return await _account(ui, error="The current password is wrong.", status=422)
    if len(new) < MIN_PASSWORD_LENGTH:
        return await _account(
            ui, error=f"The new password needs at least {MIN_PASSWORD_LENGTH} characters.", status=422
        )
    if new != str(form.get("confirm", "")):
        return await _account(ui, error="The two new passwords differ.", status=422)
    user.password_hash = hash_password(new)
    # Every other browser signed in as this user is signed out; this one gets a fresh session.
    await end_all_sessions(ui.session, user.id)
    token = await start_session(
        ui.session, user, user_agent=ui.request.headers.get("User-Agent", ""), ip=ui.request.remote or ""
    )
    response = redirect("/account?password=changed")
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="Lax",
        path="/",
        secure=secure_cookies(ui.request),
        max_age=int(MAX_AGE.total_seconds()),
    )
    return response


def setup_account_routes(app: web.Application) -> None:
    app.router.add_get("/account", account_page)
    app.router.add_post("/account", update_account)
    app.router.add_post("/account/presence", change_presence)
    app.router.add_post("/account/password", change_password)
