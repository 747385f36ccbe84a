"""Request and response bodies of the composer's API: notes, notifications, canned responses,
reply options and transcripts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import Field, StringConstraints, field_validator

from gateway.api.schemas import (
    MAX_MESSAGE_LENGTH,
    Id,
    MessageOut,
    Name,
    Page,
    PageQuery,
    RequestBody,
    ResponseBody,
)
from inbox.canned import MAX_CONTENT_LENGTH

# --- notes and notifications --------------------------------------------------------------------


class NoteCreate(RequestBody):
    body: Annotated[str, StringConstraints(min_length=1, max_length=MAX_MESSAGE_LENGTH)] = Field(
        description="The note; `@handle` (a user's email before the @) mentions a user of the workspace."
    )
    mentions: list[Id] = Field(
        default_factory=list, max_length=50, description="Users to notify besides the `@handles` in the body."
    )

    @field_validator("body")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a note needs some text")
        return value


class NoteOut(MessageOut):
    notified_user_ids: list[int] = Field(description="The users who got a notification (never the author).")


class NotificationOut(ResponseBody):
    id: int
    kind: str = Field(
        description="`mention`: mentioned in a note; `task_reminder`, `task_overdue`: about `task_id`."
    )
    conversation_id: int | None
    message_id: int | None
    actor_id: int | None = Field(description="Who caused it (the note's author).")
    task_id: int | None = None
    created_at: datetime
    read_at: datetime | None


class NotificationList(Page):
    data: list[NotificationOut]
    unread_count: int = Field(description="All of your unread notifications, not just this page's.")


class ReadAllOut(ResponseBody):
    marked_read: int = Field(description="How many notifications were unread.")


# --- canned responses ---------------------------------------------------------------------------

ShortCode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=65)]
Content = Annotated[str, StringConstraints(min_length=1, max_length=MAX_CONTENT_LENGTH)]

_CONTENT_HELP = (
    "Sandboxed Jinja2: `{{ contact.first_name | default('there') }}`. Variables: contact (name, "
    "first_name, last_name, email, phone, company), agent (name, first_name, email), conversation "
    "(id, inbox_name); filters default, upper, lower, title, capitalize, trim, truncate; `{% if %}`."
)


class CannedQuery(PageQuery):
    q: str | None = Field(
        None, max_length=200, description="Start of the short code (with or without `/`) or of the title."
    )


class CannedCreate(RequestBody):
    short_code: ShortCode = Field(description="What follows `/` in the composer: letters, digits, - and _.")
    title: Name
    content: Content = Field(description=_CONTENT_HELP)


class CannedUpdate(RequestBody):
    short_code: ShortCode | None = None
    title: Name | None = None
    content: Content | None = Field(None, description=_CONTENT_HELP)


class CannedOut(ResponseBody):
    id: int
    short_code: str
    title: str
    content: str
    created_by: int | None
    created_at: datetime
    updated_at: datetime


class CannedList(Page):
    data: list[CannedOut]


class RenderedOut(ResponseBody):
    canned_response_id: int
    short_code: str
    text: str = Field(description="Plain text for the message body (never HTML).")


# --- reply options ------------------------------------------------------------------------------


class ReplyWindowOut(ResponseBody):
    open: bool
    closes_at: datetime | None = Field(description="When free-form replies stop being delivered.")


class TemplateOptionOut(ResponseBody):
    name: str = Field(description="Send it as `template.name` (Twilio: the Content SID).")
    language: str | None
    variables: list[str] = Field(description="The placeholders to fill, as `template.variables` keys.")
    body: str = Field(description="A preview of the template's text.")


class ReplyOptionsOut(ResponseBody):
    channel: str
    can_reply: bool = Field(description="Whether a free-form reply would be delivered now.")
    reason: str | None = Field(description="Why not, for a person.")
    reason_code: str | None = Field(
        description="`replies_unsupported`, `recipient_opted_out` or `outside_reply_window`."
    )
    window: ReplyWindowOut | None = Field(description="The channel's reply window; null if it has none.")
    can_send_template: bool
    templates: list[TemplateOptionOut] = Field(
        description="The inbox's approved templates (`templates` setting)."
    )


# --- transcripts --------------------------------------------------------------------------------


class TranscriptRequest(RequestBody):
    email: Annotated[str, StringConstraints(max_length=320)]
    include_notes: bool = Field(
        False, description="Include agents' notes; only for an address of a user of this workspace."
    )

    @field_validator("email")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            return validate_email(value.strip(), check_deliverability=False).normalized
        except EmailNotValidError as e:
            raise ValueError(f"{value!r} is not an email address: {e}") from None


class TranscriptOut(ResponseBody):
    sent_to: str
    include_notes: bool
    message_count: int
