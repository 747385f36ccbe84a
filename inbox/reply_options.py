"""What the composer can send in a conversation now: a free-form reply, or only a template.

WhatsApp delivers free-form messages only within 24 hours of the customer's last message
(`Capabilities.reply_window`); outside it the composer offers the inbox's approved templates
(its `templates` setting) instead of letting the agent write a reply that would fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from channels.registry import channel_class
from crm_core.consent import withdrawn
from inbox.lookup import conversation_with_inbox
from parley.db import utcnow


@dataclass(frozen=True, slots=True)
class ReplyWindow:
    open: bool
    closes_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReplyOptions:
    channel: str
    can_reply: bool
    # Why not, for a person, and as a stable code (`replies_unsupported`, `outside_reply_window`…).
    reason: str | None
    reason_code: str | None
    window: ReplyWindow | None
    can_send_template: bool
    templates: list[dict[str, Any]] = field(default_factory=list)


def _templates(configured: Any, default_language: str | None) -> list[dict[str, Any]]:
    """The inbox's templates as the composer lists them (settings written before they were checked too)."""
    if not isinstance(configured, list):
        return []
    return [
        {
            "name": t["name"],
            "language": t.get("language", default_language),
            "variables": [str(v) for v in t.get("variables") or ()],
            "body": str(t.get("body") or ""),
        }
        for t in configured
        if isinstance(t, dict) and isinstance(t.get("name"), str)
    ]


async def reply_options(
    session: AsyncSession, *, tenant_id: int, conversation_id: int, now: datetime | None = None
) -> ReplyOptions:
    """What can be sent in the conversation now; `NotFoundError` if it is not the tenant's."""
    conversation, inbox = await conversation_with_inbox(session, tenant_id, conversation_id)
    channel = channel_class(inbox.channel)
    capabilities = channel.capabilities
    templates = _templates(inbox.settings.get("templates"), channel.default_template_language)
    if not capabilities.templates:
        templates = []
    if not capabilities.replies:
        return ReplyOptions(
            channel=inbox.channel,
            can_reply=False,
            reason=f"{inbox.channel} cannot carry a written reply (a phone line); reach the contact on "
            "another channel.",
            reason_code="replies_unsupported",
            window=None,
            can_send_template=False,
        )
    if await withdrawn(
        session, contact_id=conversation.contact_id, channel=channel.consent_channel, purpose="transactional"
    ):
        return ReplyOptions(
            channel=inbox.channel,
            can_reply=False,
            reason=f"The contact opted out of {channel.consent_channel} messages; nothing can be sent "
            "until they opt in again.",
            reason_code="recipient_opted_out",
            window=None,
            can_send_template=False,
        )
    window: ReplyWindow | None = None
    reason = reason_code = None
    can_reply = True
    if capabilities.reply_window is not None:
        last = conversation.last_inbound_at
        closes_at = None if last is None else last + capabilities.reply_window
        is_open = closes_at is not None and (now or utcnow()) <= closes_at
        window = ReplyWindow(open=is_open, closes_at=closes_at)
        if not is_open:
            can_reply = False
            reason_code = "outside_reply_window"
            hours = f"{capabilities.reply_window.total_seconds() / 3600:g}"
            since = "has not written yet" if last is None else f"last wrote at {last.isoformat()}"
            reason = (
                f"The customer {since}; {inbox.channel} delivers free-form replies only within {hours} "
                "hours of the customer's last message. Send an approved template instead."
            )
    return ReplyOptions(
        channel=inbox.channel,
        can_reply=can_reply,
        reason=reason,
        reason_code=reason_code,
        window=window,
        can_send_template=capabilities.templates,
        templates=templates,
    )
