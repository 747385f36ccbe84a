"""`/conversations` and their messages: triage (status, assignee) and replies."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from channels.base import Attachment, Button, Capabilities, Template
from channels.registry import channel_class
from crm_core.consent import withdrawn
from crm_core.models import Contact
from gateway.api.conversation_actions import action_errors, conversation_out, filters_from
from gateway.api.pagination import fetch_page
from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable
from gateway.api.schemas import (
    ContactSummary,
    ConversationDetail,
    ConversationList,
    ConversationListItem,
    ConversationOut,
    ConversationQuery,
    ConversationUpdate,
    LabelSummary,
    MessageCreate,
    MessageList,
    MessageOut,
    MessageQuery,
)
from gateway.errors import ApiError, NotFound
from inbox import listing
from inbox.actions import UPDATED_TOPIC, apply_priority, apply_status
from inbox.models import Conversation, ConversationStatus, Inbox, Message
from inbox.service import queue_outbound
from parley.db import utcnow
from parley.models import User
from parley.outbox import emit

routes = RouteTable("conversations")

Changes = dict[str, dict[str, Any]]


async def _get(call: ApiRequest, conversation_id: int) -> Conversation:
    conversation = (
        await call.session.execute(
            select(Conversation).where(
                Conversation.id == conversation_id, Conversation.tenant_id == call.tenant_id
            )
        )
    ).scalar_one_or_none()
    if conversation is None:
        raise NotFound("conversation")
    return conversation


async def _set_status(call: ApiRequest, conversation: Conversation, status: ConversationStatus) -> Changes:
    """Move the conversation to `status`, keeping `resolved_at` in step; 409 if reopening would make two."""
    with action_errors():
        return await apply_status(call.session, conversation, status)


async def _announce(call: ApiRequest, conversation: Conversation, changes: Changes) -> None:
    """Write the changes and the `conversation.updated` event in the caller's transaction."""
    await call.session.flush()
    await emit(
        call.session,
        call.tenant_id,
        (
            UPDATED_TOPIC,
            {
                "conversation_id": conversation.id,
                "inbox_id": conversation.inbox_id,
                "contact_id": conversation.contact_id,
                "changes": changes,
                "changed_by": {"type": "user", "id": call.principal.user_id},
            },
        ),
    )
    call.notify_after_commit()


@routes.get("/conversations", allow=Permission.READ_CONVERSATIONS, errors=[400])
async def list_conversations(call: ApiRequest, *, query: ConversationQuery) -> ConversationList:
    """List conversations as the agents' inbox does, newest first.

    `view`: `mine` (assigned to the caller), `unassigned` or `all`. Filter by `status`, `inbox_id`,
    `channel`, `team_id`, `label`, `priority`, `contact_id` and `assignee_id` (`none`: unassigned).
    `sort`: `newest`, `waiting` (the oldest unanswered customer message first), `priority` or
    `sla_due` (the soonest SLA due first). Each
    conversation comes with its contact's name, inbox, last message, labels and the caller's
    unread count; `GET /conversations/counts` counts the views.
    """
    try:
        page = await listing.list_conversations(
            call.session,
            tenant_id=call.tenant_id,
            user_id=call.principal.user_id,
            view=query.view,
            filters=filters_from(call, query),
            sort=query.sort,
            limit=query.limit,
            cursor=query.cursor,
        )
    except listing.InvalidCursor:
        raise ApiError(
            400, "invalid_cursor", "The cursor is not one this endpoint returned (for this sort)."
        ) from None
    return ConversationList(
        data=[
            ConversationListItem(
                **(
                    dict(ConversationOut.model_validate(row.conversation))
                    | {
                        "labels": [LabelSummary(id=t.id, name=t.name, color=t.color) for t in row.labels],
                        "unread_count": row.unread_count,
                        "contact_name": row.contact_name,
                        "inbox_name": row.inbox_name,
                        "channel": row.channel,
                        "assignee_name": row.assignee_name,
                        "last_message_preview": row.last_message_preview,
                        "waiting_since": row.waiting_since,
                    }
                )
            )
            for row in page.rows
        ],
        next_cursor=page.next_cursor,
    )


@routes.get("/conversations/{conversation_id}", allow=Permission.READ_CONVERSATIONS)
async def get_conversation(call: ApiRequest, *, conversation_id: int) -> ConversationDetail:
    """Get a conversation with a summary of its contact and its last message."""
    conversation = await _get(call, conversation_id)
    contact = (
        await call.session.execute(select(Contact).where(Contact.id == conversation.contact_id))
    ).scalar_one()
    last = (
        await call.session.execute(
            select(Message)
            .where(Message.conversation_id == conversation.id)
            .order_by(Message.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    out = await conversation_out(call.session, conversation, call.principal.user_id)
    return ConversationDetail(
        **dict(out),
        contact=ContactSummary.model_validate(contact),
        last_message=MessageOut.model_validate(last) if last is not None else None,
    )


@routes.patch("/conversations/{conversation_id}", allow=Permission.UPDATE_CONVERSATIONS, errors=[409])
async def update_conversation(
    call: ApiRequest, *, conversation_id: int, body: ConversationUpdate
) -> ConversationOut:
    """Change a conversation's status, assignee or priority, or snooze it.

    Resolving sets `resolved_at`, reopening clears it; reopening answers 409 if the contact already
    has another unresolved conversation in the inbox. `status: snoozed` takes an optional
    `snoozed_until` in the future (422 `invalid_snooze` otherwise); without it the conversation
    sleeps until the customer next writes. The assignee must be a user of the same tenant (422
    `invalid_assignee`); null unassigns. The changes are announced as one `conversation.updated`.
    """
    conversation = await _get(call, conversation_id)
    changes: Changes = {}
    status = body.status
    if status is None and "snoozed_until" in body.model_fields_set:
        status = ConversationStatus(conversation.status)  # a new wake-up time for a snoozed conversation
    with action_errors():
        if status is not None:
            changes |= await apply_status(
                call.session, conversation, status, snoozed_until=body.snoozed_until
            )
        if body.priority is not None:
            changes |= apply_priority(conversation, body.priority, set_by=call.principal.user_id)
    if "assignee_id" in body.model_fields_set and body.assignee_id != conversation.assignee_id:
        if body.assignee_id is not None:
            user = (
                await call.session.execute(
                    select(User.id).where(User.id == body.assignee_id, User.tenant_id == call.tenant_id)
                )
            ).scalar_one_or_none()
            if user is None:
                raise ApiError(
                    422, "invalid_assignee", f"assignee_id: no user {body.assignee_id} in this tenant."
                )
        changes["assignee_id"] = {"old": conversation.assignee_id, "new": body.assignee_id}
        conversation.assignee_id = body.assignee_id
    if changes:
        await _announce(call, conversation, changes)
    return await conversation_out(call.session, conversation, call.principal.user_id)


@routes.get("/conversations/{conversation_id}/messages", allow=Permission.READ_CONVERSATIONS)
async def list_messages(call: ApiRequest, *, conversation_id: int, query: MessageQuery) -> MessageList:
    """List a conversation's messages, oldest first (`order=desc`: newest first)."""
    conversation = await _get(call, conversation_id)
    rows, next_cursor = await fetch_page(
        call.session,
        select(Message).where(Message.conversation_id == conversation.id),
        Message.id,
        query,
        descending=query.order == "desc",
    )
    return MessageList(data=[MessageOut.model_validate(m) for m in rows], next_cursor=next_cursor)


def _check_buttons(channel_name: str, capabilities: Capabilities, body: MessageCreate) -> None:
    """Refuse buttons the channel could never carry, rather than fail the message at send time."""
    if not body.buttons:
        return
    limit = capabilities.max_text_with_buttons
    if limit is not None and len(body.body) > limit:
        raise ApiError(
            422,
            "message_too_long",
            f"body: {channel_name} carries at most {limit} characters with buttons ({len(body.body)} given).",
        )
    id_limit = capabilities.max_button_id_bytes
    for i, button in enumerate(body.buttons):
        if id_limit is not None and len(button.id.encode()) > id_limit:
            raise ApiError(
                422,
                "button_id_too_long",
                f"buttons.{i}.id: {channel_name} carries button ids of at most {id_limit} bytes.",
            )


@routes.post("/conversations/{conversation_id}/messages", allow=Permission.SEND_MESSAGES, errors=[409])
async def send_message(call: ApiRequest, *, conversation_id: int, body: MessageCreate) -> MessageOut:
    """Reply in a conversation: the message is queued and sent by the dispatcher.

    A contact who opted out of the inbox's channel cannot be messaged (422 `recipient_opted_out`,
    nothing is stored). Replying to a resolved conversation reopens it.
    """
    found = (
        await call.session.execute(
            select(Conversation, Inbox.channel)
            .join(Inbox, Inbox.id == Conversation.inbox_id)
            .where(Conversation.id == conversation_id, Conversation.tenant_id == call.tenant_id)
        )
    ).one_or_none()
    if found is None:
        raise NotFound("conversation")
    conversation, channel_name = found
    # The class says it all (consent channel, limits): no need to decrypt secrets and build an adapter.
    channel = channel_class(channel_name)
    if not channel.capabilities.replies:
        raise ApiError(
            422,
            "replies_unsupported",
            f"{channel_name} cannot carry a written reply (a phone line); reach the contact on "
            "another channel, such as SMS or WhatsApp.",
        )
    limit = channel.capabilities.max_text_length
    if limit is not None and len(body.body) > limit:
        raise ApiError(
            422,
            "message_too_long",
            f"body: {channel_name} carries at most {limit} characters ({len(body.body)} given).",
        )
    _check_buttons(channel_name, channel.capabilities, body)
    window = channel.capabilities.reply_window
    if body.template is not None and not channel.capabilities.templates:
        raise ApiError(422, "templates_unsupported", f"template: {channel_name} has no message templates.")
    if window is not None and body.template is None:
        last = conversation.last_inbound_at
        if last is None or utcnow() - last > window:
            since = "has not written yet" if last is None else f"last wrote at {last.isoformat()}"
            raise ApiError(
                422,
                "outside_reply_window",
                f"The customer {since}; {channel_name} delivers free-form replies only within "
                f"{window.total_seconds() / 3600:g} hours of the customer's last message. Send an approved "
                "template instead (`template`: name, language, variables).",
            )
    # Replies are transactional: refused after a withdrawal of `all` or of `transactional` (see delivery).
    if await withdrawn(
        call.session,
        contact_id=conversation.contact_id,
        channel=channel.consent_channel,
        purpose="transactional",
    ):
        raise ApiError(
            422,
            "recipient_opted_out",
            f"Contact {conversation.contact_id} opted out of {channel.consent_channel} messages "
            "(e.g. replied STOP), so nothing was sent; they must opt in again before they can be "
            "messaged on this channel.",
        )
    if conversation.status == ConversationStatus.RESOLVED:
        await _announce(call, conversation, await _set_status(call, conversation, ConversationStatus.OPEN))
    conversation.last_message_at = utcnow()
    message = await queue_outbound(
        call.session,
        conversation,
        body=body.body,
        sender_type="user",
        sender_id=call.principal.user_id,
        attachments=[Attachment(url=a.url, content_type=a.content_type) for a in body.attachments],
        buttons=[Button(id=b.id, title=b.title) for b in body.buttons],
        template=None
        if body.template is None
        else Template(body.template.name, body.template.language, dict(body.template.variables)),
    )
    call.notify_after_commit()
    return MessageOut.model_validate(message)
