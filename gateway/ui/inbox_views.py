"""The agents' inbox: conversation list | thread | contact, and the actions on the open conversation.

`/inbox` and `/inbox/c/{id}` are one page; htmx asks for a single pane (`HX-Target: list` or
`thread`) and gets that fragment alone, so navigation, filters and live refreshes re-render only
what changed while reload, back/forward and shared links get the whole page. Actions are form
posts answered with the re-rendered thread pane (errors inside it, with their status) and an
`HX-Trigger` telling the page to refresh the list. Email bodies never enter the page: they are
served by `/ui/messages/{id}/email` into a sandboxed frame under a CSP of their own.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
import nh3
from aiohttp import web
from markupsafe import Markup, escape
from sqlalchemy import func, select

from crm_core.models import Contact
from gateway.api.permissions import Permission
from gateway.ui.composer_views import composer_context
from gateway.ui.contact_views import contact_panel_context
from gateway.ui.web import Ui, page
from inbox import actions as conversation_actions
from inbox.listing import (
    SORTS,
    VIEWS,
    ConversationFilters,
    ConversationPage,
    InvalidCursor,
    Sort,
    View,
    display_name,
    list_conversations,
    view_counts,
)
from inbox.models import Conversation, ConversationPriority, ConversationStatus, Inbox, Message
from parley.db import utcnow
from parley.models import User
from routing import assigner
from routing.filters import team_conversations
from routing.models import ConversationRouting, Team
from routing.presence import ANSWERING_ROLES
from routing.sla import next_due_subquery

# The inbox is where conversations are answered: roles that only read them (marketers, bot
# designers) use the contact timeline and the API instead.
INBOX_PERMISSION = Permission.SEND_MESSAGES
PAGE_SIZE = 50
# How many messages a thread shows at first; a search result further back widens it.
THREAD_WINDOW = 200
STATUSES = [str(s) for s in ConversationStatus]
PRIORITIES = [str(p) for p in ConversationPriority]

# What a channel is called in the list and which sprite icon it gets.
CHANNEL_NAMES = {
    "twilio_sms": "SMS",
    "twilio_whatsapp": "WhatsApp",
    "whatsapp_cloud": "WhatsApp",
    "twilio_voice": "Phone",
    "email": "Email",
    "webchat": "Web chat",
    "slack": "Slack",
    "telegram": "Telegram",
}
CHANNEL_ICONS = {
    "twilio_sms": "sms",
    "twilio_whatsapp": "whatsapp",
    "whatsapp_cloud": "whatsapp",
    "twilio_voice": "phone",
    "email": "email",
    "webchat": "chat",
    "slack": "slack",
    "telegram": "telegram",
}

# Email frames: nothing runs, nothing is fetched but what the message carries inline, unless the
# agent asked for remote images.
EMAIL_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'; base-uri 'none'"
)
EMAIL_CSP_IMAGES = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data: https: http:; frame-ancestors 'self'; "
    "base-uri 'none'"
)
_EMAIL_URL_SCHEMES = {"http", "https", "mailto", "tel", "data"}

_LINK = re.compile(r"\bhttps?://[^\s<>\"']+[^\s<>\"'.,;:!?)\]]")


def linkify(text: str) -> Markup:
    """Plain text with its http(s) links made clickable: everything is escaped first, then wrapped."""
    out: list[str] = []
    last = 0
    for match in _LINK.finditer(text):
        out.append(str(escape(text[last : match.start()])))
        url = str(escape(match.group(0)))
        out.append(f'<a href="{url}" rel="noopener noreferrer nofollow" target="_blank">{url}</a>')
        last = match.end()
    out.append(str(escape(text[last:])))
    return Markup("".join(out))  # noqa: S704 (every piece above was escaped)


def channel_name(channel: str) -> str:
    return CHANNEL_NAMES.get(channel, channel)


def channel_icon(channel: str) -> str:
    return CHANNEL_ICONS.get(channel, "chat")


# --- list -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The list's URL parameters, validated: unknown values fall back rather than fail the page."""

    view: View = "mine"
    status: str | None = "open"
    inbox_id: int | None = None
    channel: str | None = None
    team_id: int | None = None
    label: str | None = None
    priority: str | None = None
    sort: Sort = "newest"
    contact_id: int | None = None
    cursor: str | None = None

    @classmethod
    def parse(cls, query: Any) -> ListQuery:
        def number(name: str) -> int | None:
            value = str(query.get(name, "")).strip()
            return int(value) if value.isdigit() else None

        def text(name: str) -> str | None:
            value = str(query.get(name, "")).strip()
            return value[:200] or None

        view = query.get("view", "mine")
        sort = query.get("sort", "newest")
        # `status=` (empty) means any status; no `status` at all means the default, open.
        status = query.get("status", "open") or None
        return cls(
            view=view if view in VIEWS else "mine",
            status=status if status in STATUSES else None,
            inbox_id=number("inbox_id"),
            channel=text("channel"),
            team_id=number("team_id"),
            label=text("label"),
            priority=text("priority") if text("priority") in PRIORITIES else None,
            sort=sort if sort in SORTS else "newest",
            contact_id=number("contact_id"),
            cursor=text("cursor"),
        )

    def params(self, **override: Any) -> dict[str, str]:
        """The non-default parameters (what the list's links and the URL carry)."""
        values = {
            "view": self.view,
            "status": self.status or "",
            "inbox_id": self.inbox_id,
            "channel": self.channel,
            "team_id": self.team_id,
            "label": self.label,
            "priority": self.priority,
            "sort": self.sort,
            "contact_id": self.contact_id,
        }
        values.update(override)
        defaults = {"view": "mine", "status": "open", "sort": "newest"}
        return {
            key: str(value)
            for key, value in values.items()
            if value is not None and (value != "" or key == "status") and defaults.get(key) != value
        }

    def qs(self, **override: Any) -> str:
        params = self.params(**override)
        return "?" + urlencode(params) if params else ""

    def filters(self, tenant_id: int) -> ConversationFilters:
        return ConversationFilters(
            status=self.status,
            inbox_id=self.inbox_id,
            channel=self.channel,
            label=self.label,
            priority=self.priority,
            contact_id=self.contact_id,
            within=None if self.team_id is None else team_conversations(tenant_id, self.team_id),
            sla_due=next_due_subquery(),
        )


async def _list_context(ui: Ui, query: ListQuery, open_id: int | None) -> dict[str, Any]:
    filters = query.filters(ui.tenant_id)
    try:
        found = await list_conversations(
            ui.session,
            tenant_id=ui.tenant_id,
            user_id=ui.user_id,
            view=query.view,
            filters=filters,
            sort=query.sort,
            limit=PAGE_SIZE,
            cursor=query.cursor,
        )
    except InvalidCursor:
        found = ConversationPage([], None)
    counts = await view_counts(ui.session, tenant_id=ui.tenant_id, user_id=ui.user_id, filters=filters)
    inboxes = (
        (await ui.session.execute(select(Inbox).where(Inbox.tenant_id == ui.tenant_id).order_by(Inbox.name)))
        .scalars()
        .all()
    )
    teams = (
        (await ui.session.execute(select(Team).where(Team.tenant_id == ui.tenant_id).order_by(Team.name)))
        .scalars()
        .all()
    )
    labels = await conversation_actions.list_labels(ui.session, ui.tenant_id)
    return {
        "q": query,
        "rows": found.rows,
        "next_cursor": found.next_cursor,
        "counts": counts,
        "inboxes": inboxes,
        "channels": sorted({i.channel for i in inboxes}),
        "teams": teams,
        "labels": labels,
        "open_id": open_id,
        "statuses": STATUSES,
        "priorities": PRIORITIES,
    }


# --- thread ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttachmentView:
    url: str | None  # None: not copied into the media store (yet); never shown from elsewhere
    source_url: str | None  # the provider's URL, shown as a link only
    content_type: str
    filename: str
    kind: str  # image, audio, video, file


def _attachment(tenant_id: int, raw: Any) -> AttachmentView:
    item = raw if isinstance(raw, dict) else {}
    content_type = str(item.get("content_type") or "application/octet-stream")
    key = item.get("media_key")
    url = None
    if isinstance(key, str) and key.split("/", 1)[0] == str(tenant_id):
        url = f"/media/{key}"
    source = item.get("url")
    source_url = source if isinstance(source, str) and source.startswith(("https://", "http://")) else None
    if url is None and source_url and "/media/" in source_url and "media_key" not in item:
        # Files an agent uploaded already live in the store: their URL is ours.
        path = source_url.split("/media/", 1)[1]
        if path.split("/", 1)[0] == str(tenant_id):
            url, source_url = f"/media/{path}", None
    kind = "file"
    for prefix in ("image", "audio", "video"):
        if content_type.startswith(prefix + "/") and content_type != "image/svg+xml":
            kind = prefix
    filename = str(item.get("filename") or (url or source_url or "attachment").rsplit("/", 1)[-1])
    return AttachmentView(url, source_url, content_type, filename, kind)


@dataclass(frozen=True, slots=True)
class MessageView:
    message: Message
    sender_kind: str  # customer, agent, bot, system
    sender_name: str
    at: datetime | None
    private: bool
    attachments: list[AttachmentView]
    call: dict[str, Any] | None
    recording: dict[str, Any] | None
    voicemail: dict[str, Any] | None
    intent: dict[str, Any] | None
    email: dict[str, Any] | None  # subject and whether an HTML body exists
    body: Markup


def _intent(extra: dict[str, Any]) -> dict[str, Any] | None:
    """The bot's detected intent, as `extra.intent` or Rasa's `extra.nlu` (`intent: {name, confidence}`)."""
    found = extra.get("intent")
    if found is None and isinstance(extra.get("nlu"), dict):
        found = extra["nlu"].get("intent")
    if isinstance(found, str):
        return {"name": found, "confidence": None}
    if isinstance(found, dict) and isinstance(found.get("name"), str):
        confidence = found.get("confidence")
        return {
            "name": found["name"],
            "confidence": confidence if isinstance(confidence, (int, float)) else None,
        }
    return None


def _shape(value: Any, keys: tuple[str, ...]) -> dict[str, Any] | None:
    """A content mapping from `extra` with every key the template reads (missing ones None)."""
    if not isinstance(value, dict):
        return None
    return {key: value.get(key) for key in keys}


def _sender_kind(message: Message) -> str:
    if message.sender_type == "contact":
        return "customer"
    if message.sender_type == "user":
        return "agent"
    if message.sender_type == "bot":
        return "bot"
    return "system"


async def _thread_context(
    ui: Ui, conversation: Conversation, *, error: str | None = None, notice: str | None = None
) -> dict[str, Any]:
    contact = (
        await ui.session.execute(select(Contact).where(Contact.id == conversation.contact_id))
    ).scalar_one()
    inbox = (await ui.session.execute(select(Inbox).where(Inbox.id == conversation.inbox_id))).scalar_one()
    # The newest messages, reaching back to `?at=` (a search result) when that is older.
    newest = (
        (
            await ui.session.execute(
                select(Message)
                .where(Message.conversation_id == conversation.id)
                .order_by(Message.id.desc())
                .limit(THREAD_WINDOW)
            )
        )
        .scalars()
        .all()
    )
    at = ui.request.query.get("at", "")
    oldest_shown = newest[-1].id if newest else 0
    if at.isdigit() and len(newest) == THREAD_WINDOW and int(at) < oldest_shown:
        older = (
            (
                await ui.session.execute(
                    select(Message)
                    .where(
                        Message.conversation_id == conversation.id,
                        Message.id >= int(at),
                        Message.id < oldest_shown,
                    )
                    .order_by(Message.id.desc())
                )
            )
            .scalars()
            .all()
        )
        newest = [*newest, *older]
    messages = list(reversed(newest))
    earlier = 0
    if messages and len(newest) >= THREAD_WINDOW:
        earlier = (
            await ui.session.execute(
                select(func.count())
                .select_from(Message)
                .where(Message.conversation_id == conversation.id, Message.id < messages[0].id)
            )
        ).scalar_one()
    users = {
        u.id: u
        for u in (
            await ui.session.execute(select(User).where(User.tenant_id == ui.tenant_id).order_by(User.name))
        )
        .scalars()
        .all()
    }
    contact_name = display_name(contact.name, contact.email, contact.phone, contact.id)
    views = []
    for m in messages:
        kind = _sender_kind(m)
        extra = m.extra or {}
        if kind == "customer":
            name = contact_name
        elif kind == "agent":
            author = users.get(m.sender_id or 0)
            name = (author.name or author.email) if author else "Agent"
        elif kind == "bot":
            name = "Bot"
        else:
            name = "System"
        email = None
        if inbox.channel == "email" or "subject" in extra or "html" in extra:
            email = {"subject": extra.get("subject"), "html": bool(extra.get("html"))}
        views.append(
            MessageView(
                message=m,
                sender_kind=kind,
                sender_name=name,
                at=ui.local(m.created_at),
                private=m.private,
                attachments=[_attachment(ui.tenant_id, a) for a in (m.attachments or [])],
                call=_shape(extra.get("call"), ("status", "direction", "duration", "leg")),
                recording=_shape(extra.get("recording"), ("duration", "url")),
                voicemail=_shape(extra.get("voicemail"), ("status", "transcript")),
                intent=_intent(extra) if kind == "bot" else None,
                email=email,
                body=linkify(m.body or ""),
            )
        )
    routing = await ui.session.get(ConversationRouting, conversation.id)
    teams = (
        (await ui.session.execute(select(Team).where(Team.tenant_id == ui.tenant_id).order_by(Team.name)))
        .scalars()
        .all()
    )
    labels = await conversation_actions.labels_of(ui.session, [conversation.id])
    others = (
        (
            await ui.session.execute(
                select(Conversation)
                .where(
                    Conversation.tenant_id == ui.tenant_id,
                    Conversation.contact_id == conversation.contact_id,
                    Conversation.id != conversation.id,
                    Conversation.merged_into_id.is_(None),
                )
                .order_by(Conversation.id.desc())
                .limit(20)
            )
        )
        .scalars()
        .all()
    )
    agents = [u for u in users.values() if u.active and u.role in ANSWERING_ROLES]
    composer = await composer_context(ui, conversation)
    return {
        **composer,
        "contact_panel": _fragment(
            ui, "inbox/_contact_panel.html", await contact_panel_context(ui, conversation.contact_id)
        ),
        "conversation": conversation,
        "contact": contact,
        "contact_name": contact_name,
        "inbox": inbox,
        "messages": views,
        "earlier": earlier,
        "assignee": users.get(conversation.assignee_id or 0),
        "priority_set_by": users.get(conversation.priority_set_by_id or 0),
        "agents": agents,
        "teams": teams,
        "team_id": routing.team_id if routing is not None else None,
        "conversation_labels": labels[conversation.id],
        "all_labels": await conversation_actions.list_labels(ui.session, ui.tenant_id),
        "merge_candidates": others,
        "statuses": STATUSES,
        "priorities": PRIORITIES,
        "snoozed_until_local": ui.local(conversation.snoozed_until),
        "error": error,
        "notice": notice,
        "may_update": ui.may(Permission.UPDATE_CONVERSATIONS),
        "may_send": ui.may(Permission.SEND_MESSAGES),
        "may_manage_labels": ui.may(Permission.MANAGE_LABELS),
    }


def _fragment(ui: Ui, template: str, context: dict[str, Any]) -> Markup:
    """Another engineer's partial rendered with its own context (its keys cannot clash with the thread's)."""
    merged = {"ui": ui, "user": ui.user, "csrf_token": ui.csrf_token, "Permission": Permission, **context}
    html = aiohttp_jinja2.get_env(ui.request.app).get_template(template).render(merged)
    return Markup(html)  # noqa: S704 (an autoescaped template's output)


async def _conversation(ui: Ui, conversation_id: int) -> Conversation | None:
    return (
        await ui.session.execute(
            select(Conversation).where(
                Conversation.id == conversation_id, Conversation.tenant_id == ui.tenant_id
            )
        )
    ).scalar_one_or_none()


def _not_found(ui: Ui) -> web.Response:
    if ui.is_htmx():
        return web.Response(status=404, text="This conversation does not exist.")
    return ui.render("inbox/not_found.html", {}, status=404)


# Which template answers an htmx request for one part of the thread pane.
_THREAD_PARTS = {
    "thread": "inbox/_thread.html",
    "messages": "inbox/_messages.html",
    "thread-head": "inbox/_actions.html",
}


def _helpers() -> dict[str, Any]:
    return {"channel_name": channel_name, "channel_icon": channel_icon}


@page(allow=INBOX_PERMISSION)
async def inbox_page(ui: Ui) -> web.StreamResponse:
    """The inbox, or one of its panes for htmx (`HX-Target: list` / `thread`)."""
    raw_id = ui.request.match_info.get("conversation_id")
    conversation = None
    if raw_id is not None:
        conversation = await _conversation(ui, int(raw_id))
        if conversation is None:
            return _not_found(ui)
    query = ListQuery.parse(ui.request.query)
    target = ui.request.headers.get("HX-Target") if ui.is_htmx() else None
    context: dict[str, Any] = _helpers()
    if target in _THREAD_PARTS:
        if conversation is None:
            return ui.render("inbox/_empty_thread.html", context)
        context.update(await _thread_context(ui, conversation))
        return ui.render(_THREAD_PARTS[target], context)
    context.update(await _list_context(ui, query, conversation.id if conversation else None))
    if ui.request.query.get("part") == "rows":
        return ui.render("inbox/_rows.html", context)
    if target == "list":
        return ui.render("inbox/_list.html", context)
    if conversation is not None:
        context.update(await _thread_context(ui, conversation))
    context["thread_open"] = conversation is not None
    return ui.render("inbox/page.html", context)


# --- actions --------------------------------------------------------------------------------------


async def _after_action(
    ui: Ui,
    conversation_id: int,
    *,
    error: str | None = None,
    notice: str | None = None,
    status: int = 200,
) -> web.StreamResponse:
    conversation = await _conversation(ui, conversation_id)
    if conversation is None:
        return _not_found(ui)
    context = _helpers()
    context.update(await _thread_context(ui, conversation, error=error, notice=notice))
    response = ui.render("inbox/_thread.html", context, status=status)
    if error is None:
        response.headers["HX-Trigger"] = "parley:list-stale"
    return response


def _local_time(value: str, zone: zoneinfo.ZoneInfo) -> datetime:
    """`2026-11-24T15:30` typed in the agent's time zone, as an aware time."""
    moment = datetime.fromisoformat(value)
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment


@page(allow=Permission.UPDATE_CONVERSATIONS)
async def conversation_action(ui: Ui) -> web.StreamResponse:
    """One action on the open conversation, named by the URL's last part."""
    conversation_id = int(ui.request.match_info["conversation_id"])
    action = ui.request.match_info["action"]
    form = await ui.request.post()
    conversation = await _conversation(ui, conversation_id)
    if conversation is None:
        return _not_found(ui)
    notice = None
    try:
        if action == "status":
            status = str(form.get("status", ""))
            if status not in STATUSES or status == ConversationStatus.SNOOZED:
                return await _after_action(
                    ui, conversation_id, error=f"Unknown status {status!r}.", status=422
                )
            await conversation_actions.set_status(
                ui.session, ui.tenant_id, ui.user_id, conversation_id, ConversationStatus(status)
            )
            notice = "Resolved." if status == ConversationStatus.RESOLVED else f"Status: {status}."
        elif action == "snooze":
            until_text = str(form.get("until", "")).strip()
            until = None
            if until_text:
                try:
                    until = _local_time(until_text, ui.time_zone)
                except ValueError:
                    return await _after_action(ui, conversation_id, error="Pick a date and time.", status=422)
            await conversation_actions.snooze(
                ui.session, ui.tenant_id, ui.user_id, conversation_id, until=until
            )
            notice = "Snoozed until the customer replies." if until is None else "Snoozed."
        elif action == "priority":
            await conversation_actions.set_priority(
                ui.session, ui.tenant_id, ui.user_id, conversation_id, str(form.get("priority", ""))
            )
            notice = "Priority changed."
        elif action == "labels":
            names = [str(v).strip() for v in form.getall("labels", []) if str(v).strip()]
            new = str(form.get("new_label", "")).strip()
            if new:
                names.append(new)
            await conversation_actions.set_labels(
                ui.session,
                ui.tenant_id,
                ui.user_id,
                conversation_id,
                names,
                may_create=ui.may(Permission.MANAGE_LABELS),
            )
            notice = "Labels saved."
        elif action == "merge":
            into = str(form.get("into", ""))
            if not into.isdigit():
                return await _after_action(ui, conversation_id, error="Choose a conversation.", status=422)
            result = await conversation_actions.merge_conversations(
                ui.session, ui.tenant_id, ui.user_id, conversation_id, int(into)
            )
            ui.notify_after_commit()
            response = await _after_action(
                ui, result.target.id, notice=f"Merged from conversation {conversation_id}."
            )
            response.headers["HX-Push-Url"] = f"/inbox/c/{result.target.id}"
            return response
        elif action == "unread":
            await conversation_actions.mark_unread(ui.session, ui.tenant_id, ui.user_id, conversation_id)
            notice = "Marked unread."
        elif action == "assign":
            return await _assign(ui, conversation, form)
        else:
            raise web.HTTPNotFound()
    except conversation_actions.ActionError as e:
        return await _after_action(ui, conversation_id, error=e.message, status=e.status)
    ui.notify_after_commit()
    return await _after_action(ui, conversation_id, notice=notice)


async def _assign(ui: Ui, conversation: Conversation, form: Any) -> web.StreamResponse:
    """Assign to an agent (`take`: oneself) or hand over to a team's queue; `none` unassigns."""
    choice = str(form.get("assignee", "")).strip()
    if form.get("take"):
        choice = f"user:{ui.user_id}"
    if conversation.status == ConversationStatus.RESOLVED:
        return await _after_action(
            ui, conversation.id, error="Reopen the conversation before assigning it.", status=422
        )
    if choice.startswith("team:") and choice[5:].isdigit():
        return await _assign_team(ui, conversation, int(choice[5:]))
    new: int | None
    if choice == "none":
        new = None
    elif choice.startswith("user:") and choice[5:].isdigit():
        new = int(choice[5:])
        user = (
            await ui.session.execute(select(User).where(User.id == new, User.tenant_id == ui.tenant_id))
        ).scalar_one_or_none()
        if user is None or user.role not in ANSWERING_ROLES or not user.active:
            return await _after_action(
                ui, conversation.id, error="No such agent in this workspace.", status=422
            )
    else:
        return await _after_action(ui, conversation.id, error="Choose an agent or a team.", status=422)
    old = conversation.assignee_id
    if old != new:
        conversation.assignee_id = new
        # Routing follows `conversation.updated`: it frees the old agent's capacity and re-queues on unassign.
        await conversation_actions.announce(
            ui.session,
            conversation,
            {"assignee_id": {"old": old, "new": new}},
            actor=conversation_actions.Actor.user(ui.user_id),
        )
        ui.notify_after_commit()
    if new is None:
        notice = "Unassigned."
    elif new == ui.user_id:
        notice = "Assigned to you."
    else:
        notice = "Assigned."
    return await _after_action(ui, conversation.id, notice=notice)


async def _assign_team(ui: Ui, conversation: Conversation, team_id: int) -> web.StreamResponse:
    team = (
        await ui.session.execute(select(Team).where(Team.id == team_id, Team.tenant_id == ui.tenant_id))
    ).scalar_one_or_none()
    if team is None:
        return await _after_action(ui, conversation.id, error="No such team.", status=422)
    await assigner.lock_tenant(ui.session, ui.tenant_id)
    old = conversation.assignee_id
    if old is not None:
        conversation.assignee_id = None
        await conversation_actions.announce(
            ui.session,
            conversation,
            {"assignee_id": {"old": old, "new": None}},
            actor=conversation_actions.Actor.user(ui.user_id),
        )
    row = await ui.session.get(ConversationRouting, conversation.id)
    if row is None:
        await assigner.enqueue(ui.session, ui.tenant_id, conversation.id, utcnow())
        row = await ui.session.get(ConversationRouting, conversation.id)
    if row is None:
        return await _after_action(
            ui, conversation.id, error="This conversation cannot be routed.", status=422
        )
    row.team_id = team.id
    await ui.session.flush()
    await assigner.serve_queue(ui.session, ui.tenant_id)
    ui.notify_after_commit()
    return await _after_action(ui, conversation.id, notice=f"Handed to {team.name}.")


@page(allow=INBOX_PERMISSION)
async def mark_read(ui: Ui) -> web.StreamResponse:
    """The agent has the conversation open: everything in it is read."""
    try:
        await conversation_actions.mark_read(
            ui.session, ui.tenant_id, ui.user_id, int(ui.request.match_info["conversation_id"])
        )
    except conversation_actions.NotFoundError:
        return web.Response(status=404, text="This conversation does not exist.")
    ui.notify_after_commit()
    return web.Response(status=204)


# --- email bodies ---------------------------------------------------------------------------------


@page(allow=Permission.READ_CONVERSATIONS)
async def email_body(ui: Ui) -> web.StreamResponse:
    """An email's HTML for a sandboxed frame: sanitised again, under a CSP that loads nothing remote."""
    message_id = int(ui.request.match_info["message_id"])
    found = (
        await ui.session.execute(
            select(Message.extra).where(Message.id == message_id, Message.tenant_id == ui.tenant_id)
        )
    ).scalar_one_or_none()
    html = found.get("html") if isinstance(found, dict) else None
    if not isinstance(html, str):
        return web.Response(status=404, text="No such email.", content_type="text/plain")
    images = ui.request.query.get("images") == "1"
    # Stored HTML was sanitised at intake; sanitising again here means an older or hand-written row
    # cannot bring script into the frame either (the frame's sandbox and CSP stop it too).
    clean = nh3.clean(html, url_schemes=_EMAIL_URL_SCHEMES, link_rel="noopener noreferrer nofollow")
    document = (
        '<!doctype html><html><head><meta charset="utf-8"><base target="_blank">'
        "<style>body{font:14px/1.45 system-ui,sans-serif;margin:8px;color:#1d2330;word-wrap:break-word}"
        "img{max-width:100%;height:auto}</style></head><body>" + clean + "</body></html>"
    )
    return web.Response(
        text=document,
        content_type="text/html",
        headers={
            "Content-Security-Policy": EMAIL_CSP_IMAGES if images else EMAIL_CSP,
            "X-Frame-Options": "SAMEORIGIN",
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        },
    )


def _when(moment: datetime | None, ui: Ui) -> str:
    """A list's time in the agent's zone: HH:MM today, the day and month this year, else the date."""
    local = ui.local(moment)
    if local is None:
        return ""
    today = datetime.now(ui.time_zone).date()
    if local.date() == today:
        return f"{local:%H:%M}"
    if local.year == today.year:
        return f"{local:%d %b}"
    return f"{local:%Y-%m-%d}"


def setup_inbox_routes(app: web.Application) -> None:
    aiohttp_jinja2.get_env(app).filters["when"] = _when
    app.router.add_get("/inbox", inbox_page)
    app.router.add_get("/inbox/c/{conversation_id:[0-9]+}", inbox_page)
    app.router.add_post("/inbox/c/{conversation_id:[0-9]+}/read", mark_read)
    app.router.add_post(
        "/inbox/c/{conversation_id:[0-9]+}/{action:status|snooze|priority|labels|merge|unread|assign}",
        conversation_action,
    )
    app.router.add_get("/ui/messages/{message_id:[0-9]+}/email", email_body)
