"""The admin screens: inboxes and their channels, users and roles, teams and agent profiles.

Pages are rendered here from the same service functions as the REST API (so an inbox's webhook
URLs are exactly what `GET /api/v1/inboxes/{id}` answers); their forms submit to the documented
API through `static/admin.js`, so validation, events and caches behave as for any API client.
Each screen is shown only to roles holding its permission: inboxes `inboxes:manage`, users
`users:manage` (admins), teams and agent profiles `routing:manage`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from sqlalchemy import select

from channels.registry import CHANNELS
from gateway.api.assignment import get_agent_profile, list_teams
from gateway.api.inboxes import get_inbox, list_inboxes
from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest
from gateway.api.schemas import PageQuery
from gateway.api.users import list_users
from gateway.errors import ApiError
from gateway.ui.account_views import time_zones
from gateway.ui.web import Ui, page, redirect
from parley.models import Role, User
from routing.match import CHANNEL_KINDS
from routing.presence import ANSWERING_ROLES


@dataclass(frozen=True, slots=True)
class Field:
    """One input of an inbox form: a setting (shown again) or a secret (write-only)."""

    name: str
    label: str
    kind: str = "text"  # text, int, bool, list (one per line), json
    required: bool = False
    help: str = ""


@dataclass(frozen=True, slots=True)
class ChannelForm:
    label: str
    settings: Sequence[Field]
    secrets: Sequence[Field]
    provider: str  # what to do at the provider with the webhook URLs
    extra_urls: Sequence[tuple[str, str]] = field(default_factory=tuple)  # (label, suffix)


_TWILIO = (
    Field("account_sid", "Account SID", required=True, help="AC…"),
    Field("phone_number", "Phone number (E.164)", help="or a messaging service SID below"),
    Field("messaging_service_sid", "Messaging service SID"),
    Field("default_region", "Default region for national numbers", help="e.g. US"),
    Field("api_base_url", "API base URL", help="default https://api.twilio.com"),
)

# What README's channel table documents, as form fields; anything else stays reachable through the API.
CHANNEL_FORMS: dict[str, ChannelForm] = {
    "twilio_sms": ChannelForm(
        "SMS (Twilio)",
        _TWILIO,
        (Field("auth_token", "Auth token", required=True),),
        "In the Twilio console, set the number's “A message comes in” webhook to the webhook URL "
        "(HTTP POST).",
    ),
    "twilio_whatsapp": ChannelForm(
        "WhatsApp (Twilio)",
        _TWILIO,
        (Field("auth_token", "Auth token", required=True),),
        "Set the WhatsApp sender's webhook to the webhook URL (HTTP POST).",
    ),
    "twilio_voice": ChannelForm(
        "Voice (Twilio)",
        (
            Field("account_sid", "Account SID", required=True),
            Field("phone_number", "Phone number (E.164)"),
            Field("greeting", "Greeting"),
            Field("language", "Language", help="e.g. en-US"),
            Field("voice", "Voice"),
            Field(
                "agents",
                "Agents to ring",
                "list",
                help="one per line: numbers, client:<identity> or sip: URIs",
            ),
            Field("ring_timeout", "Ring timeout (s)", "int"),
            Field("queue", "Twilio queue name"),
            Field("max_queue_wait", "Longest queue wait (s)", "int"),
            Field("voicemail_prompt", "Voicemail prompt"),
            Field("api_base_url", "API base URL"),
        ),
        (Field("auth_token", "Auth token", required=True),),
        "Set the number's “A call comes in” webhook to the webhook URL and “Call status changes” to the "
        "status callback URL (both HTTP POST).",
    ),
    "whatsapp_cloud": ChannelForm(
        "WhatsApp Cloud API (Meta)",
        (
            Field("phone_number_id", "Phone number ID", required=True),
            Field("waba_id", "WhatsApp Business account ID"),
            Field("api_version", "Graph API version"),
            Field("api_base_url", "API base URL", help="default https://graph.facebook.com"),
        ),
        (
            Field("access_token", "Access token", required=True),
            Field("app_secret", "App secret", required=True),
            Field("verify_token", "Verify token", required=True, help="you choose it; give Meta the same"),
        ),
        "In the Meta app's WhatsApp configuration, set the callback URL to the webhook URL with your verify "
        "token, and subscribe to messages.",
    ),
    "telegram": ChannelForm(
        "Telegram",
        (Field("api_base_url", "API base URL", help="default https://api.telegram.org"),),
        (
            Field("bot_token", "Bot token", required=True),
            Field("webhook_secret", "Webhook secret", required=True, help="you choose it"),
        ),
        "Call setWebhook with url = the webhook URL and secret_token = your webhook secret.",
    ),
    "slack": ChannelForm(
        "Slack",
        (
            Field("team_id", "Workspace (team) ID", help="only that workspace's events are taken"),
            Field("api_base_url", "API base URL"),
        ),
        (
            Field("bot_token", "Bot token (xoxb-…)", required=True),
            Field("signing_secret", "Signing secret", required=True),
        ),
        "Event Subscriptions Request URL → the webhook URL (bot events message.channels, message.groups, "
        "message.im); Interactivity Request URL → the interactivity URL.",
        (("Interactivity URL", "/interactivity"),),
    ),
    "email": ChannelForm(
        "Email",
        (
            Field(
                "addresses", "Addresses this inbox receives for", "list", required=True, help="one per line"
            ),
            Field("from_address", "From address of replies"),
            Field("from_name", "From name"),
            Field(
                "smtp",
                "SMTP server for replies (JSON)",
                "json",
                help='{"host": …, "port": 587, "username": …}',
            ),
            Field("imap", "IMAP mailbox to poll (JSON)", "json", help='{"host": …, "username": …}'),
        ),
        (
            Field("smtp_password", "SMTP password"),
            Field("imap_password", "IMAP password"),
            Field("sendgrid_webhook_token", "SendGrid webhook token"),
            Field("mailgun_signing_key", "Mailgun signing key"),
        ),
        "Point the domain's MX at `parley smtp` (or a relay forwarding to it), or poll IMAP, or use a "
        "provider webhook below.",
        (("SendGrid Inbound Parse URL (add ?token=…)", "/sendgrid"), ("Mailgun route URL", "/mailgun-mime")),
    ),
    "webchat": ChannelForm(
        "Web chat",
        (
            Field(
                "allowed_origins", "Sites that embed the widget", "list", required=True, help="one per line"
            ),
            Field("greeting", "Greeting"),
            Field("offline_text", "Text when nobody is online"),
            Field("pre_chat_form", "Ask name and email first", "bool"),
            Field("session_days", "Visitor sessions last (days)", "int"),
        ),
        (Field("identity_secret", "Identity secret (≥ 16 characters)", help="to identify signed-in users"),),
        "Nothing to set at a provider: put the widget's script tag on the site.",
    ),
}
assert set(CHANNEL_FORMS) == set(CHANNELS), "every channel needs its admin form"


def api_call(ui: Ui) -> ApiRequest:
    """The page's request as an API call, to read through the API's own functions."""
    return ApiRequest(ui.request, ui.user.principal, ui.session)


def admin_tabs(ui: Ui) -> list[dict[str, str]]:
    """The admin sub-pages this user's role may open."""
    tabs = [
        ("inboxes", "Inboxes", Permission.MANAGE_INBOXES),
        ("users", "Users", Permission.MANAGE_USERS),
        ("teams", "Teams", Permission.MANAGE_ROUTING),
        ("webhooks", "Webhooks", Permission.MANAGE_WEBHOOKS),
        ("audit", "Audit log", Permission.READ_AUDIT_LOG),
        ("privacy", "Privacy", Permission.MANAGE_RETENTION),
    ]
    return [{"key": key, "label": label, "href": f"/admin/{key}"} for key, label, p in tabs if ui.may(p)]


def _render(ui: Ui, template: str, tab: str, context: dict[str, Any], status: int = 200) -> web.Response:
    return ui.render(template, {"tabs": admin_tabs(ui), "tab": tab, **context}, status=status)


def _path_id(ui: Ui, name: str) -> int | None:
    raw = ui.request.match_info[name]
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 18 else None


def _not_found(ui: Ui, what: str) -> web.Response:
    return _render(ui, "admin/not_found.html", "", {"what": what}, status=404)


@page()
async def admin_home(ui: Ui) -> web.StreamResponse:
    tabs = admin_tabs(ui)
    if not tabs:
        return ui.render("forbidden.html", status=403)
    return redirect(tabs[0]["href"])


# --- inboxes --------------------------------------------------------------------------------------


def _setting_text(kind: str, value: Any) -> str:
    if value is None:
        return ""
    if kind == "list" and isinstance(value, list):
        return "\n".join(str(v) for v in value)
    if kind == "json":
        return json.dumps(value, indent=1)
    return str(value)


def _webhook_urls(
    form: ChannelForm, webhook_url: str, status_url: str, channel: str
) -> list[tuple[str, str]]:
    urls = [("Webhook URL", webhook_url)]
    if channel.startswith("twilio_"):
        urls.append(("Status callback URL", status_url))
    urls += [(label, webhook_url + suffix) for label, suffix in form.extra_urls]
    return urls


@page(allow=Permission.MANAGE_INBOXES)
async def inboxes_page(ui: Ui) -> web.StreamResponse:
    listed = await list_inboxes(api_call(ui), query=PageQuery(limit=200))
    inboxes = [
        {
            "id": i.id,
            "name": i.name,
            "channel": i.channel,
            "channel_label": CHANNEL_FORMS[i.channel].label if i.channel in CHANNEL_FORMS else i.channel,
            "webhook_url": i.webhook_url,
        }
        for i in sorted(listed.data, key=lambda i: i.name.lower())
    ]
    return _render(
        ui,
        "admin/inboxes.html",
        "inboxes",
        {"inboxes": inboxes, "channels": CHANNEL_FORMS, "more": listed.next_cursor is not None},
    )


@page(allow=Permission.MANAGE_INBOXES)
async def new_inbox_page(ui: Ui) -> web.StreamResponse:
    channel = ui.request.query.get("channel", "twilio_sms")
    if channel not in CHANNEL_FORMS:
        channel = "twilio_sms"
    return _render(
        ui,
        "admin/inbox_form.html",
        "inboxes",
        {
            "inbox": None,
            "channel": channel,
            "form": CHANNEL_FORMS[channel],
            "channels": CHANNEL_FORMS,
            "values": {},
            "secrets_set": [],
            "urls": [],
            "created": False,
        },
    )


@page(allow=Permission.MANAGE_INBOXES)
async def inbox_page(ui: Ui) -> web.StreamResponse:
    inbox_id = _path_id(ui, "inbox_id")
    if inbox_id is None:
        return _not_found(ui, "inbox")
    try:
        inbox = await get_inbox(api_call(ui), inbox_id=inbox_id)
    except ApiError:
        return _not_found(ui, "inbox")
    form = CHANNEL_FORMS[inbox.channel]
    return _render(
        ui,
        "admin/inbox_form.html",
        "inboxes",
        {
            "inbox": inbox,
            "channel": inbox.channel,
            "form": form,
            "channels": CHANNEL_FORMS,
            "values": {f.name: _setting_text(f.kind, inbox.settings.get(f.name)) for f in form.settings},
            "secrets_set": inbox.secrets_set,
            "urls": _webhook_urls(form, inbox.webhook_url, inbox.status_callback_url, inbox.channel),
            "created": ui.request.query.get("created") == "1",
        },
    )


# --- users ----------------------------------------------------------------------------------------


@page(allow=Permission.MANAGE_USERS)
async def users_page(ui: Ui) -> web.StreamResponse:
    listed = await list_users(api_call(ui))
    return _render(
        ui,
        "admin/users.html",
        "users",
        {
            "users": [{**u.model_dump(), "last_login_at": ui.local(u.last_login_at)} for u in listed.data],
            "roles": list(Role),
            "me": ui.user_id,
        },
    )


# --- teams and agent profiles ---------------------------------------------------------------------


async def _tenant_users(ui: Ui) -> list[User]:
    return list(
        (
            await ui.session.scalars(
                select(User).where(User.tenant_id == ui.tenant_id).order_by(User.name, User.email)
            )
        ).all()
    )


@page(allow=Permission.MANAGE_ROUTING)
async def teams_page(ui: Ui) -> web.StreamResponse:
    teams = (await list_teams(api_call(ui))).data
    users = await _tenant_users(ui)
    by_id = {u.id: u for u in users}
    agents = [u for u in users if u.role in ANSWERING_ROLES and u.active]
    return _render(
        ui,
        "admin/teams.html",
        "teams",
        {
            "teams": [
                {
                    "id": t.id,
                    "name": t.name,
                    "members": [by_id[m] for m in t.member_ids if m in by_id],
                    "candidates": [a for a in agents if a.id not in t.member_ids],
                }
                for t in teams
            ],
            "agents": agents,
        },
    )


@page(allow=Permission.MANAGE_ROUTING)
async def agent_page(ui: Ui) -> web.StreamResponse:
    user_id = _path_id(ui, "user_id")
    user = None
    if user_id is not None:
        user = (
            await ui.session.execute(select(User).where(User.id == user_id, User.tenant_id == ui.tenant_id))
        ).scalar_one_or_none()
    if user is None or user_id is None:
        return _not_found(ui, "agent")
    profile = await get_agent_profile(api_call(ui), user_id=user_id)
    return _render(
        ui,
        "admin/agent.html",
        "teams",
        {
            "agent": user,
            "answers": user.role in ANSWERING_ROLES,
            "profile": profile,
            "skills": ", ".join(f"{k}:{v}" for k, v in sorted(profile.skills.items())),
            "kinds": CHANNEL_KINDS,
            "time_zones": time_zones(),
            "working_hours": json.dumps(profile.working_hours) if profile.working_hours else "",
        },
    )


def setup_admin_routes(app: web.Application) -> None:
    app.router.add_get("/admin", admin_home)
    app.router.add_get("/admin/inboxes", inboxes_page)
    app.router.add_get("/admin/inboxes/new", new_inbox_page)
    app.router.add_get("/admin/inboxes/{inbox_id}", inbox_page)
    app.router.add_get("/admin/users", users_page)
    app.router.add_get("/admin/teams", teams_page)
    app.router.add_get("/admin/agents/{user_id}", agent_page)
