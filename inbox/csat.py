"""CSAT surveys: asked on the customer's own channel when a conversation is resolved, rated by reply or link.

When a conversation is resolved (`conversation.updated` with status → resolved) and the tenant has
CSAT enabled, one survey goes out through the inbox's normal outbound path (`queue_outbound`):

- on WhatsApp inside the 24-hour window, a normal message; outside it, the tenant's approved
  template (none configured: no survey); on email an email in the thread; elsewhere a text;
- never to a contact who opted out of the channel, never twice for one resolution (a unique
  constraint on (conversation, resolved_at)).

The survey asks for "a number from 1 to 5" and carries a signed, expiring link to a public rating
page. A customer's reply that starts with a digit 1-5 ("4", "4 great service") within the reply
window records the rating and the rest as the comment. The reply is still stored as a message (it
is the customer's words), but it does not leave a conversation waiting for an agent: the
conversation it opened or reopened is resolved again at once, marked with the reason
`csat_reply`, and that resolution is not surveyed. A rating may be changed (by reply or link)
until the survey expires; each rating emits `csat.rated`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from itsdangerous import BadSignature, URLSafeSerializer
from sqlalchemy import Table, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from channels.base import Template
from channels.registry import channel_class
from crm_core.consent import has_opted_out
from crm_core.ticket_models import Ticket, TicketConversation
from inbox.actions import Actor, announce, apply_status
from inbox.csat_models import DEFAULT_QUESTION, CsatSettings, CsatSurvey
from inbox.lookup import InvalidInput, NotFoundError
from inbox.models import Conversation, ConversationStatus, Inbox, Message
from inbox.service import queue_outbound
from parley.db import Database, utcnow
from parley.outbox import Event, emit

logger = logging.getLogger(__name__)

REQUESTED_TOPIC = "csat.requested"
RATED_TOPIC = "csat.rated"
# The resolution a rating reply causes; it is not surveyed again.
CSAT_REPLY_REASON = "csat_reply"
SENDER_TYPE = "system"
RATING_PATH = "/csat/"
_SALT = "parley.csat.survey"

# "4", "4.", "4/5", "4 - great service", "5! thanks": a digit 1-5 not followed by another digit.
_REPLY = re.compile(r"^\s*([1-5])(?!\d)(?![.,]\d)(?:\s*/\s*5)?[\s.,:;!)\-]*(.*)$", re.DOTALL)

Clock = Callable[[], datetime]
PublicUrl = Callable[[], str | None]


def parse_rating_reply(text: str) -> tuple[int, str | None] | None:
    """(rating, comment or None) if the text answers a survey; None otherwise."""
    match = _REPLY.match(text or "")
    if match is None:
        return None
    comment = match.group(2).strip()
    return int(match.group(1)), comment[:2000] or None


def _serializer(secret_key: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret_key, salt=_SALT)


def survey_token(secret_key: str, survey_id: int) -> str:
    """The signed token of the rating page's link (expiry is the survey's `expires_at`)."""
    return str(_serializer(secret_key).dumps(survey_id))


def survey_id_of(secret_key: str, token: str) -> int:
    """The survey a token names; NotFoundError for a token not signed with our key."""
    try:
        value = _serializer(secret_key).loads(token)
    except BadSignature:
        raise NotFoundError("survey") from None
    if not isinstance(value, int):
        raise NotFoundError("survey")
    return value


def survey_text(question: str, link: str | None) -> str:
    text = f"{question}\nReply with a number from 1 to 5 (5 is best)."
    if link:
        text += f"\nOr rate us here: {link}"
    return text


async def settings_of(session: AsyncSession, tenant_id: int) -> CsatSettings:
    """The tenant's CSAT settings (defaults, disabled, if it never saved any)."""
    row = await session.get(CsatSettings, tenant_id)
    if row is None:
        row = CsatSettings(
            tenant_id=tenant_id,
            enabled=False,
            question=DEFAULT_QUESTION,
            whatsapp_template={},
            link_expiry_hours=168,
            reply_window_hours=24,
        )
    return row


@dataclass(frozen=True, slots=True)
class SurveyPlan:
    """How a survey would go out now: free-form, or as a template; `skip` says why not at all."""

    via: str | None
    template: Template | None = None
    skip: str | None = None


def plan_survey(
    inbox: Inbox, conversation: Conversation, settings: CsatSettings, now: datetime, *, opted_out: bool
) -> SurveyPlan:
    """Decide, without side effects, whether and how the survey can reach the customer."""
    channel = channel_class(inbox.channel)
    if not channel.capabilities.replies:
        return SurveyPlan(None, skip="replies_unsupported")
    if opted_out:
        return SurveyPlan(None, skip="recipient_opted_out")
    window = channel.capabilities.reply_window
    if window is None:
        return SurveyPlan("message")
    last = conversation.last_inbound_at
    if last is not None and now <= last + window:
        return SurveyPlan("message")
    configured = settings.whatsapp_template or {}
    if not channel.capabilities.templates or not configured.get("name"):
        return SurveyPlan(None, skip="outside_reply_window")
    return SurveyPlan(
        "template",
        Template(
            name=str(configured["name"]),
            language=configured.get("language") or channel.default_template_language,
            variables={str(k): str(v) for k, v in (configured.get("variables") or {}).items()},
        ),
    )


async def ticket_of(session: AsyncSession, conversation_id: int) -> int | None:
    """The newest ticket linked to the conversation."""
    return (
        await session.execute(
            select(TicketConversation.ticket_id)
            .join(Ticket, Ticket.id == TicketConversation.ticket_id)
            .where(TicketConversation.conversation_id == conversation_id)
            .order_by(Ticket.id.desc())
            .limit(1)
        )
    ).scalar()


async def record_rating(
    session: AsyncSession, survey: CsatSurvey, rating: int, comment: str | None, *, via: str, now: datetime
) -> None:
    """Store (or change) the survey's rating and emit `csat.rated`; InvalidInput once it expired."""
    if not 1 <= rating <= 5:
        raise InvalidInput("invalid_rating", "rating: give a number from 1 to 5.")
    if now > survey.expires_at:
        raise InvalidInput("survey_expired", "This survey has expired.")
    survey.rating, survey.comment, survey.rated_at, survey.rated_via = rating, comment, now, via
    await session.flush()
    await emit(
        session,
        survey.tenant_id,
        (
            RATED_TOPIC,
            {
                "survey_id": survey.id,
                "conversation_id": survey.conversation_id,
                "contact_id": survey.contact_id,
                "ticket_id": await ticket_of(session, survey.conversation_id),
                "rating": rating,
                "comment": comment,
                "agent_id": survey.agent_id,
            },
        ),
    )


async def survey_by_token(session: AsyncSession, secret_key: str, token: str) -> CsatSurvey:
    """The survey behind a rating link; NotFoundError for a forged or unknown one."""
    survey = await session.get(CsatSurvey, survey_id_of(secret_key, token))
    if survey is None:
        raise NotFoundError("survey")
    return survey


class CsatSurveyor:
    """The outbox handlers that send surveys on resolution and read ratings from replies."""

    def __init__(
        self, db: Database, secret_key: str, public_url: PublicUrl, *, clock: Clock = utcnow
    ) -> None:
        self.db = db
        self.secret_key = secret_key
        self.public_url = public_url
        self.now = clock

    def link(self, survey_id: int) -> str | None:
        base = self.public_url()
        if not base:
            return None
        return f"{base.rstrip('/')}{RATING_PATH}{survey_token(self.secret_key, survey_id)}"

    async def on_conversation_updated(self, event: Event) -> None:
        """`conversation.updated` to resolved: send the survey (once per resolution)."""
        status = event.payload.get("changes", {}).get("status") or {}
        if (
            status.get("new") != ConversationStatus.RESOLVED
            or event.payload.get("reason") == CSAT_REPLY_REASON
        ):
            return
        if event.tenant_id is None:
            return
        async with self.db.transaction() as session:
            await self.send_survey(session, event.tenant_id, int(event.payload["conversation_id"]))

    async def send_survey(self, session: AsyncSession, tenant_id: int, conversation_id: int) -> int | None:
        """Queue the survey for the conversation's current resolution; its id, or None if none was sent."""
        settings = await settings_of(session, tenant_id)
        if not settings.enabled:
            return None
        conversation = (
            await session.execute(
                select(Conversation).where(
                    Conversation.id == conversation_id, Conversation.tenant_id == tenant_id
                )
            )
        ).scalar_one_or_none()
        # Reopened before this ran: that resolution is over, nothing to ask about.
        if conversation is None or conversation.status != ConversationStatus.RESOLVED:
            return None
        if conversation.resolved_at is None or conversation.merged_into_id is not None:
            return None
        inbox = await session.get(Inbox, conversation.inbox_id)
        assert inbox is not None
        now = self.now()
        channel = channel_class(inbox.channel)
        opted_out = await has_opted_out(
            session, contact_id=conversation.contact_id, channel=channel.consent_channel
        )
        plan = plan_survey(inbox, conversation, settings, now, opted_out=opted_out)
        if plan.via is None:
            logger.info("no CSAT survey for conversation %s: %s", conversation.id, plan.skip)
            return None
        conn = await session.connection()
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        table = cast(Table, CsatSurvey.__table__)
        survey_id = (
            await conn.execute(
                dialect_insert(table)
                .values(
                    tenant_id=tenant_id,
                    conversation_id=conversation.id,
                    contact_id=conversation.contact_id,
                    inbox_id=conversation.inbox_id,
                    channel=inbox.channel,
                    resolved_at=conversation.resolved_at,
                    agent_id=conversation.assignee_id,
                    sent_via=plan.via,
                    sent_at=now,
                    expires_at=now + timedelta(hours=settings.link_expiry_hours),
                )
                .on_conflict_do_nothing()
                .returning(table.c.id)
            )
        ).scalar()
        if survey_id is None:  # this resolution was surveyed already
            return None
        survey_id = int(survey_id)
        link = self.link(survey_id)
        template = plan.template
        if template is not None:
            fill = {"{link}": link or "", "{question}": settings.question}
            variables = {}
            for key, value in template.variables.items():
                for placeholder, text in fill.items():
                    value = value.replace(placeholder, text)
                variables[key] = value
            template = Template(template.name, template.language, variables)
        message = await queue_outbound(
            session,
            conversation,
            body=survey_text(settings.question, link),
            sender_type=SENDER_TYPE,
            sender_id=None,
            template=template,
        )
        survey = await session.get(CsatSurvey, survey_id)
        assert survey is not None
        survey.message_id = message.id
        await session.flush()
        await emit(
            session,
            tenant_id,
            (
                REQUESTED_TOPIC,
                {
                    "survey_id": survey_id,
                    "conversation_id": conversation.id,
                    "contact_id": conversation.contact_id,
                    "channel": inbox.channel,
                },
            ),
        )
        return survey_id

    async def on_message_received(self, event: Event) -> None:
        """`message.received`: a reply starting with 1-5 soon after a survey is its rating."""
        if event.tenant_id is None:
            return
        async with self.db.transaction() as session:
            message = (
                await session.execute(
                    select(Message).where(
                        Message.id == int(event.payload["message_id"]), Message.tenant_id == event.tenant_id
                    )
                )
            ).scalar_one_or_none()
            if message is None or message.direction != "inbound" or message.private:
                return
            if (message.extra or {}).get("button_reply"):  # "2" picking a bot's option is not a rating
                return
            parsed = parse_rating_reply(message.body)
            if parsed is None:
                return
            conversation = await session.get(Conversation, message.conversation_id)
            assert conversation is not None
            settings = await settings_of(session, event.tenant_id)
            survey = (
                await session.execute(
                    select(CsatSurvey)
                    .where(
                        CsatSurvey.tenant_id == event.tenant_id,
                        CsatSurvey.contact_id == conversation.contact_id,
                        CsatSurvey.inbox_id == conversation.inbox_id,
                        CsatSurvey.sent_at <= message.created_at,
                        CsatSurvey.sent_at
                        >= message.created_at - timedelta(hours=settings.reply_window_hours),
                    )
                    .order_by(CsatSurvey.sent_at.desc(), CsatSurvey.id.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            if survey is None or survey.expires_at < message.created_at:
                return
            if survey.rated_at is not None and survey.rated_at >= message.created_at:
                return  # this reply (or a later rating) was recorded already
            await record_rating(session, survey, parsed[0], parsed[1], via="reply", now=message.created_at)
            await self._quiet(session, conversation, survey)

    async def _quiet(self, session: AsyncSession, conversation: Conversation, survey: CsatSurvey) -> None:
        """Resolve again the conversation the rating reply opened or reopened, if it holds nothing else."""
        if conversation.status == ConversationStatus.RESOLVED:
            return
        since_survey = (
            await session.execute(
                select(func.count(Message.id)).where(
                    Message.conversation_id == conversation.id,
                    Message.created_at > survey.sent_at,
                    Message.direction == "inbound",
                )
            )
        ).scalar_one()
        if since_survey != 1:
            return
        changes = await apply_status(session, conversation, ConversationStatus.RESOLVED, now=self.now())
        if changes:
            await announce(session, conversation, changes, actor=Actor("system"), reason=CSAT_REPLY_REASON)


def csat_subscribers(surveyor: CsatSurveyor) -> dict[str, list[Callable[[Event], Any]]]:
    """The topics CSAT follows."""
    return {
        "conversation.updated": [surveyor.on_conversation_updated],
        "message.received": [surveyor.on_message_received],
    }
