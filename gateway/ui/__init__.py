"""The agents' web application: server-rendered pages (Jinja2, autoescaped) made live by a little JavaScript.

Pages are full HTML documents; htmx (vendored under static/vendor, 0BSD) swaps fragments of them
for navigation and actions, and a WebSocket tells open pages what changed. Every page works with
the strict Content-Security-Policy of `gateway.ui.web`: no inline script, no inline style.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from gateway.api.permissions import Permission
from gateway.ui.account_views import setup_account_routes
from gateway.ui.admin_views import setup_admin_routes
from gateway.ui.auth_views import setup_auth_routes
from gateway.ui.composer_views import setup_composer_routes
from gateway.ui.contact_import_views import setup_contact_import_routes
from gateway.ui.contact_views import setup_contact_routes
from gateway.ui.csat_views import setup_csat_routes
from gateway.ui.deal_views import setup_deal_routes
from gateway.ui.inbox_views import setup_inbox_routes
from gateway.ui.priority_views import setup_priority_ui
from gateway.ui.privacy_views import setup_privacy_routes
from gateway.ui.task_views import setup_task_routes
from gateway.ui.ticket_views import setup_ticket_routes
from gateway.ui.timeline_views import setup_timeline_routes
from gateway.ui.web import Ui, page, redirect, security_headers
from gateway.ui.webhook_views import setup_webhook_routes

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def _clock(moment: datetime | None) -> str:
    """A short time for lists: HH:MM today, otherwise the date."""
    if moment is None:
        return ""
    return f"{moment:%Y-%m-%d %H:%M}"


# Where "/" leads: the first page of these the user's role may open (a marketer has no inbox).
HOME_PAGES = (
    (Permission.SEND_MESSAGES, "/inbox"),
    (Permission.READ_CONTACTS, "/contacts"),
    (Permission.MANAGE_INBOXES, "/admin"),
    (Permission.MANAGE_ROUTING, "/admin"),
)


@page()
async def _home(ui: Ui) -> web.StreamResponse:
    for permission, path in HOME_PAGES:
        if ui.may(permission):
            return redirect(path)
    return redirect("/account")


def setup_ui(app: web.Application) -> None:
    """Register the UI's templates, static files, pages and headers on the gateway."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["clock"] = _clock
    app.middlewares.append(security_headers)
    app.router.add_static("/ui/static", STATIC, name="ui_static", append_version=False)
    app.router.add_get("/", _home)
    setup_auth_routes(app)
    setup_account_routes(app)
    setup_contact_import_routes(app)  # before /contacts/{contact_id}
    setup_contact_routes(app)
    setup_timeline_routes(app)
    setup_deal_routes(app)
    setup_inbox_routes(app)
    setup_priority_ui(app)
    setup_composer_routes(app)
    setup_admin_routes(app)
    setup_task_routes(app)
    setup_csat_routes(app)
    setup_ticket_routes(app)
    setup_webhook_routes(app)
    setup_privacy_routes(app)
