"""The agents' conversation list, shared by the web UI and `GET /api/v1/conversations`.

`list_conversations` answers one page of a view (`mine`, `unassigned`, `all`) with filters and a
sort, each row carrying what the list shows; `view_counts` answers the tabs' totals and how many
conversations have something unread for the agent.

How it stays fast with 100k conversations and 1M messages (PostgreSQL): the page query touches
conversations only (their indexes: tenant + status + last message; tenant + assignee), with the
sort keys computed in it; what a row shows (last message, unread count, labels) is then read for
the page's conversations alone, each an index range scan on `messages (conversation_id, id)`.
The `waiting` sort computes, per conversation in the view, the first customer message after the
last reply (two probes of that index), so it is meant for open conversations, as the UI uses it.

Pagination is by keyset: the cursor carries the last row's sort values and id, so a page deep in
the list costs what the first does, and a conversation moving while someone pages is neither
skipped twice nor shown twice within one sort position.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, Select, and_, case, exists, func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from crm_core.models import Contact
from inbox.actions import label_key, labels_of
from inbox.models import (
    PRIORITY_RANK,
    Conversation,
    ConversationLabel,
    ConversationRead,
    Inbox,
    Label,
    Message,
)
from parley.db import UTCDateTime
from parley.models import User

View = Literal["mine", "unassigned", "all"]
Sort = Literal["newest", "waiting", "priority", "sla_due"]
VIEWS: tuple[View, ...] = get_args(View)
SORTS: tuple[Sort, ...] = get_args(Sort)

PREVIEW_LENGTH = 140
# "Not waiting" sorts after every real time in the `waiting` order (COALESCE: NULLs sort
# differently per database).
_NEVER = datetime(9999, 12, 31, tzinfo=UTC)


class InvalidCursor(ValueError):
    """The cursor is not one `list_conversations` returned for this sort."""


@dataclass(frozen=True, slots=True)
class ConversationFilters:
    """What to keep; every field is optional and they combine with AND."""

    status: str | None = None
    inbox_id: int | None = None
    channel: str | None = None  # the inbox's channel name, e.g. `twilio_sms`
    label: str | None = None  # a label name, any case
    priority: str | None = None
    assignee_id: int | Literal["none"] | None = None
    contact_id: int | None = None
    # Conversation ids to keep, a subquery built above `inbox` (routing's team: see
    # `routing.filters.team_conversations`): the list need not know every package's tables.
    within: Select[Any] | None = None
    # The conversation's next SLA due time as a correlated scalar subquery, built above `inbox`
    # (`routing.sla.next_due_subquery`); the `sla_due` sort needs it.
    sla_due: ColumnElement[Any] | None = None


@dataclass(frozen=True, slots=True)
class LabelTag:
    id: int
    name: str
    color: str


@dataclass(frozen=True, slots=True)
class ConversationRow:
    """One line of the list."""

    conversation: Conversation
    contact_name: str
    inbox_name: str
    channel: str
    assignee_name: str | None
    last_message_preview: str
    last_message_at: datetime | None
    labels: list[LabelTag]
    unread_count: int
    # When the oldest customer message nobody has answered yet arrived (None: nothing unanswered).
    waiting_since: datetime | None


@dataclass(slots=True)
class ConversationPage:
    rows: list[ConversationRow]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ViewCount:
    total: int
    unread: int  # conversations with a customer message the agent has not read


@dataclass(frozen=True, slots=True)
class _Key:
    expression: ColumnElement[Any]
    descending: bool
    parse: Callable[[Any], Any] = field(default=lambda v: v)


def _is_customer(message: Any = Message) -> ColumnElement[bool]:
    return message.sender_type == "contact"  # type: ignore[no-any-return]


def _last_activity() -> ColumnElement[datetime]:
    return func.coalesce(Conversation.last_message_at, Conversation.created_at)


def waiting_since_expression() -> ColumnElement[datetime]:
    """The first customer message after the conversation's last reply (correlated to `Conversation`)."""
    reply = aliased(Message)
    customer = aliased(Message)
    last_reply = (
        select(func.max(reply.id))
        .where(reply.conversation_id == Conversation.id, reply.direction == "outbound")
        .correlate(Conversation)
        .scalar_subquery()
    )
    return (
        select(func.min(customer.created_at))
        .where(
            customer.conversation_id == Conversation.id,
            _is_customer(customer),
            customer.id > func.coalesce(last_reply, 0),
        )
        .scalar_subquery()
    )


def _priority_rank() -> ColumnElement[int]:
    return case({str(p): rank for p, rank in PRIORITY_RANK.items()}, value=Conversation.priority, else_=0)


def _parse_time(value: Any) -> datetime:
    parsed = datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        raise ValueError("naive time in cursor")
    return parsed


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("not an integer")
    return value


def _sort_keys(sort: Sort, filters: ConversationFilters | None = None) -> list[_Key]:
    by_id_desc = _Key(Conversation.id, True, _int)  # type: ignore[arg-type]
    newest = _Key(_last_activity(), True, _parse_time)
    if sort == "newest":
        return [newest, by_id_desc]
    if sort == "waiting":
        waiting = func.coalesce(waiting_since_expression(), literal(_NEVER, UTCDateTime()))
        return [_Key(waiting, False, _parse_time), _Key(Conversation.id, False, _int)]  # type: ignore[arg-type]
    if sort == "sla_due":
        if filters is None or filters.sla_due is None:
            raise ValueError("the sla_due sort needs ConversationFilters.sla_due")
        # Soonest due first; conversations without a running clock after every real time.
        due = func.coalesce(filters.sla_due, literal(_NEVER, UTCDateTime()))
        return [_Key(due, False, _parse_time), _Key(Conversation.id, False, _int)]  # type: ignore[arg-type]
    return [_Key(_priority_rank(), True, _int), newest, by_id_desc]


def _encode_cursor(sort: Sort, values: Sequence[Any]) -> str:
    data = {"s": sort, "v": [v.isoformat() if isinstance(v, datetime) else v for v in values]}
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: Sort, keys: Sequence[_Key]) -> list[Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        values = data["v"]
        if data["s"] != sort or not isinstance(values, list) or len(values) != len(keys):
            raise InvalidCursor(cursor)
        return [key.parse(value) for key, value in zip(keys, values, strict=True)]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidCursor(cursor) from None


def _after(keys: Sequence[_Key], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows after `values` in the order of `keys`, as one row comparison (which an index can serve).

    Every sort's keys go the same way (all down or all up), so `(a, b) < (x, y)` says it.
    """
    descending = {key.descending for key in keys}
    assert len(descending) == 1, "a row comparison needs every key sorted the same way"
    row = tuple_(*(key.expression for key in keys))
    bound = tuple_(*(literal(value, key.expression.type) for key, value in zip(keys, values, strict=True)))
    return row < bound if descending.pop() else row > bound


def filter_clauses(
    tenant_id: int, user_id: int, view: View, filters: ConversationFilters
) -> list[ColumnElement[bool]]:
    """The WHERE clauses of a view and its filters (on `Conversation` alone)."""
    clauses: list[ColumnElement[bool]] = [Conversation.tenant_id == tenant_id]
    if view == "mine":
        clauses.append(Conversation.assignee_id == user_id)
    elif view == "unassigned":
        clauses.append(Conversation.assignee_id.is_(None))
    if filters.status is not None:
        clauses.append(Conversation.status == filters.status)
    if filters.inbox_id is not None:
        clauses.append(Conversation.inbox_id == filters.inbox_id)
    if filters.channel is not None:
        clauses.append(
            Conversation.inbox_id.in_(
                select(Inbox.id).where(Inbox.tenant_id == tenant_id, Inbox.channel == filters.channel)
            )
        )
    if filters.label is not None:
        clauses.append(
            Conversation.id.in_(
                select(ConversationLabel.conversation_id)
                .join(Label, Label.id == ConversationLabel.label_id)
                .where(Label.tenant_id == tenant_id, Label.name_key == label_key(filters.label))
            )
        )
    if filters.priority is not None:
        clauses.append(Conversation.priority == filters.priority)
    if filters.assignee_id == "none":
        clauses.append(Conversation.assignee_id.is_(None))
    elif filters.assignee_id is not None:
        clauses.append(Conversation.assignee_id == filters.assignee_id)
    if filters.contact_id is not None:
        clauses.append(Conversation.contact_id == filters.contact_id)
    if filters.within is not None:
        clauses.append(Conversation.id.in_(filters.within))
    return clauses


def _has_unread(user_id: int) -> ColumnElement[bool]:
    mark = (
        select(ConversationRead.last_read_message_id)
        .where(ConversationRead.user_id == user_id, ConversationRead.conversation_id == Conversation.id)
        .correlate(Conversation)
        .scalar_subquery()
    )
    return exists().where(
        Message.conversation_id == Conversation.id, _is_customer(), Message.id > func.coalesce(mark, 0)
    )


async def unread_counts(
    session: AsyncSession, user_id: int, conversation_ids: Sequence[int]
) -> dict[int, int]:
    """How many customer messages in each conversation are newer than the agent's read mark."""
    counts = dict.fromkeys(conversation_ids, 0)
    if not conversation_ids:
        return counts
    rows = await session.execute(
        select(Message.conversation_id, func.count())
        .select_from(Message)
        .outerjoin(
            ConversationRead,
            and_(
                ConversationRead.conversation_id == Message.conversation_id,
                ConversationRead.user_id == user_id,
            ),
        )
        .where(
            Message.conversation_id.in_(conversation_ids),
            _is_customer(),
            Message.id > func.coalesce(ConversationRead.last_read_message_id, 0),
        )
        .group_by(Message.conversation_id)
    )
    counts.update({conversation_id: int(n) for conversation_id, n in rows})
    return counts


_SPACES = re.compile(r"\s+")
_CONTENT_NAMES = {
    "location": "Location",
    "shared_contacts": "Contact card",
    "call": "Call",
    "voicemail": "Voicemail",
    "recording": "Recording",
    "template": "Template",
}


def preview(
    body: str, attachments: Sequence[Any], extra: dict[str, Any], *, length: int = PREVIEW_LENGTH
) -> str:
    """A message as one line of plain text, at most `length` characters (the UI escapes it)."""
    text = _SPACES.sub(" ", body).strip()
    if not text:
        kind = next((name for key, name in _CONTENT_NAMES.items() if key in extra), None)
        if kind is not None:
            text = f"[{kind}]"
        elif attachments:
            text = "[Attachment]" if len(attachments) == 1 else f"[{len(attachments)} attachments]"
    return text if len(text) <= length else text[: length - 1].rstrip() + "…"


def _last_message_id() -> ColumnElement[int | None]:
    return (
        select(func.max(Message.id))
        .where(Message.conversation_id == Conversation.id)
        .correlate(Conversation)
        .scalar_subquery()
    )


def _unread_count(user_id: int) -> ColumnElement[int]:
    mark = (
        select(ConversationRead.last_read_message_id)
        .where(ConversationRead.user_id == user_id, ConversationRead.conversation_id == Conversation.id)
        .correlate(Conversation)
        .scalar_subquery()
    )
    return (
        select(func.count())
        .select_from(Message)
        .where(
            Message.conversation_id == Conversation.id, _is_customer(), Message.id > func.coalesce(mark, 0)
        )
        .correlate(Conversation)
        .scalar_subquery()
    )


def display_name(name: str | None, email: str | None, phone: str | None, contact_id: int) -> str:
    """What the list calls a contact: the name, else an address, else their number in Parley."""
    return name or email or phone or f"Contact #{contact_id}"


def page_query(
    *,
    tenant_id: int,
    user_id: int,
    view: View = "all",
    filters: ConversationFilters | None = None,
    sort: Sort = "newest",
    limit: int = 50,
    after: Sequence[Any] | None = None,
) -> Select[Any]:
    """A page's query, one row more than `limit` (is there a next page?), after the sort values `after`.

    The page is chosen on `conversations` alone and only its rows are joined to contacts, inboxes
    and users: sorting a tenant's whole history must not drag every contact along.
    """
    keys = _sort_keys(sort, filters)
    chosen = select(
        Conversation.id.label("id"), *(key.expression.label(f"sort_{i}") for i, key in enumerate(keys))
    )
    chosen = chosen.where(*filter_clauses(tenant_id, user_id, view, filters or ConversationFilters()))
    if after is not None:
        chosen = chosen.where(_after(keys, after))
    order = [key.expression.desc() if key.descending else key.expression.asc() for key in keys]
    page = chosen.order_by(*order).limit(limit + 1).subquery("page")
    sort_columns = [page.c[f"sort_{i}"] for i in range(len(keys))]
    last = aliased(Message, name="last_message")
    columns: list[Any] = [
        Conversation,
        Contact.name,
        Contact.email,
        Contact.phone,
        Inbox.name.label("inbox_name"),
        Inbox.channel,
        User.name.label("assignee_name"),
        User.email.label("assignee_email"),
        waiting_since_expression().label("waiting_since"),
        last.body.label("last_body"),
        last.attachments.label("last_attachments"),
        last.extra.label("last_extra"),
        # Correlated, so computed for the page's rows only, each an index range scan.
        _unread_count(user_id).label("unread_count"),
        *sort_columns,
    ]
    return (
        select(*columns)
        .join(page, page.c.id == Conversation.id)
        .join(Contact, Contact.id == Conversation.contact_id)
        .join(Inbox, Inbox.id == Conversation.inbox_id)
        .outerjoin(User, User.id == Conversation.assignee_id)
        .outerjoin(last, last.id == _last_message_id())
        .order_by(
            *(
                column.desc() if key.descending else column.asc()
                for column, key in zip(sort_columns, keys, strict=True)
            )
        )
    )


async def list_conversations(
    session: AsyncSession,
    *,
    tenant_id: int,
    user_id: int,
    view: View = "all",
    filters: ConversationFilters | None = None,
    sort: Sort = "newest",
    limit: int = 50,
    cursor: str | None = None,
) -> ConversationPage:
    """One page of the agent's conversation list; InvalidCursor if `cursor` is not one this returned.

    Sorts: `newest` (last message first), `waiting` (the oldest unanswered customer message first;
    nothing unanswered last), `priority` (urgent first, then newest), `sla_due` (the soonest SLA
    due first, conversations without a running clock last; needs `filters.sla_due`).
    """
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}")
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}")
    keys = _sort_keys(sort, filters)
    after = None if cursor is None else _decode_cursor(cursor, sort, keys)
    stmt = page_query(
        tenant_id=tenant_id, user_id=user_id, view=view, filters=filters, sort=sort, limit=limit, after=after
    )
    found = (await session.execute(stmt)).all()
    next_cursor = None
    if len(found) > limit:
        found = found[:limit]
        last = found[-1]
        next_cursor = _encode_cursor(sort, [getattr(last, f"sort_{i}") for i in range(len(keys))])
    ids = [row.Conversation.id for row in found]
    labels = await labels_of(session, ids)
    return ConversationPage(
        [
            ConversationRow(
                conversation=row.Conversation,
                contact_name=display_name(row.name, row.email, row.phone, row.Conversation.contact_id),
                inbox_name=row.inbox_name,
                channel=row.channel,
                assignee_name=row.assignee_name or row.assignee_email,
                last_message_preview=preview(
                    row.last_body or "", row.last_attachments or [], row.last_extra or {}
                ),
                last_message_at=row.Conversation.last_message_at,
                labels=[LabelTag(label.id, label.name, label.color) for label in labels[row.Conversation.id]],
                unread_count=int(row.unread_count or 0),
                waiting_since=row.waiting_since,
            )
            for row in found
        ],
        next_cursor,
    )


async def view_counts(
    session: AsyncSession, *, tenant_id: int, user_id: int, filters: ConversationFilters | None = None
) -> dict[View, ViewCount]:
    """For the Mine / Unassigned / All tabs: how many conversations, and how many with unread messages."""
    per_row = (
        select(
            Conversation.assignee_id.label("assignee_id"),
            case((_has_unread(user_id), 1), else_=0).label("unread"),
        )
        .where(*filter_clauses(tenant_id, user_id, "all", filters or ConversationFilters()))
        .subquery()
    )
    mine = per_row.c.assignee_id == user_id
    unassigned = per_row.c.assignee_id.is_(None)

    def total(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    def unread(condition: ColumnElement[bool]) -> ColumnElement[int]:
        return func.coalesce(func.sum(case((condition, per_row.c.unread), else_=0)), 0)

    row = (
        await session.execute(
            select(
                total(mine),
                unread(mine),
                total(unassigned),
                unread(unassigned),
                func.count(),
                func.coalesce(func.sum(per_row.c.unread), 0),
            ).select_from(per_row)
        )
    ).one()
    return {
        "mine": ViewCount(int(row[0]), int(row[1])),
        "unassigned": ViewCount(int(row[2]), int(row[3])),
        "all": ViewCount(int(row[4]), int(row[5])),
    }
