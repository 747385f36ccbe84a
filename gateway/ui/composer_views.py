"""The composer under an open conversation, and the notifications bell in the top bar.

The inbox page's thread view calls `composer_context(ui, conversation)` and includes
`inbox/_composer.html` with what it returns. The composer's JavaScript (`static/composer.js`) sends
through the REST API (`POST /api/v1/conversations/{id}/messages` and `/notes`, the canned responses'
`render`), so the checks the API makes (reply window, opt-out, voice) are the ones the page meets;
this module adds what the API lacks for a browser: file uploads from the agent's machine, the
workspace's people for `@` suggestions, the notification list as HTML, and the composer alone.

What the thread view and the composer agree on:
- the page loads `/ui/static/composer.js` and `composer.css` (inboxui's page does when they exist);
- the composer is `#composer` (`[data-composer]`, `data-conversation-id`); re-fetching the messages
  (`#messages`) leaves it alone, and re-rendering it is harmless: the draft (text per mode, mode,
  uploaded files) is kept in `sessionStorage` under `parley:draft:<conversation id>` and restored;
- after a reply, note or template is accepted, composer.js dispatches `parley:composer-sent` on
  `document` (`detail`: `conversation_id`, `message`, `note`/`template`) for the thread to refresh;
- it listens to live.js's `parley:event` (`message.received` / `conversation.updated` with the
  conversation's `payload.conversation_id`) and `parley:reconnected` to re-check the reply options
  (WhatsApp's window), swapping itself for `/ui/conversations/{id}/composer` when they changed;
- while replying it tells other agents through `window.parley.live.typing(conversation_id, on)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from aiohttp import BodyPartReader, web
from sqlalchemy import select

from channels.registry import channel_class
from crm_core.models import Contact
from crm_core.tasks import Task
from gateway.api.permissions import Permission
from gateway.keys import MEDIA
from gateway.ui.web import Ui, page
from inbox.canned import template_variables
from inbox.lookup import NotFoundError, conversation_with_inbox
from inbox.models import Conversation, Message, Notification, NotificationKind
from inbox.notes import list_notifications
from inbox.reply_options import reply_options
from parley.db import utcnow
from parley.media import MediaTooLarge
from parley.models import User

MAX_MENTION_SUGGESTIONS = 8
NOTIFICATIONS_SHOWN = 20
SNIPPET_LENGTH = 140

# Magic numbers of the files agents attach. The browser's (or the sender's) declared type is not
# trusted: a file is what its bytes say, so an HTML page renamed .png never becomes an image.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"OggS", "audio/ogg"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"\x1a\x45\xdf\xa3", "video/webm"),
    (0, b"PK\x03\x04", "application/zip"),
)


def sniff_content_type(data: bytes) -> str:
    """The type a file's bytes show it to be; readable text is `text/plain`, anything else opaque."""
    for offset, magic, content_type in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return content_type
    if data[:4] == b"RIFF" and data[8:12] in (b"WEBP", b"WAVE"):
        return "image/webp" if data[8:12] == b"WEBP" else "audio/wav"
    if data[4:8] == b"ftyp":
        return "video/mp4"
    if b"\x00" not in data[:8192]:
        try:
            data[:8192].decode("utf-8")
        except UnicodeDecodeError as e:
            # A multi-byte character cut at the sample's end is still text.
            if e.start < len(data[:8192]) - 3:
                return "application/octet-stream"
        return "text/plain"
    return "application/octet-stream"


@dataclass(frozen=True, slots=True)
class TemplateChoice:
    """An approved template with its variables prefilled where the contact has a value of that name."""

    name: str
    language: str | None
    body: str
    variables: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class ComposerState:
    """What `inbox/_composer.html` shows for one conversation."""

    conversation_id: int
    channel: str
    may_send: bool
    can_reply: bool
    reason: str | None
    reason_code: str | None
    window_closes_at: datetime | None
    window_closes_local: datetime | None
    window_seconds_left: int | None
    # Outside the window: when the customer last wrote (agent's time zone) and how long it lasts.
    last_inbound_local: datetime | None = None
    window_hours: int = 0
    templates: list[TemplateChoice] = field(default_factory=list)
    media: bool = False
    max_upload_bytes: int = 0

    @property
    def template_mode(self) -> bool:
        """Free text would not be delivered but an approved template would (WhatsApp's window)."""
        return self.reason_code == "outside_reply_window"


def _prefill(variables: list[str], known: dict[str, str]) -> list[tuple[str, str]]:
    return [(name, known.get(name.lower(), "")) for name in variables]


async def composer_state(ui: Ui, conversation_id: int) -> ComposerState:
    """The composer's state for the tenant's conversation; `NotFoundError` for anyone else's."""
    conversation, inbox = await conversation_with_inbox(ui.session, ui.tenant_id, conversation_id)
    options = await reply_options(ui.session, tenant_id=ui.tenant_id, conversation_id=conversation.id)
    capabilities = channel_class(inbox.channel).capabilities
    templates: list[TemplateChoice] = []
    if options.templates:
        values = await template_variables(
            ui.session, tenant_id=ui.tenant_id, user_id=ui.user_id, conversation_id=conversation.id
        )
        known = dict(values["contact"])
        templates = [
            TemplateChoice(
                name=t["name"],
                language=t.get("language"),
                body=t.get("body", ""),
                variables=_prefill(list(t.get("variables", [])), known),
            )
            for t in options.templates
        ]
    closes_at = options.window.closes_at if options.window is not None and options.window.open else None
    seconds_left = None if closes_at is None else max(0, int((closes_at - utcnow()).total_seconds()))
    return ComposerState(
        conversation_id=conversation.id,
        channel=inbox.channel,
        may_send=ui.may(Permission.SEND_MESSAGES),
        can_reply=options.can_reply,
        reason=options.reason,
        reason_code=options.reason_code,
        window_closes_at=closes_at,
        window_closes_local=ui.local(closes_at),
        window_seconds_left=seconds_left,
        last_inbound_local=ui.local(conversation.last_inbound_at),
        window_hours=0
        if capabilities.reply_window is None
        else int(capabilities.reply_window.total_seconds() // 3600),
        templates=templates,
        media=capabilities.media,
        max_upload_bytes=ui.request.app[MEDIA].max_bytes,
    )


async def composer_context(ui: Ui, conversation: Conversation) -> dict[str, Any]:
    """What `{% include "inbox/_composer.html" %}` needs, for the thread view of `conversation`."""
    return {"composer": await composer_state(ui, conversation.id)}


def _conversation_id(ui: Ui) -> int:
    raw = ui.request.match_info["conversation_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise NotFoundError("conversation")
    return int(raw)


def _not_found(ui: Ui) -> web.Response:
    if ui.is_htmx() or ui.request.path.startswith("/ui/"):
        return web.json_response(
            {"error": {"code": "not_found", "message": "conversation not found"}}, status=404
        )
    return ui.render("composer/not_found.html", status=404)


@page(allow=Permission.READ_CONVERSATIONS)
async def composer_fragment(ui: Ui) -> web.StreamResponse:
    """`GET /ui/conversations/{id}/composer`: the composer alone, to swap in when its state changes."""
    try:
        state = await composer_state(ui, _conversation_id(ui))
    except NotFoundError:
        return _not_found(ui)
    return ui.render("inbox/_composer.html", {"composer": state})


@page(allow=Permission.READ_CONVERSATIONS)
async def compose_page(ui: Ui) -> web.StreamResponse:
    """`GET /compose/{id}`: the composer on a page of its own (a second window beside the inbox)."""
    try:
        state = await composer_state(ui, _conversation_id(ui))
    except NotFoundError:
        return _not_found(ui)
    contact = (
        await ui.session.execute(
            select(Contact.name, Contact.phone, Contact.email)
            .join(Conversation, Conversation.contact_id == Contact.id)
            .where(Conversation.id == state.conversation_id, Conversation.tenant_id == ui.tenant_id)
        )
    ).one()
    title = contact.name or contact.phone or contact.email or f"Conversation {state.conversation_id}"
    return ui.render("composer/page.html", {"composer": state, "contact_title": title})


def handle_of(email: str) -> str:
    """What follows `@` to mention a user: their email's local part (the composer API resolves it)."""
    return email.partition("@")[0].lower()


@page(allow=Permission.READ_CONVERSATIONS)
async def mention_suggestions(ui: Ui) -> web.StreamResponse:
    """`GET /ui/composer/people?q=`: the workspace's active users whose handle or name starts with `q`."""
    q = ui.request.query.get("q", "").strip().lower()[:100]
    rows = (
        await ui.session.execute(
            select(User.id, User.name, User.email)
            .where(User.tenant_id == ui.tenant_id, User.active.is_(True))
            .order_by(User.name, User.email)
        )
    ).all()
    people = []
    for row in rows:
        handle = handle_of(row.email)
        words = [handle, *(row.name or "").lower().split()]
        if q and not any(word.startswith(q) for word in words):
            continue
        me = row.id == ui.user_id
        people.append({"id": row.id, "name": row.name or handle, "handle": handle, "me": me})
        if len(people) == MAX_MENTION_SUGGESTIONS:
            break
    return web.json_response({"data": people})


def _upload_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _read_limited(part: BodyPartReader, limit: int) -> bytes | None:
    """A part's bytes, or None once it passes `limit` (the rest is never held in memory)."""
    chunks = []
    size = 0
    while chunk := await part.read_chunk(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


@page(allow=Permission.SEND_MESSAGES)
async def upload_attachment(ui: Ui) -> web.StreamResponse:
    """`POST /ui/conversations/{id}/uploads`: one file (multipart `file`) into the media store.

    Answers the stored file's `url`, sniffed `content_type`, `filename` and `size`, to send as
    `attachments` with the reply. 413 over `PARLEY_MEDIA_MAX_BYTES`; 422 when the conversation's
    channel carries no files.
    """
    try:
        conversation, inbox = await conversation_with_inbox(ui.session, ui.tenant_id, _conversation_id(ui))
    except NotFoundError:
        return _upload_error(404, "not_found", "conversation not found")
    if not channel_class(inbox.channel).capabilities.media:
        return _upload_error(
            422,
            "media_unsupported",
            f"{inbox.channel} cannot carry files: send a link in the text, or reach the contact on a "
            "channel that can.",
        )
    if ui.request.content_type != "multipart/form-data":
        return _upload_error(400, "malformed_upload", "expected multipart/form-data with a `file` part")
    store = ui.request.app[MEDIA]
    file: tuple[str | None, bytes] | None = None
    try:
        reader = await ui.request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                return _upload_error(400, "malformed_upload", "nested multipart is not accepted")
            if part.name != "file":
                await part.release()
                continue
            if file is not None:
                return _upload_error(400, "malformed_upload", "one file per upload")
            data = await _read_limited(part, store.max_bytes)
            if data is None:
                return _upload_error(
                    413, "attachment_too_large", f"The file is larger than the {store.max_bytes}-byte limit."
                )
            # Browsers percent-encode quotes and line breaks in the name; directories go in `put`.
            file = (unquote(part.filename) if part.filename else None, data)
    except ValueError as e:  # broken boundaries or headers
        return _upload_error(400, "malformed_upload", f"the multipart body cannot be read: {e}")
    if file is None or not file[1]:
        return _upload_error(400, "malformed_upload", "no file (or an empty one) in the upload")
    filename, data = file
    try:
        stored = await store.put(ui.tenant_id, data, filename=filename, content_type=sniff_content_type(data))
    except MediaTooLarge as e:
        return _upload_error(413, "attachment_too_large", str(e))
    url = stored.url
    if url.startswith("/"):
        # No PARLEY_PUBLIC_URL: the API wants an absolute URL, and this is the one the agent used.
        url = f"{ui.request.url.origin()}{url}"
    return web.json_response(
        {
            "url": url,
            "content_type": stored.content_type,
            "filename": stored.filename,
            "size": stored.size,
            "conversation_id": conversation.id,
        },
        status=201,
    )


@dataclass(frozen=True, slots=True)
class NotificationItem:
    id: int
    unread: bool
    actor: str
    contact: str
    snippet: str
    href: str
    created_local: datetime | None
    what: str = "mentioned you"


@page()
async def notifications_fragment(ui: Ui) -> web.StreamResponse:
    """`GET /ui/notifications`: the bell's list (unread first), as HTML for the dropdown."""
    listed = await list_notifications(
        ui.session, tenant_id=ui.tenant_id, user_id=ui.user_id, limit=NOTIFICATIONS_SHOWN
    )
    items = await _describe(ui, listed.items)
    return ui.render("composer/_notifications.html", {"notifications": items, "unread_count": listed.unread})


async def _describe(ui: Ui, notifications: Any) -> list[NotificationItem]:
    """Who did it, about whom, and the note's first words, for each notification."""
    actor_ids = {n.actor_id for n in notifications if n.actor_id is not None}
    message_ids = {n.message_id for n in notifications if n.message_id is not None}
    conversation_ids = {n.conversation_id for n in notifications if n.conversation_id is not None}
    actors = {
        row.id: row.name or handle_of(row.email)
        for row in (
            await ui.session.execute(
                select(User.id, User.name, User.email).where(
                    User.tenant_id == ui.tenant_id, User.id.in_(actor_ids)
                )
            )
        ).all()
    }
    bodies = {
        row.id: row.body
        for row in (
            await ui.session.execute(
                select(Message.id, Message.body).where(
                    Message.tenant_id == ui.tenant_id, Message.id.in_(message_ids)
                )
            )
        ).all()
    }
    contacts = {
        row.id: row.name or row.phone or row.email or "a contact"
        for row in (
            await ui.session.execute(
                select(Conversation.id, Contact.name, Contact.phone, Contact.email)
                .join(Contact, Contact.id == Conversation.contact_id)
                .where(Conversation.tenant_id == ui.tenant_id, Conversation.id.in_(conversation_ids))
            )
        ).all()
    }
    task_titles = await _task_titles(ui, {n.task_id for n in notifications if n.task_id is not None})
    items = []
    for n in notifications:
        assert isinstance(n, Notification)
        if n.task_id is not None:  # a task reminder or overdue notice (routing.task_timers)
            items.append(
                NotificationItem(
                    id=n.id,
                    unread=n.read_at is None,
                    actor="Parley",
                    contact="",
                    snippet=task_titles.get(n.task_id, ""),
                    href="/tasks",
                    created_local=ui.local(n.created_at),
                    what="task overdue:" if n.kind == NotificationKind.TASK_OVERDUE else "task due soon:",
                )
            )
            continue
        body = " ".join((bodies.get(n.message_id) or "").split())
        snippet = body if len(body) <= SNIPPET_LENGTH else body[: SNIPPET_LENGTH - 1] + "…"
        href = f"/inbox/c/{n.conversation_id}" + (f"#m{n.message_id}" if n.message_id else "")
        if n.kind == "webhook_disabled":  # gateway.outbound_webhooks: a notice, not a mention
            href, snippet = "/admin/webhooks", "A webhook failed repeatedly and was disabled."
        items.append(
            NotificationItem(
                id=n.id,
                unread=n.read_at is None,
                actor=actors.get(n.actor_id, "Someone") if n.actor_id is not None else "Parley",
                contact=contacts.get(n.conversation_id, "a conversation")
                if n.conversation_id is not None
                else "",
                snippet=snippet,
                href=href,
                created_local=ui.local(n.created_at),
                what="disabled a webhook" if n.kind == "webhook_disabled" else "mentioned you",
            )
        )
    return items


async def _task_titles(ui: Ui, task_ids: set[int]) -> dict[int, str]:
    if not task_ids:
        return {}
    rows = await ui.session.execute(
        select(Task.id, Task.title).where(Task.tenant_id == ui.tenant_id, Task.id.in_(task_ids))
    )
    return {row.id: row.title for row in rows.all()}


def setup_composer_routes(app: web.Application) -> None:
    """The composer's and the bell's routes (the composer sends through `/api/v1`)."""
    app.router.add_get("/compose/{conversation_id}", compose_page)
    app.router.add_get("/ui/conversations/{conversation_id}/composer", composer_fragment)
    app.router.add_post("/ui/conversations/{conversation_id}/uploads", upload_attachment)
    app.router.add_get("/ui/composer/people", mention_suggestions)
    app.router.add_get("/ui/notifications", notifications_fragment)
