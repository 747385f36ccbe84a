"""`/contacts/import`: upload a CSV, map its columns, follow the import, download the error report.

The page is a thin client of `/api/v1/contacts/imports` (`static/contact_import.js`); it also links
the CSV export of all contacts.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.permissions import Permission
from gateway.ui.web import Ui, page


@page(allow=Permission.IMPORT_CONTACTS)
async def import_page(ui: Ui) -> web.StreamResponse:
    return ui.render("contacts/import.html")


def setup_contact_import_routes(app: web.Application) -> None:
    app.router.add_get("/contacts/import", import_page)
