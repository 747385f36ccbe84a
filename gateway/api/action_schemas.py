"""Request and response bodies of the conversation actions: labels, merge, read marks, list counts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, StringConstraints

from gateway.api.schemas import ConversationOut, Id, LabelName, RequestBody, ResponseBody
from inbox.models import ConversationPriority, ConversationStatus

Color = Annotated[str, StringConstraints(pattern="^#[0-9a-fA-F]{6}$", to_lower=True)]


class LabelCreate(RequestBody):
    name: LabelName = Field(description="Unique in the tenant, whatever the case.")
    color: Color | None = Field(None, description="`#rrggbb`; default a neutral grey.")
    description: Annotated[str, StringConstraints(max_length=500)] = ""


class LabelUpdate(RequestBody):
    name: LabelName | None = None
    color: Color | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None


class LabelOut(ResponseBody):
    id: int
    name: str
    color: str
    description: str
    created_at: datetime
    updated_at: datetime


class LabelList(ResponseBody):
    data: list[LabelOut]


class ConversationLabelsUpdate(RequestBody):
    labels: list[LabelName] = Field(
        max_length=50,
        description="The conversation's labels by name (any case), replacing the current ones. Unknown "
        "names are created when the caller may manage labels, else refused (422 `unknown_labels`).",
    )


class ConversationMergeRequest(RequestBody):
    into: Id = Field(description="The conversation that keeps everything; the same contact's.")


class ConversationMergeOut(ResponseBody):
    source: ConversationOut = Field(description="Resolved, with `merged_into_id` set.")
    target: ConversationOut
    messages_moved: int
    labels_added: list[str]
    already_merged: bool = Field(description="True when a retry found the merge done: nothing changed.")


class ReadStateOut(ResponseBody):
    conversation_id: int
    last_read_message_id: int | None = Field(
        description="The caller has read up to this message id; null: nothing read yet."
    )
    unread_count: int = Field(description="Customer messages after the mark.")


class ViewCountOut(ResponseBody):
    total: int
    unread: int = Field(description="Conversations with a customer message the caller has not read.")


class ViewCounts(ResponseBody):
    mine: ViewCountOut
    unassigned: ViewCountOut
    all: ViewCountOut


class CountsQuery(RequestBody):
    status: ConversationStatus | None = None
    inbox_id: Id | None = None
    channel: str | None = Field(None, description="The inbox's channel, e.g. `twilio_sms`.")
    team_id: Id | None = None
    label: LabelName | None = None
    priority: ConversationPriority | None = None
