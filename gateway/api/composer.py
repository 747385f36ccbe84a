"""The composer's API: private notes with @mentions, notifications, canned responses, reply options
and transcripts by email. The work is done by the services in `inbox/`; these routes translate."""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Iterator

from gateway.api.composer_schemas import (
    CannedCreate,
    CannedList,
    CannedOut,
    CannedQuery,
    CannedUpdate,
    NoteCreate,
    NoteOut,
    NotificationList,
    NotificationOut,
    ReadAllOut,
    RenderedOut,
    ReplyOptionsOut,
    ReplyWindowOut,
    TemplateOptionOut,
    TranscriptOut,
    TranscriptRequest,
)
from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable
from gateway.api.schemas import MessageOut, PageQuery
from gateway.errors import ApiError, NotFound
from gateway.keys import DB, MAILER, NOTIFIER
from inbox import canned, notes
from inbox.lookup import InvalidInput, NotFoundError
from inbox.reply_options import reply_options
from inbox.transcript import deliver_transcript, prepare_transcript
from parley.mailer import MailNotSent

routes = RouteTable("composer")


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """The services' errors as API errors: another tenant's row is a 404, a refusal a 422."""
    try:
        yield
    except NotFoundError as e:
        raise NotFound(e.what) from None
    except InvalidInput as e:
        raise ApiError(422, e.code, e.message) from None


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ApiError(400, "invalid_cursor", "The cursor is not one this endpoint returned.") from None


# --- notes --------------------------------------------------------------------------------------


@routes.post("/conversations/{conversation_id}/notes", allow=Permission.SEND_MESSAGES)
async def add_note(call: ApiRequest, *, conversation_id: int, body: NoteCreate) -> NoteOut:
    """Add a private note: agents see it in the thread, the customer never does.

    Users named in `mentions` or as `@handle` in the body (the part of their email before the @,
    any case) are notified, except the author; unknown handles are ignored, unknown ids answer
    422 `unknown_users`. Announced as `note.created` and one `notification.created` per user.
    """
    with _translated():
        added = await notes.add_note(
            call.session,
            tenant_id=call.tenant_id,
            user_id=call.principal.user_id,
            conversation_id=conversation_id,
            body=body.body,
            mentions=body.mentions,
        )
    call.notify_after_commit()
    return NoteOut(
        **MessageOut.model_validate(added.message).model_dump(),
        notified_user_ids=list(added.notified_user_ids),
    )


# --- notifications ------------------------------------------------------------------------------


def _notification_cursor(cursor: str | None) -> tuple[int, int] | None:
    if cursor is None:
        return None
    group, _, last_id = _decode(cursor).partition(":")
    if group not in ("0", "1") or not last_id.isdigit() or len(last_id) > 19:
        raise ApiError(400, "invalid_cursor", "The cursor is not one this endpoint returned.")
    return int(group), int(last_id)


@routes.get("/notifications", allow=None)
async def list_notifications(call: ApiRequest, *, query: PageQuery) -> NotificationList:
    """List your notifications: unread first, newest first within each."""
    page = await notes.list_notifications(
        call.session,
        tenant_id=call.tenant_id,
        user_id=call.principal.user_id,
        limit=query.limit,
        after=_notification_cursor(query.cursor),
    )
    return NotificationList(
        data=[NotificationOut.model_validate(n) for n in page.items],
        next_cursor=None if page.after is None else _encode(f"{page.after[0]}:{page.after[1]}"),
        unread_count=page.unread,
    )


@routes.post("/notifications/{notification_id}/read", allow=None, status=200)
async def read_notification(call: ApiRequest, *, notification_id: int) -> NotificationOut:
    """Mark one of your notifications read (someone else's answers 404)."""
    with _translated():
        notification = await notes.mark_read(
            call.session,
            tenant_id=call.tenant_id,
            user_id=call.principal.user_id,
            notification_id=notification_id,
        )
    call.notify_after_commit()
    return NotificationOut.model_validate(notification)


@routes.post("/notifications/read-all", allow=None, status=200)
async def read_all_notifications(call: ApiRequest) -> ReadAllOut:
    """Mark all your notifications read."""
    marked = await notes.mark_all_read(call.session, tenant_id=call.tenant_id, user_id=call.principal.user_id)
    if marked:
        call.notify_after_commit()
    return ReadAllOut(marked_read=marked)


# --- canned responses ---------------------------------------------------------------------------


@routes.get("/canned-responses", allow=Permission.SEND_MESSAGES)
async def list_canned_responses(call: ApiRequest, *, query: CannedQuery) -> CannedList:
    """List canned responses by short code; `q` finds those whose short code or title starts with it."""
    rows, after = await canned.list_canned(
        call.session,
        tenant_id=call.tenant_id,
        q=query.q,
        limit=query.limit,
        after=None if query.cursor is None else _decode(query.cursor),
    )
    return CannedList(
        data=[CannedOut.model_validate(r) for r in rows],
        next_cursor=None if after is None else _encode(after),
    )


@routes.get("/canned-responses/{canned_response_id}", allow=Permission.SEND_MESSAGES)
async def get_canned_response(call: ApiRequest, *, canned_response_id: int) -> CannedOut:
    """Get a canned response."""
    with _translated():
        return CannedOut.model_validate(
            await canned.get_canned(call.session, call.tenant_id, canned_response_id)
        )


@routes.post("/canned-responses", allow=Permission.MANAGE_CANNED_RESPONSES)
async def create_canned_response(call: ApiRequest, *, body: CannedCreate) -> CannedOut:
    """Create a canned response.

    The content is checked as a template (422 `invalid_template`, naming the line); the short code
    must be free in the workspace (422 `short_code_taken`).
    """
    with _translated():
        created = await canned.create_canned(
            call.session,
            tenant_id=call.tenant_id,
            user_id=call.principal.user_id,
            short_code=body.short_code,
            title=body.title,
            content=body.content,
        )
    call.notify_after_commit()
    return CannedOut.model_validate(created)


@routes.patch("/canned-responses/{canned_response_id}", allow=Permission.MANAGE_CANNED_RESPONSES)
async def update_canned_response(
    call: ApiRequest, *, canned_response_id: int, body: CannedUpdate
) -> CannedOut:
    """Change a canned response's short code, title or content (checked as on create)."""
    with _translated():
        updated = await canned.update_canned(
            call.session,
            tenant_id=call.tenant_id,
            canned_id=canned_response_id,
            short_code=body.short_code,
            title=body.title,
            content=body.content,
        )
    call.notify_after_commit()
    return CannedOut.model_validate(updated)


@routes.delete("/canned-responses/{canned_response_id}", allow=Permission.MANAGE_CANNED_RESPONSES)
async def delete_canned_response(call: ApiRequest, *, canned_response_id: int) -> None:
    """Delete a canned response."""
    with _translated():
        await canned.delete_canned(call.session, tenant_id=call.tenant_id, canned_id=canned_response_id)
    call.notify_after_commit()


@routes.post(
    "/conversations/{conversation_id}/canned-responses/{canned_response_id}/render",
    allow=Permission.SEND_MESSAGES,
    status=200,
    errors=[422],
)
async def render_canned_response(
    call: ApiRequest, *, conversation_id: int, canned_response_id: int
) -> RenderedOut:
    """Fill a canned response in for this conversation's contact, you and the conversation.

    Missing values are empty (or the template's `| default(...)`). A template that reaches for
    anything but those fields, or fails, answers 422 `invalid_template` saying why.
    """
    with _translated():
        rendered = await canned.render_canned(
            call.session,
            tenant_id=call.tenant_id,
            user_id=call.principal.user_id,
            conversation_id=conversation_id,
            canned_id=canned_response_id,
        )
    return RenderedOut(
        canned_response_id=rendered.canned.id, short_code=rendered.canned.short_code, text=rendered.text
    )


# --- reply options and transcripts --------------------------------------------------------------


@routes.get("/conversations/{conversation_id}/reply-options", allow=Permission.READ_CONVERSATIONS)
async def get_reply_options(call: ApiRequest, *, conversation_id: int) -> ReplyOptionsOut:
    """What can be sent now: a free-form reply, or (WhatsApp outside its 24-hour window) only a template."""
    with _translated():
        options = await reply_options(call.session, tenant_id=call.tenant_id, conversation_id=conversation_id)
    return ReplyOptionsOut(
        channel=options.channel,
        can_reply=options.can_reply,
        reason=options.reason,
        reason_code=options.reason_code,
        window=None
        if options.window is None
        else ReplyWindowOut(open=options.window.open, closes_at=options.window.closes_at),
        can_send_template=options.can_send_template,
        templates=[TemplateOptionOut.model_validate(t) for t in options.templates],
    )


@routes.post(
    "/conversations/{conversation_id}/transcript", allow=Permission.SEND_MESSAGES, status=200, errors=[502]
)
async def email_transcript(
    call: ApiRequest, *, conversation_id: int, body: TranscriptRequest
) -> TranscriptOut:
    """Email the conversation's transcript (text and HTML) through Parley's mailer (`PARLEY_SMTP_URL`).

    Only what the customer saw, unless `include_notes` (allowed for an address of a user of this
    workspace, else 422 `notes_are_internal`). A refusal by the mail server answers 502 `mail_not_sent`.
    """
    with _translated():
        transcript = await prepare_transcript(
            call.session,
            tenant_id=call.tenant_id,
            conversation_id=conversation_id,
            to=body.email,
            include_notes=body.include_notes,
        )

    async def deliver() -> None:
        # After the commit: the transaction (SQLite's write lock) is not held while the smarthost answers.
        try:
            await deliver_transcript(
                call.app[DB],
                call.app[MAILER],
                transcript,
                tenant_id=call.tenant_id,
                user_id=call.principal.user_id,
                conversation_id=conversation_id,
                to=body.email,
                include_notes=body.include_notes,
            )
        except MailNotSent as e:
            raise ApiError(
                502, "mail_not_sent", f"The mail server did not take the transcript: {e}"
            ) from None
        call.app[NOTIFIER].notify()

    call.after_commit(deliver)
    return TranscriptOut(
        sent_to=body.email, include_notes=body.include_notes, message_count=transcript.message_count
    )
