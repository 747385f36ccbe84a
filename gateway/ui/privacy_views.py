"""The admins' privacy screens: the audit log (filtered, paged) and retention policies.

Both read through the API's own functions; the retention form submits to `PUT /api/v1/retention`
through admin.js, like every admin form.
"""

from __future__ import annotations

import json

from aiohttp import web
from pydantic import ValidationError
from yarl import URL

from gateway.api.inboxes import list_inboxes
from gateway.api.permissions import Permission
from gateway.api.privacy import AuditQuery, StatsQuery, get_retention, list_audit_log, retention_stats
from gateway.api.schemas import PageQuery
from gateway.errors import ApiError
from gateway.ui.admin_views import admin_tabs, api_call
from gateway.ui.web import Ui, page

_FILTERS = ("action", "object_type", "object_id", "actor_type", "actor_id", "cursor")


@page(allow=Permission.READ_AUDIT_LOG)
async def audit_page(ui: Ui) -> web.StreamResponse:
    """The audit log, newest first, 50 a page, filtered by action, object or actor."""
    filters = {k: v for k in _FILTERS if (v := ui.request.query.get(k, "").strip())}
    error = None
    try:
        query = AuditQuery.model_validate({**filters, "limit": 50})
        listed = await list_audit_log(api_call(ui), query=query)
    except (ValidationError, ApiError):
        error = "Those filters are not valid."
        listed = await list_audit_log(api_call(ui), query=AuditQuery(limit=50))
    entries = [
        {**e.model_dump(), "at": ui.local(e.at), "details": json.dumps(e.details, sort_keys=True)}
        for e in listed.data
    ]
    more = None
    if listed.next_cursor:
        kept = {k: v for k, v in filters.items() if k != "cursor"}
        more = URL("/admin/audit").with_query({**kept, "cursor": listed.next_cursor})
    return ui.render(
        "admin/audit.html",
        {
            "tabs": admin_tabs(ui),
            "tab": "audit",
            "entries": entries,
            "filters": filters,
            "more": more,
            "error": error,
        },
    )


@page(allow=Permission.MANAGE_RETENTION)
async def privacy_page(ui: Ui) -> web.StreamResponse:
    """Retention policies, with the inboxes they may name and the counts retention kept."""
    call = api_call(ui)
    retention = await get_retention(call)
    inboxes = (await list_inboxes(call, query=PageQuery(limit=200))).data
    stats = (await retention_stats(call, query=StatsQuery())).data
    totals: dict[int, list[int]] = {}
    for row in stats:
        total = totals.setdefault(row.inbox_id, [0, 0, 0])
        total[0] += row.conversations
        total[1] += row.messages_in
        total[2] += row.messages_out
    names = {i.id: i.name for i in inboxes}
    policies = [p.model_dump(include={"inbox_id", "resolved_after_days"}) for p in retention.policies]
    return ui.render(
        "admin/privacy.html",
        {
            "tabs": admin_tabs(ui),
            "tab": "privacy",
            "policies": retention.policies,
            "policies_json": json.dumps(policies, indent=1),
            "inboxes": sorted(inboxes, key=lambda i: i.name.lower()),
            "inbox_names": names,
            "totals": sorted(totals.items()),
        },
    )


def setup_privacy_routes(app: web.Application) -> None:
    app.router.add_get("/admin/audit", audit_page)
    app.router.add_get("/admin/privacy", privacy_page)
