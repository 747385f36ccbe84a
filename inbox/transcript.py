"""A conversation's transcript, mailed as plain text with an HTML alternative.

The HTML is rendered with autoescaping on: a customer's `<script>` arrives as text. By default
the transcript holds what the customer saw (no notes, no failed messages); notes are included only
on request, and only for a recipient who is a user of the same tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from jinja2 import Environment
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.models import Contact
from inbox.lookup import InvalidInput, conversation_with_inbox
from inbox.models import Message, MessageStatus
from parley.db import Database
from parley.mailer import Mailer
from parley.models import User
from parley.outbox import emit

TRANSCRIPT_SENT_TOPIC = "conversation.transcript_sent"

_HTML = Environment(autoescape=True).from_string(
    """<!doctype html>
<html><head><meta charset="utf-8"><title>{{ subject }}</title></head>
<body style="font-family: sans-serif">
<h1 style="font-size: 1.2em">{{ subject }}</h1>
{% for line in lines %}
<div style="margin: 0 0 1em;{% if line.private %} background: #fff8dc;{% endif %}">
<div style="color: #666; font-size: 0.85em">{{ line.at }} · {{ line.who }}
{%- if line.private %} · internal note{% endif %}</div>
<div style="white-space: pre-wrap">{{ line.body }}</div>
{% for url in line.attachments %}<div><a href="{{ url }}">{{ url }}</a></div>{% endfor %}
</div>
{% endfor %}
</body></html>
"""
)


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    at: str
    who: str
    body: str
    attachments: tuple[str, ...]
    private: bool


@dataclass(frozen=True, slots=True)
class Transcript:
    subject: str
    text: str
    html: str
    message_count: int


def _when(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


async def build_transcript(
    session: AsyncSession, *, tenant_id: int, conversation_id: int, include_notes: bool = False
) -> Transcript:
    """The conversation's messages, oldest first, as text and HTML; `NotFoundError` if not the tenant's."""
    conversation, inbox = await conversation_with_inbox(session, tenant_id, conversation_id)
    contact = (
        await session.execute(select(Contact).where(Contact.id == conversation.contact_id))
    ).scalar_one()
    stmt = select(Message).where(
        Message.conversation_id == conversation.id, Message.status != MessageStatus.FAILED
    )
    if not include_notes:
        stmt = stmt.where(Message.private.is_(False))
    messages = list((await session.execute(stmt.order_by(Message.id))).scalars())
    user_ids = {m.sender_id for m in messages if m.sender_type == "user" and m.sender_id is not None}
    users = (
        dict((await session.execute(select(User.id, User.name).where(User.id.in_(user_ids)))).tuples().all())
        if user_ids
        else {}
    )
    customer = contact.name or contact.email or contact.phone or "Customer"

    def who(message: Message) -> str:
        if message.sender_type == "contact":
            return customer
        if message.sender_type == "user":
            return (users.get(message.sender_id) if message.sender_id is not None else None) or "Agent"
        return message.sender_type.capitalize()

    lines = [
        TranscriptLine(
            at=_when(m.created_at),
            who=who(m),
            body=m.body,
            attachments=tuple(a["url"] for a in m.attachments if isinstance(a, dict) and a.get("url")),
            private=m.private,
        )
        for m in messages
    ]
    subject = f"Conversation #{conversation.id} with {customer} ({inbox.name})"
    text_parts = [subject, "=" * min(len(subject), 78), ""]
    for line in lines:
        note = " (internal note)" if line.private else ""
        text_parts.append(f"[{line.at}] {line.who}{note}:")
        text_parts.append(line.body)
        text_parts.extend(f"Attachment: {url}" for url in line.attachments)
        text_parts.append("")
    return Transcript(
        subject=subject,
        text="\n".join(text_parts),
        html=_HTML.render(subject=subject, lines=lines),
        message_count=len(lines),
    )


async def prepare_transcript(
    session: AsyncSession, *, tenant_id: int, conversation_id: int, to: str, include_notes: bool = False
) -> Transcript:
    """The transcript for `to`; notes only for a user of the tenant (`InvalidInput` otherwise)."""
    if include_notes:
        internal = (
            await session.execute(
                select(User.id).where(User.tenant_id == tenant_id, func.lower(User.email) == to.lower())
            )
        ).first()
        if internal is None:
            raise InvalidInput(
                "notes_are_internal",
                "include_notes: internal notes are sent only to a user of this workspace; "
                f"{to} is not one. Send the transcript without notes.",
            )
    return await build_transcript(
        session, tenant_id=tenant_id, conversation_id=conversation_id, include_notes=include_notes
    )


async def deliver_transcript(
    db: Database,
    mailer: Mailer,
    transcript: Transcript,
    *,
    tenant_id: int,
    user_id: int,
    conversation_id: int,
    to: str,
    include_notes: bool,
) -> None:
    """Mail a prepared transcript, then record `conversation.transcript_sent`.

    Call it outside any transaction: the smarthost may take seconds, and on SQLite an open
    transaction holds the write lock every webhook waits for. `parley.mailer.MailNotSent` if the
    smarthost refuses it (nothing is recorded then).
    """
    await mailer.send(to, transcript.subject, transcript.text, transcript.html)
    async with db.transaction() as session:
        await emit(
            session,
            tenant_id,
            (
                TRANSCRIPT_SENT_TOPIC,
                {
                    "conversation_id": conversation_id,
                    "to": to,
                    "include_notes": include_notes,
                    "sent_by": user_id,
                    "messages": transcript.message_count,
                },
            ),
        )
