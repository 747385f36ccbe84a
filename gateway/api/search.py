"""`/search`: contacts and message text in one box (see `inbox.search`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from gateway.api.permissions import Permission, allows
from gateway.api.routing import ApiRequest, RouteTable, field_errors
from gateway.api.schemas import RequestBody, ResponseBody
from inbox import search as search_service

routes = RouteTable("search")

Offsets = Annotated[
    list[tuple[int, int]],
    Field(
        description="Where the query matched, as `[start, end)` offsets in Unicode code points "
        "(`Array.from(text)` in JavaScript). Escape the text, then highlight by offset."
    ),
]


class SearchQuery(RequestBody):
    q: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)] = Field(
        description='Words to find; `"a phrase"`, `-word` (without), `this or that`. '
        "The last word also matches as a prefix."
    )
    kind: Literal["all", "contacts", "messages"] = "all"
    limit: int = Field(20, ge=1, le=search_service.MAX_LIMIT, description="Results of each kind (1-100).")


class ContactResult(ResponseBody):
    contact_id: int
    name: str | None
    email: str | None
    phone: str | None
    company: str | None
    matched_field: Literal["name", "email", "phone", "company", "identity"]
    matched_value: str = Field(description="The value that matched, plain text.")
    highlights: Offsets


class MessageResult(ResponseBody):
    message_id: int
    conversation_id: int = Field(description="Open this conversation at `message_id`.")
    contact_id: int
    contact_name: str | None
    inbox_id: int
    inbox_name: str
    direction: str
    created_at: datetime
    snippet: str = Field(description="Plain text around the first match, `…` where cut.")
    highlights: Offsets


class SearchResults(ResponseBody):
    contacts: list[ContactResult]
    messages: list[MessageResult]


@routes.get("/search", allow=Permission.READ_CONVERSATIONS)
async def search(call: ApiRequest, *, query: SearchQuery) -> SearchResults:
    """Search contacts (name, email, phone digits, company, channel addresses) and message text.

    Results are ranked by relevance, then newest first. A query with nothing to search for
    (blank, punctuation only, or only `-excluded` words) answers 422.
    """
    kinds: set[search_service.Kind] = {"contacts", "messages"} if query.kind == "all" else {query.kind}
    if not allows(call.principal.role, Permission.READ_CONTACTS):
        kinds.discard("contacts")
    try:
        found = await search_service.search(
            call.session, call.tenant_id, query.q, kinds=kinds, limit=query.limit
        )
    except search_service.EmptyQuery:
        raise field_errors({"query.q": "nothing to search for: type a word or a number"}) from None
    return SearchResults(
        contacts=[ContactResult.model_validate(hit) for hit in found.contacts],
        messages=[MessageResult.model_validate(hit) for hit in found.messages],
    )
