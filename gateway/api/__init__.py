"""The REST API, /api/v1, and its OpenAPI document; every route is declared once, in a `RouteTable`."""

from __future__ import annotations

import functools
import json

from aiohttp import web

from gateway.api import (
    assignment,
    companies,
    composer,
    contacts,
    conversation_actions,
    conversations,
    crm,
    deals,
    inboxes,
    me,
    priority,
    search,
    sla,
    typing_indicator,
    users,
)
from gateway.api.openapi import OPENAPI_PATH, build_openapi
from gateway.api.routing import Operation, RouteTable, add_routes

ROUTE_TABLES: tuple[RouteTable, ...] = (
    me.routes,
    inboxes.routes,
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
)


def operations() -> list[Operation]:
    """Every declared API operation."""
    return [op for table in ROUTE_TABLES for op in table.operations]


@functools.cache
def openapi_json() -> bytes:
    """The OpenAPI document, built once per process (the routes are fixed at import)."""
    return json.dumps(build_openapi(operations()), indent=1).encode()


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=openapi_json(), content_type="application/json")


def setup_api(app: web.Application) -> None:
    """Register the API routes and the OpenAPI document."""
    add_routes(app, operations())
    app.router.add_get(OPENAPI_PATH, _openapi, name="get_openapi", allow_head=False)
