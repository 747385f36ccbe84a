"""`/contacts/{id}/timeline` and `/companies/{id}/timeline`: one chronological feed, newest first.

Stored entries (deals, tickets, campaigns, consent, lifecycle, merges, conversations opened and
resolved) and the contact's messages and calls, merged when read (`inbox.timeline_feed`). Pages go
back in time: pass `next_cursor` as `before`.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from pydantic import Field

from crm_core.timeline import KINDS
from gateway.api.companies import get_company_row
from gateway.api.contacts import get_contact_row
from gateway.api.permissions import Permission, allows
from gateway.api.routing import ApiRequest, RouteTable, field_errors
from gateway.api.schemas import RequestBody, ResponseBody
from gateway.errors import ApiError
from inbox.timeline_feed import (
    MESSAGE,
    InvalidCursor,
    TimelinePage,
    company_timeline,
    contact_timeline,
    wanted_kinds,
)
from parley.models import Role

routes = RouteTable("timeline")


class TimelineQuery(RequestBody):
    limit: int = Field(50, ge=1, le=200, description="How many items to return (1-200).")
    before: str | None = Field(None, description="The `next_cursor` of the previous page: items before it.")
    kind: str | None = Field(
        None,
        max_length=500,
        description="Comma-separated kinds, or families of them (`deal` is every `deal.*`, `message` "
        f"both directions). Kinds: {', '.join(KINDS)}.",
    )


class TimelineItemOut(ResponseBody):
    id: str = Field(description="Unique in the feed: `entry:<id>` or `message:<id>`.")
    kind: str
    occurred_at: datetime
    contact_id: int | None
    data: dict[str, Any] = Field(
        description="What happened, as plain values; text written by customers is included: escape it."
    )
    conversation_id: int | None
    message_id: int | None
    deal_id: int | None
    ticket_id: int | None
    campaign_id: int | None


class TimelineOut(ResponseBody):
    data: list[TimelineItemOut]
    next_cursor: str | None = Field(description="Pass as `before` for older items; null when none are left.")


def visible_kinds(role: Role, asked: Collection[str]) -> set[str]:
    """The kinds asked for (all if none), less those `role` may not read; ValueError names unknown ones."""
    unknown = [k for k in asked if not wanted_kinds([k])]
    if unknown:
        raise ValueError(", ".join(unknown))
    kinds = set(wanted_kinds(asked))
    if not allows(role, Permission.READ_CONVERSATIONS):
        kinds -= wanted_kinds(["message", "call", "voicemail", "conversation"])
    if not allows(role, Permission.READ_DEALS):
        kinds -= wanted_kinds(["deal"])
    return kinds


def _kinds(call: ApiRequest, query: TimelineQuery) -> Collection[str]:
    asked = [k.strip() for k in (query.kind or "").split(",") if k.strip()]
    try:
        return visible_kinds(call.principal.role, asked)
    except ValueError as e:
        raise field_errors({"query.kind": f"unknown kinds: {e}"}) from None


def _out(page: TimelinePage) -> TimelineOut:
    return TimelineOut(
        data=[
            TimelineItemOut(
                id=f"{'message' if item.source == MESSAGE else 'entry'}:{item.id}",
                kind=item.kind,
                occurred_at=item.occurred_at,
                contact_id=item.contact_id,
                data=item.data,
                conversation_id=item.conversation_id,
                message_id=item.message_id,
                deal_id=item.deal_id,
                ticket_id=item.ticket_id,
                campaign_id=item.campaign_id,
            )
            for item in page.items
        ],
        next_cursor=page.next_cursor,
    )


def _invalid_cursor() -> ApiError:
    return ApiError(400, "invalid_cursor", "The cursor is not one this endpoint returned.")


@routes.get("/contacts/{contact_id}/timeline", allow=Permission.READ_CONTACTS, errors=[400])
async def get_contact_timeline(call: ApiRequest, *, contact_id: int, query: TimelineQuery) -> TimelineOut:
    """The contact's timeline, newest first: messages, calls, conversations, deals, tickets, campaigns,
    consent, lifecycle and merges."""
    contact = await get_contact_row(call, contact_id)
    kinds = _kinds(call, query)
    if not kinds:
        return TimelineOut(data=[], next_cursor=None)
    try:
        page = await contact_timeline(
            call.session, call.tenant_id, contact.id, kinds=kinds, cursor=query.before, limit=query.limit
        )
    except InvalidCursor:
        raise _invalid_cursor() from None
    return _out(page)


@routes.get("/companies/{company_id}/timeline", allow=Permission.READ_CONTACTS, errors=[400])
async def get_company_timeline(call: ApiRequest, *, company_id: int, query: TimelineQuery) -> TimelineOut:
    """The company's timeline: its contacts' timelines and its own deals' events, newest first."""
    company = await get_company_row(call, company_id)
    kinds = _kinds(call, query)
    if not kinds:
        return TimelineOut(data=[], next_cursor=None)
    try:
        page = await company_timeline(
            call.session, call.tenant_id, company.id, kinds=kinds, cursor=query.before, limit=query.limit
        )
    except InvalidCursor:
        raise _invalid_cursor() from None
    return _out(page)
