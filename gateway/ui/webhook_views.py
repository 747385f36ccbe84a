"""The Webhooks admin screen: subscriptions, the signing secret shown once, the delivery log.

Read through the API's own functions; forms submit to `/api/v1/webhooks` through `admin.js`
(enable/disable, test, redeliver) and `webhooks.js` (creating one, to show its secret once).
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.permissions import Permission
from gateway.api.webhooks import (
    DeliveryQuery,
    get_webhook,
    list_webhook_deliveries,
    list_webhook_event_types,
    list_webhooks,
)
from gateway.errors import ApiError
from gateway.ui.admin_views import admin_tabs, api_call
from gateway.ui.web import Ui, page


@page(allow=Permission.MANAGE_WEBHOOKS)
async def webhooks_page(ui: Ui) -> web.StreamResponse:
    call = api_call(ui)
    return ui.render(
        "admin/webhooks.html",
        {
            "tabs": admin_tabs(ui),
            "tab": "webhooks",
            "webhooks": (await list_webhooks(call)).data,
            "event_types": (await list_webhook_event_types(call)).data,
        },
    )


@page(allow=Permission.MANAGE_WEBHOOKS)
async def webhook_page(ui: Ui) -> web.StreamResponse:
    raw = ui.request.match_info["webhook_id"]
    call = api_call(ui)
    try:
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
            raise ApiError(404, "not_found", "webhook not found")
        webhook = await get_webhook(call, webhook_id=int(raw))
    except ApiError:
        return ui.render(
            "admin/not_found.html", {"tabs": admin_tabs(ui), "tab": "webhooks", "what": "webhook"}, status=404
        )
    status = ui.request.query.get("status")
    query = DeliveryQuery(limit=100, status=status if status in ("pending", "succeeded", "failed") else None)
    deliveries = await list_webhook_deliveries(call, webhook_id=webhook.id, query=query)
    return ui.render(
        "admin/webhook.html",
        {
            "tabs": admin_tabs(ui),
            "tab": "webhooks",
            "webhook": webhook,
            "status": query.status,
            "deliveries": [
                {
                    **d.model_dump(),
                    "created_local": ui.local(d.created_at),
                    "next_local": ui.local(d.next_attempt_at),
                }
                for d in deliveries.data
            ],
        },
    )


def setup_webhook_routes(app: web.Application) -> None:
    app.router.add_get("/admin/webhooks", webhooks_page)
    app.router.add_get("/admin/webhooks/{webhook_id}", webhook_page)
