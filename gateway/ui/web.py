"""The agents' web UI plumbing: who is signed in, CSRF, rendering, security headers.

A page handler is declared with `@page(allow=...)` and receives a `Ui`: the signed-in user, the
database transaction the request runs in, and `render`. State-changing requests (anything but GET
and HEAD) must carry the session's CSRF token, in the `csrf_token` form field or the `X-CSRF-Token`
header (app.js adds the header to every htmx and fetch request). Templates autoescape; customer
text reaches the page only through `{{ }}`.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.api.permissions import Permission, allows
from gateway.keys import DB, NOTIFIER, SETTINGS
from parley.models import Role
from parley.sessions import SESSION_COOKIE, SessionUser, csrf_matches, csrf_token, resume_session
from routing.models import AgentProfile

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# No inline script or style anywhere: every script and stylesheet is a file under /ui/static.
# Email bodies are shown in a sandboxed frame served by the gateway itself (its own, stricter CSP).
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        # htmx re-applies an element's (empty) style attribute when it settles a swap; the hash of the
        # empty string allows exactly that and nothing else.
        "style-src 'self' 'unsafe-hashes' 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "connect-src 'self'",
        "frame-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "base-uri 'none'",
        "object-src 'none'",
    )
)


@dataclass
class Ui:
    """One signed-in request to the web UI."""

    request: web.Request
    session: AsyncSession
    user: SessionUser
    time_zone: zoneinfo.ZoneInfo
    wake_dispatcher: bool = False

    def notify_after_commit(self) -> None:
        """Wake the outbox dispatcher once the transaction has committed (events were written)."""
        self.wake_dispatcher = True

    @property
    def tenant_id(self) -> int:
        return self.user.principal.tenant_id

    @property
    def user_id(self) -> int:
        return self.user.principal.user_id

    @property
    def role(self) -> Role:
        return self.user.principal.role

    def may(self, permission: Permission) -> bool:
        return allows(self.role, permission)

    @property
    def csrf_token(self) -> str:
        return csrf_token(self.request.app[SETTINGS].secret_key, self.user.token_hash)

    def is_htmx(self) -> bool:
        return self.request.headers.get("HX-Request") == "true"

    def render(
        self, template: str, context: Mapping[str, Any] | None = None, *, status: int = 200
    ) -> web.Response:
        """Render `template` with the user, CSRF token and time zone available to it."""
        merged = {"ui": self, "user": self.user, "csrf_token": self.csrf_token, "Permission": Permission}
        merged.update(context or {})
        return aiohttp_jinja2.render_template(template, self.request, merged, status=status)

    def local(self, moment: datetime | None) -> datetime | None:
        """`moment` in the agent's time zone."""
        return None if moment is None else moment.astimezone(self.time_zone)


UiHandler = Callable[[Ui], Awaitable[web.StreamResponse]]


def redirect(location: str) -> web.Response:
    """A 303 to `location` (after a form post, the browser GETs it)."""
    return web.Response(status=303, headers={"Location": location})


def session_token(request: web.Request) -> str | None:
    token = request.cookies.get(SESSION_COOKIE)
    return token if token else None


async def signed_in_user(request: web.Request, session: AsyncSession) -> SessionUser | None:
    """The user the request's session cookie signs in, if any (for WebSockets and pages alike)."""
    token = session_token(request)
    return None if token is None else await resume_session(session, token)


async def _time_zone(session: AsyncSession, user_id: int) -> zoneinfo.ZoneInfo:
    name = (
        await session.execute(select(AgentProfile.time_zone).where(AgentProfile.user_id == user_id))
    ).scalar_one_or_none()
    try:
        return zoneinfo.ZoneInfo(name or "UTC")
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def safe_next(target: str | None) -> str:
    """A local path to go to after signing in; anything else (another host, `//evil`) goes to the inbox."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/inbox"
    return target


def _sign_in_redirect(request: web.Request) -> web.StreamResponse:
    if request.headers.get("HX-Request") == "true" or request.method not in SAFE_METHODS:
        # htmx follows this header with a full page load instead of swapping the sign-in page into a pane.
        return web.Response(status=401, headers={"HX-Redirect": "/login"}, text="Sign in again.")
    raise web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='')}")


async def presented_csrf(request: web.Request) -> str:
    header = request.headers.get("X-CSRF-Token")
    if header:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        value = form.get("csrf_token")
        return value if isinstance(value, str) else ""
    return ""


def page(
    *, allow: Permission | None = None
) -> Callable[[UiHandler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """Declare a UI handler: signed in, CSRF-checked when it changes state, `allow` checked."""

    def wrap(handler: UiHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def view(request: web.Request) -> web.StreamResponse:
            async with request.app[DB].transaction() as session:
                user = await signed_in_user(request, session)
                if user is None:
                    return _sign_in_redirect(request)
                if request.method not in SAFE_METHODS and not csrf_matches(
                    request.app[SETTINGS].secret_key, user.token_hash, await presented_csrf(request)
                ):
                    return web.Response(status=403, text="The form expired. Reload the page and try again.")
                ui = Ui(request, session, user, await _time_zone(session, user.principal.user_id))
                if allow is not None and not ui.may(allow):
                    return ui.render("forbidden.html", status=403)
                # Handlers return redirects (`redirect`) rather than raise them: raising would roll back.
                response = await handler(ui)
            if ui.wake_dispatcher:
                request.app[NOTIFIER].notify()
            return response

        view.__name__ = handler.__name__
        view.__doc__ = handler.__doc__
        return view

    return wrap


def secure_cookies(request: web.Request) -> bool:
    """Cookies are `Secure` whenever the UI is reached over HTTPS (directly or behind a proxy)."""
    public_url = request.app[SETTINGS].public_url or ""
    return request.secure or public_url.startswith("https://")


@web.middleware
async def security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Headers on every response; pages get the strict Content-Security-Policy unless they set their own."""
    try:
        response = await handler(request)
    except web.HTTPException as e:
        _harden(request, e)
        raise
    _harden(request, response)
    return response


def _harden(request: web.Request, response: web.StreamResponse) -> None:
    if response.prepared:
        return
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    html = (response.content_type or "").startswith("text/html")
    if html or request.path.startswith("/ui/"):
        headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        headers.setdefault("X-Frame-Options", "DENY")
    if html:
        # Pages hold conversations: never kept by a shared cache or shown again after sign-out.
        headers.setdefault("Cache-Control", "no-store")
    if secure_cookies(request):
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
