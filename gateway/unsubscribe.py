"""One-click unsubscribe (RFC 8058): `GET /u/<token>` asks, `POST /u/<token>` records the opt-out.

Outbound email carries `List-Unsubscribe: <https://…/u/<token>>, <mailto:…>` and
`List-Unsubscribe-Post: List-Unsubscribe=One-Click`; a mail client then POSTs
`List-Unsubscribe=One-Click` to the URL itself, without the person visiting it. There is no login
and, by design, no CSRF token: the signed token (see `parley.unsubscribe`) is the authority, and it
can only withdraw consent. A GET never changes anything, because link scanners fetch every URL in
a mail; it shows a page whose button sends the same POST.
"""

from __future__ import annotations

import logging

import aiohttp_jinja2
from aiohttp import web
from sqlalchemy import select

from crm_core.consent import change_consent
from crm_core.models import Contact
from gateway.keys import DB, NOTIFIER, SETTINGS
from parley.audit import Actor
from parley.unsubscribe import UNSUBSCRIBE_PATH, InvalidToken, UnsubscribeGrant, UnsubscribeSigner

logger = logging.getLogger(__name__)

_WHAT = {
    "marketing": "marketing messages",
    "transactional": "messages about your conversations",
    "all": "messages",
}


def _grant(request: web.Request) -> UnsubscribeGrant | None:
    try:
        return UnsubscribeSigner(request.app[SETTINGS].secret_key).verify(request.match_info["token"])
    except InvalidToken as e:
        logger.info("unsubscribe link refused: %s", e)
        return None


def _page(
    request: web.Request, state: str, grant: UnsubscribeGrant | None, status: int = 200
) -> web.Response:
    context = {
        "state": state,
        "what": _WHAT.get(grant.purpose, "messages") if grant else "",
        "channel": grant.channel if grant else "",
    }
    response = aiohttp_jinja2.render_template("privacy/unsubscribe.html", request, context, status=status)
    # A token in a URL must not leak to other sites through Referer.
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def confirm_page(request: web.Request) -> web.StreamResponse:
    """The page a person sees when they click the link: one button, which POSTs."""
    grant = _grant(request)
    return _page(request, "ask" if grant else "invalid", grant, 200 if grant else 400)


async def one_click(request: web.Request) -> web.StreamResponse:
    """Record the opt-out for the token's contact, channel and purpose (idempotent)."""
    grant = _grant(request)
    if grant is None:
        return _page(request, "invalid", None, 400)
    form = await request.post()
    if form.get("List-Unsubscribe") != "One-Click":
        raise web.HTTPBadRequest(text="The body must be List-Unsubscribe=One-Click (RFC 8058).")
    async with request.app[DB].transaction() as session:
        found = await session.execute(
            select(Contact.id).where(Contact.id == grant.contact_id, Contact.tenant_id == grant.tenant_id)
        )
        if found.scalar_one_or_none() is None:
            return _page(request, "invalid", None, 404)
        changed = await change_consent(
            session,
            tenant_id=grant.tenant_id,
            contact_id=grant.contact_id,
            channel=grant.channel,
            purpose=grant.purpose,
            granted=False,
            source="one-click-unsubscribe",
            actor=Actor("contact", grant.contact_id, request.remote),
        )
    if changed:
        request.app[NOTIFIER].notify()
    return _page(request, "done", grant)


def setup_unsubscribe(app: web.Application) -> None:
    app.router.add_get(UNSUBSCRIBE_PATH + "{token}", confirm_page, allow_head=False)
    app.router.add_post(UNSUBSCRIBE_PATH + "{token}", one_click)
