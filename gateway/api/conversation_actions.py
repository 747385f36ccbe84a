"""Conversation actions behind the agents' inbox: labels, merge, read marks, and the list's tab counts.

Thin routes over `inbox.actions` and `inbox.listing` (the UI calls those directly); priority and
snooze are fields of `PATCH /conversations/{id}` (`gateway/api/conversations.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.api.action_schemas import (
    ConversationLabelsUpdate,
    ConversationMergeOut,
    ConversationMergeRequest,
    CountsQuery,
    LabelCreate,
    LabelList,
    LabelOut,
    LabelUpdate,
    ReadStateOut,
    ViewCountOut,
    ViewCounts,
)
from gateway.api.permissions import Permission, allows
from gateway.api.routing import ApiRequest, RouteTable
from gateway.api.schemas import ConversationOut, LabelSummary
from gateway.errors import ApiError
from inbox import actions
from inbox.listing import ConversationFilters, unread_counts, view_counts
from inbox.models import Conversation, ConversationRead
from routing.filters import team_conversations
from routing.sla import next_due_subquery

routes = RouteTable("conversation actions")


@contextmanager
def action_errors() -> Iterator[None]:
    """Answer an action's refusal with its status and code (404, 409, 422)."""
    try:
        yield
    except actions.ActionError as e:
        raise ApiError(e.status, e.code, e.message) from None


def filters_from(call: ApiRequest, query: Any) -> ConversationFilters:
    """The list filters of a query (`ConversationQuery` or `CountsQuery`)."""
    team_id = getattr(query, "team_id", None)
    return ConversationFilters(
        status=query.status,
        inbox_id=query.inbox_id,
        channel=query.channel,
        label=query.label,
        priority=query.priority,
        assignee_id=getattr(query, "assignee_id", None),
        contact_id=getattr(query, "contact_id", None),
        within=None if team_id is None else team_conversations(call.tenant_id, team_id),
        sla_due=next_due_subquery(),
    )


async def conversation_out(
    session: AsyncSession, conversation: Conversation, user_id: int
) -> ConversationOut:
    """A conversation as the API shows it, with its labels and what the caller has not read."""
    labels = (await actions.labels_of(session, [conversation.id]))[conversation.id]
    unread = (await unread_counts(session, user_id, [conversation.id]))[conversation.id]
    return ConversationOut.model_validate(conversation).model_copy(
        update={"labels": [LabelSummary.model_validate(label) for label in labels], "unread_count": unread}
    )


# --- labels ---------------------------------------------------------------------------------------


@routes.get("/labels", allow=Permission.READ_CONVERSATIONS)
async def list_labels(call: ApiRequest) -> LabelList:
    """List the tenant's labels by name."""
    labels = await actions.list_labels(call.session, call.tenant_id)
    return LabelList(data=[LabelOut.model_validate(label) for label in labels])


@routes.post("/labels", allow=Permission.MANAGE_LABELS, errors=[409])
async def create_label(call: ApiRequest, *, body: LabelCreate) -> LabelOut:
    """Create a label; 409 `label_exists` if the name is taken in any case."""
    with action_errors():
        label = await actions.create_label(
            call.session, call.tenant_id, name=body.name, color=body.color, description=body.description
        )
    return LabelOut.model_validate(label)


@routes.get("/labels/{label_id}", allow=Permission.READ_CONVERSATIONS)
async def get_label(call: ApiRequest, *, label_id: int) -> LabelOut:
    """Get a label."""
    with action_errors():
        return LabelOut.model_validate(await actions.get_label(call.session, call.tenant_id, label_id))


@routes.patch("/labels/{label_id}", allow=Permission.MANAGE_LABELS, errors=[409])
async def update_label(call: ApiRequest, *, label_id: int, body: LabelUpdate) -> LabelOut:
    """Rename, recolour or describe a label; conversations keep it."""
    with action_errors():
        label = await actions.update_label(
            call.session,
            call.tenant_id,
            label_id,
            name=body.name,
            color=body.color,
            description=body.description,
        )
    return LabelOut.model_validate(label)


@routes.delete("/labels/{label_id}", allow=Permission.MANAGE_LABELS)
async def delete_label(call: ApiRequest, *, label_id: int) -> None:
    """Delete a label; it comes off every conversation."""
    with action_errors():
        await actions.delete_label(call.session, call.tenant_id, label_id)


@routes.put("/conversations/{conversation_id}/labels", allow=Permission.UPDATE_CONVERSATIONS)
async def set_conversation_labels(
    call: ApiRequest, *, conversation_id: int, body: ConversationLabelsUpdate
) -> ConversationOut:
    """Set a conversation's labels by name, announced in `conversation.updated` (`changes.labels`).

    A name no label has is created if the caller may manage labels (admin, supervisor), else the
    request is refused (422 `unknown_labels`) and nothing changes.
    """
    with action_errors():
        await actions.set_labels(
            call.session,
            call.tenant_id,
            call.principal.user_id,
            conversation_id,
            body.labels,
            may_create=allows(call.principal.role, Permission.MANAGE_LABELS),
        )
        conversation = await actions.get_conversation(call.session, call.tenant_id, conversation_id)
    call.notify_after_commit()
    return await conversation_out(call.session, conversation, call.principal.user_id)


# --- merge ----------------------------------------------------------------------------------------


@routes.post(
    "/conversations/{conversation_id}/merge", allow=Permission.UPDATE_CONVERSATIONS, status=200, errors=[409]
)
async def merge_conversation(
    call: ApiRequest, *, conversation_id: int, body: ConversationMergeRequest
) -> ConversationMergeOut:
    """Merge this conversation into another of the same contact (`into`).

    Its messages, labels and read marks move to `into`; it is resolved with `merged_into_id` set,
    and both conversations announce `conversation.updated` (reason `merged`). The other conversation
    must be the same contact's (422 `different_contacts`) and not this one (422
    `same_conversation`). Retrying a merge that is done answers the same, with `already_merged`.
    """
    with action_errors():
        result = await actions.merge_conversations(
            call.session, call.tenant_id, call.principal.user_id, conversation_id, body.into
        )
    if not result.already_merged:
        call.notify_after_commit()
    user_id = call.principal.user_id
    return ConversationMergeOut(
        source=await conversation_out(call.session, result.source, user_id),
        target=await conversation_out(call.session, result.target, user_id),
        messages_moved=result.messages_moved,
        labels_added=result.labels_added,
        already_merged=result.already_merged,
    )


# --- read marks -----------------------------------------------------------------------------------


async def _read_state(call: ApiRequest, conversation_id: int) -> ReadStateOut:
    mark = await call.session.get(ConversationRead, (call.principal.user_id, conversation_id))
    unread = (await unread_counts(call.session, call.principal.user_id, [conversation_id]))[conversation_id]
    return ReadStateOut(
        conversation_id=conversation_id,
        last_read_message_id=None if mark is None else mark.last_read_message_id,
        unread_count=unread,
    )


@routes.post("/conversations/{conversation_id}/read", allow=Permission.READ_CONVERSATIONS, status=200)
async def mark_read(call: ApiRequest, *, conversation_id: int) -> ReadStateOut:
    """Mark the conversation read up to its newest message, for the caller only."""
    with action_errors():
        await actions.mark_read(call.session, call.tenant_id, call.principal.user_id, conversation_id)
    call.notify_after_commit()
    return await _read_state(call, conversation_id)


@routes.post("/conversations/{conversation_id}/unread", allow=Permission.READ_CONVERSATIONS, status=200)
async def mark_unread(call: ApiRequest, *, conversation_id: int) -> ReadStateOut:
    """Mark the newest customer message unread again, for the caller only."""
    with action_errors():
        await actions.mark_unread(call.session, call.tenant_id, call.principal.user_id, conversation_id)
    call.notify_after_commit()
    return await _read_state(call, conversation_id)


# --- the list's tabs ------------------------------------------------------------------------------


@routes.get("/conversations/counts", allow=Permission.READ_CONVERSATIONS)
async def conversation_counts(call: ApiRequest, *, query: CountsQuery) -> ViewCounts:
    """Count the Mine / Unassigned / All tabs, and how many of each have messages the caller has not read.

    Takes the list's filters (`status`, `inbox_id`, `channel`, `team_id`, `label`, `priority`).
    """
    counts = await view_counts(
        call.session,
        tenant_id=call.tenant_id,
        user_id=call.principal.user_id,
        filters=filters_from(call, query),
    )
    return ViewCounts(**{view: ViewCountOut(total=c.total, unread=c.unread) for view, c in counts.items()})
