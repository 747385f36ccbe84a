"""The REST API, /api/v1, and its OpenAPI document; every route is declared once, in a `RouteTable`."""

from __future__ import annotations

import functools
import json

from aiohttp import web

from gateway.api import (
    assignment,
    companies,
    composer,
    contact_csv,
    contacts,
    conversation_actions,
    conversations,
    crm,
    csat,
    deals,
    inboxes,
    me,
    priority,
    privacy,
    search,
    sla,
    tasks,
    tickets,
    timeline,
    typing_indicator,
    users,
    webhooks,
)
from gateway.api.openapi import OPENAPI_PATH, build_openapi
from gateway.api.routing import Operation, RouteTable, add_routes

ROUTE_TABLES: tuple[RouteTable, ...] = (
    me.routes,
    inboxes.routes,
    # Before `contacts`: /contacts/imports must be tried before /contacts/{contact_id}.
    contact_csv.routes,
    contacts.routes,
    # Before `conversations`: /conversations/counts must be tried before /conversations/{conversation_id}.
    conversation_actions.routes,
    priority.routes,
    conversations.routes,
    typing_indicator.routes,
    assignment.routes,
    companies.routes,
    deals.routes,
    crm.routes,
    users.routes,
    composer.routes,
    search.routes,
    sla.routes,
    tasks.routes,
    timeline.routes,
    tickets.routes,
    csat.routes,
    webhooks.routes,
    privacy.routes,
)


def operations() -> list[Operation]:
    """Every declared API operation."""
    return [op for table in ROUTE_TABLES for op in table.operations]


@functools.cache
def openapi_json() -> bytes:
    """The OpenAPI document, built once per process (the routes are fixed at import)."""
    document = build_openapi(operations())
    for path, item in contact_csv.openapi_paths().items():  # the raw CSV routes
        document["paths"].setdefault(path, {}).update(item)
    return json.dumps(document, indent=1).encode()


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_json(), content_type="application/json")


def setup_api(app: web.Application) -> None:
    """Register the API routes and the OpenAPI document."""
    contact_csv.setup_contact_csv(app)  # first: /contacts/export.csv is not a /contacts/{contact_id}
    add_routes(app, operations())
    app.router.add_get(OPENAPI_PATH, _openapi, name="get_openapi", allow_head=False)
