"""The contact import page in a real browser against `parley serve`: upload, map, import, report."""

from __future__ import annotations

import pytest
from playwright.async_api import expect
from sqlalchemy import select

from crm_core.models import Contact
from parley.db import Database
from parley.models import Role
from tests.ui.conftest import Browsing, ParleyServer, make_agent, screenshot

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def test_an_admin_imports_a_csv_and_downloads_the_error_report(
    db: Database, parley_server: ParleyServer, browsing: Browsing
) -> None:
    admin = await make_agent(db, "acme", role=Role.ADMIN, name="Ada Admin")
    page = await browsing.signed_in(parley_server, admin, path="/contacts")
    await page.get_by_role("link", name="Import / export CSV").click()
    await page.get_by_label("CSV file").set_input_files(
        files=[
            {
                "name": "leads.csv",
                "mimeType": "text/csv",
                "buffer": (
                    "Nom;Courriel;Portable;Notes\n"
                    "<b>Zoë</b>;ZOE@example.com;+33 6 12 34 56 78;x\n"
                    "Bad;nope;;y\n"
                    "Liam;liam@example.com;;z\n"
                ).encode("cp1252"),
            }
        ]
    )
    await page.get_by_role("button", name="Upload").click()
    await expect(page.get_by_text("3 rows, separated by “;”, read as cp1252.")).to_be_visible()
    await expect(page.get_by_role("cell", name="<b>Zoë</b>")).to_be_visible()  # text, never markup
    await page.get_by_label("Import Nom as").select_option("name")
    await page.get_by_label("Import Courriel as").select_option("email")
    await page.get_by_label("Import Portable as").select_option("phone")
    await screenshot(page, "contact-import-mapping")
    await page.get_by_role("button", name="Start the import").click()
    await expect(page.locator("#import-status")).to_have_text(
        "Done: 2 created, 0 updated, 1 rows refused.", timeout=30_000
    )
    async with page.expect_download() as download_info:
        await page.get_by_role("link", name="Download the error report (CSV)").click()
    report = (await (await download_info.value).path()).read_text()
    assert report.splitlines()[1].startswith("3,Courriel,")
    async with db.sessionmaker() as session:
        names = set((await session.execute(select(Contact.name))).scalars())
    assert names == {"<b>Zoë</b>", "Liam"}
