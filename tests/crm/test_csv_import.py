"""Contact CSV import and export through the API, on both databases, with the files people really send."""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
from typing import Any

from sqlalchemy import select

from crm_core.csv_import import ContactImporter, decode, preview, safe_cell, sniff_delimiter
from crm_core.import_models import ContactImport, ImportStatus
from crm_core.models import ChannelIdentity, Company, Contact, ContactTag
from parley.auth import issue_token
from parley.models import Role, User
from tests.conftest import TenantAccess, eventually, make_tenant
from tests.gateway.test_api import Api


async def upload(
    api: Api, data: bytes, *, who: TenantAccess | None = None, filename: str = "c.csv"
) -> tuple[int, Any]:
    return await api.call("POST", "/contacts/imports", who=who, body=data, params={"filename": filename})


async def run_import(
    api: Api,
    data: bytes,
    mapping: dict[str, str] | None = None,
    *,
    who: TenantAccess | None = None,
    **start: Any,
) -> dict[str, Any]:
    """Upload, start with `mapping` (default: the suggested one), and wait for the import to finish."""
    status, preview_ = await upload(api, data, who=who)
    assert status == 201, preview_
    body = {"mapping": mapping if mapping is not None else preview_["suggested_mapping"], **start}
    status, started = await api.call("POST", f"/contacts/imports/{preview_['id']}/start", who=who, body=body)
    assert status == 202, started
    result: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal result
        _, result = await api.call("GET", f"/contacts/imports/{preview_['id']}", who=who)
        return result["status"] == "done"

    await eventually(done, timeout=60)
    return result


async def contacts(api: Api, tenant_id: int) -> dict[str, Contact]:
    async with api.db.sessionmaker() as session:
        rows = (await session.execute(select(Contact).where(Contact.tenant_id == tenant_id))).scalars()
        return {c.name or "": c for c in rows}


MESSY = (
    "\ufeffFull Name;E-mail;Mobile;Company;Tags;Stage;plan;seats\r\n"
    "Ann Lee;ANN@Example.COM;(415) 555-0100;Acme Corp;VIP, beta;customer;Gold;12\r\n"
    "Bob Stone;bob@example.com;+44 20 7946 0018;;;;silver;\r\n"
    ";;;;;;;\r\n"
    'Ann L.;ann@example.com;;"Acme Corp";;;;\r\n'
    "Carol;not-an-email;12;;;;platinum;many\r\n"
    "Daniel;Dan@Example.com;;;newsletter;boss;;\r\n"
    "Daniel Moss;DAN@example.com;415.555.0199;;newsletter;;;\r\n"
    "'=Eve;eve@example.com;;;;;;\r\n"
)


async def define_attributes(api: Api) -> None:
    for body in (
        {"key": "plan", "label": "Plan", "type": "enum", "options": ["gold", "silver"]},
        {"key": "seats", "label": "Seats", "type": "number"},
    ):
        status, answer = await api.call("POST", "/crm/attributes", body=body)
        assert status == 201, answer


async def test_a_messy_semicolon_file_with_a_bom_imports_valid_rows_and_reports_the_rest(api: Api) -> None:
    await define_attributes(api)
    status, dan = await api.call("POST", "/contacts", body={"name": "Dan", "email": "dan@example.com"})
    assert status == 201, dan

    status, seen = await upload(api, MESSY.encode("utf-8"))
    assert status == 201, seen
    assert seen["delimiter"] == ";" and seen["encoding"] == "utf-8"
    assert seen["header"][0] == "Full Name"  # the BOM is not part of the first column's name
    assert seen["total_rows"] == 7  # the blank line is not a row
    assert seen["rows"][0][:2] == ["Ann Lee", "ANN@Example.COM"]
    assert seen["suggested_mapping"] == {
        "Full Name": "name",
        "E-mail": "email",
        "Mobile": "phone",
        "Company": "company",
        "Tags": "tags",
        "Stage": "lifecycle_stage",
        "plan": "attributes.plan",
        "seats": "attributes.seats",
    }
    status, started = await api.call(
        "POST",
        f"/contacts/imports/{seen['id']}/start",
        body={"mapping": seen["suggested_mapping"], "region": "us"},
    )
    assert status == 202, started

    async def done() -> bool:
        return (await api.call("GET", f"/contacts/imports/{seen['id']}"))[1]["status"] == "done"

    await eventually(done, timeout=60)
    _, result = await api.call("GET", f"/contacts/imports/{seen['id']}")
    # Ann (twice in the file), Bob and Eve are new; Dan existed (three rows name him, one refused).
    assert (result["created_count"], result["updated_count"], result["error_count"]) == (3, 1, 2)
    errors = {(e["row"], e["column"]) for e in result["errors"]}
    assert errors == {(6, "E-mail"), (6, "Mobile"), (6, "plan"), (6, "seats"), (7, "Stage")}

    found = await contacts(api, api.admin.tenant_id)
    assert set(found) == {"Ann L.", "Bob Stone", "Daniel Moss", "=Eve"}
    ann = found["Ann L."]  # the later row's name wins; the earlier row's other values stay
    assert (ann.email, ann.phone, ann.lifecycle_stage) == ("ann@example.com", "+14155550100", "customer")
    assert ann.attributes == {"plan": "gold", "seats": 12}
    assert found["Bob Stone"].phone == "+442079460018"
    dan_now = found["Daniel Moss"]
    assert dan_now.id == dan["id"] and dan_now.phone == "+14155550199"
    async with api.db.sessionmaker() as session:
        company = await session.get(Company, ann.company_id)
        assert company is not None and company.name == "Acme Corp"
        tags = set(
            (await session.execute(select(ContactTag.tag).where(ContactTag.contact_id == ann.id))).scalars()
        )
        assert tags == {"vip", "beta"}
        phone_owner = (
            await session.execute(
                select(ChannelIdentity.contact_id).where(
                    ChannelIdentity.kind == "phone", ChannelIdentity.address == "+14155550199"
                )
            )
        ).scalar_one()
        assert phone_owner == dan["id"]  # messages from that number now reach Dan
    # The contacts were announced like any other (automation, webhooks).
    assert {e["contact_id"] for e in await api.events("contact.created")} >= {ann.id, found["Bob Stone"].id}

    async with api.client.get(
        f"/api/v1/contacts/imports/{seen['id']}/errors.csv", headers=api.admin.headers
    ) as response:
        assert response.status == 200 and response.content_type == "text/csv"
        report = list(csv.reader(io.StringIO(await response.text())))
    assert report[0] == ["row", "column", "error"]
    assert [(r[0], r[1]) for r in report[1:]] == [
        ("6", "E-mail"),
        ("6", "Mobile"),
        ("6", "plan"),
        ("6", "seats"),
        ("7", "Stage"),
    ]
    assert "not an email address" in report[1][2]


async def test_a_row_joining_two_existing_contacts_is_refused_not_merged(api: Api) -> None:
    for body in ({"name": "A", "email": "a@example.com"}, {"name": "B", "phone": "+14155550111"}):
        assert (await api.call("POST", "/contacts", body=body))[0] == 201
    result = await run_import(api, b"name,email,phone\nAB,a@example.com,+14155550111\n")
    assert (result["created_count"], result["updated_count"], result["error_count"]) == (0, 0, 1)
    assert result["errors"][0]["row"] == 2 and "two different contacts" in result["errors"][0]["error"]
    assert set(await contacts(api, api.admin.tenant_id)) == {"A", "B"}


async def test_export_is_formula_safe_and_imports_back_as_the_same_contacts(api: Api) -> None:
    for body in (
        {"name": '=HYPERLINK("http://evil")', "email": "evil@example.com", "tags": ["vip"]},
        {"name": "Ann", "phone": "+14155550100", "email": "ann@example.com", "tags": ["vip", "beta"]},
        {"name": "@SUM(A1)", "phone": "+442079460018"},
        {"name": "Plain", "email": "plain@example.com"},
    ):
        status, answer = await api.call("POST", "/contacts", body=body)
        assert status == 201, answer

    async with api.client.get("/api/v1/contacts/export.csv", headers=api.admin.headers) as response:
        assert response.status == 200
        assert response.headers["Content-Disposition"].startswith("attachment")
        data = await response.read()
    assert data.startswith(codecs.BOM_UTF8)
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    by_email = {r["email"]: r for r in rows}
    assert len(rows) == 4
    assert by_email["evil@example.com"]["name"] == '\'=HYPERLINK("http://evil")'
    assert by_email["ann@example.com"]["phone"] == "'+14155550100"
    assert [r["name"] for r in rows if r["phone"] == "'+442079460018"] == ["'@SUM(A1)"]
    assert by_email["ann@example.com"]["tags"] == "beta, vip"

    # Filters are the contacts list's.
    async with api.client.get(
        "/api/v1/contacts/export.csv", params={"tag": "vip"}, headers=api.admin.headers
    ) as r:
        assert len(list(csv.DictReader(io.StringIO((await r.read()).decode("utf-8-sig"))))) == 2

    # Round trip into another workspace: the export's own column names map back by themselves.
    other = await make_tenant(api.db, "globex")
    result = await run_import(api, data, who=other)
    assert (result["created_count"], result["error_count"]) == (4, 0)
    imported = await contacts(api, other.tenant_id)
    assert set(imported) == {'=HYPERLINK("http://evil")', "Ann", "@SUM(A1)", "Plain"}
    assert (imported["Ann"].phone, imported["Ann"].email) == ("+14155550100", "ann@example.com")
    async with api.db.sessionmaker() as session:
        tags = set(
            (
                await session.execute(
                    select(ContactTag.tag).where(ContactTag.contact_id == imported["Ann"].id)
                )
            ).scalars()
        )
    assert tags == {"vip", "beta"}


async def make_user(api: Api, role: Role) -> TenantAccess:
    async with api.db.transaction() as session:
        user = User(
            tenant_id=api.admin.tenant_id, email=f"{role}@acme.example.com", password_hash="x", role=role
        )
        session.add(user)
        await session.flush()
        token = await issue_token(session, user)
    return TenantAccess(api.admin.tenant_id, user.id, token)


async def test_imports_are_tenant_scoped_and_need_the_import_permission(api: Api) -> None:
    status, seen = await upload(api, b"name,email\nAnn,ann@example.com\n")
    assert status == 201
    other = await make_tenant(api.db, "globex")
    for method, path in (
        ("GET", f"/contacts/imports/{seen['id']}"),
        ("POST", f"/contacts/imports/{seen['id']}/start"),
        ("GET", f"/contacts/imports/{seen['id']}/errors.csv"),
    ):
        status, answer = await api.call(
            method, path, who=other, body={"mapping": {}} if method == "POST" else None
        )
        assert status == 404, (path, answer)
    agent = await make_user(api, Role.AGENT)
    assert (await upload(api, b"name\nA\n", who=agent))[0] == 403
    async with api.client.get("/api/v1/contacts/export.csv", headers=agent.headers) as response:
        assert response.status == 403
    marketer = await make_user(api, Role.MARKETER)
    assert (await upload(api, b"name\nA\n", who=marketer))[0] == 201

    status, refused = await api.call(
        "POST",
        f"/contacts/imports/{seen['id']}/start",
        body={"mapping": {"name": "attributes.nope", "email": "email", "ghost": "name"}},
    )
    assert status == 422
    assert {d["field"] for d in refused["error"]["details"]} == {"body.mapping.name", "body.mapping.ghost"}
    assert (
        await api.call("POST", f"/contacts/imports/{seen['id']}/start", body={"mapping": {"name": "name"}})
    )[0] == 202
    status, again = await api.call(
        "POST", f"/contacts/imports/{seen['id']}/start", body={"mapping": {"name": "name"}}
    )
    assert status == 409 and again["error"]["code"] == "already_started"
    assert (await upload(api, b""))[1]["error"]["code"] == "invalid_csv"
    assert (await upload(api, b"\x89PNG\r\n\x1a\n\x00\x00"))[0] == 422


def test_encodings_and_delimiters_are_detected() -> None:
    assert decode("name\tcity\nZoë\tKöln\n".encode("utf-16"))[1] == "utf-16"
    text, encoding = decode("name;city\nZoë;Köln\n".encode("cp1252"))
    assert (encoding, text.splitlines()[1]) == ("cp1252", "Zoë;Köln")
    assert sniff_delimiter("a\tb\tc\n1\t2\t3\n") == "\t"
    assert sniff_delimiter("name|email\nA|a@example.com\n") == "|"
    read = preview(b'name,notes\n"Lee, Ann","line one\nline two"\n')
    assert read.rows == [["Lee, Ann", "line one\nline two"]] and read.total_rows == 1
    assert [safe_cell(v) for v in ("=1+1", "+1", "-2", "@x", "\tx", "ok", None, 3)] == [
        "'=1+1",
        "'+1",
        "'-2",
        "'@x",
        "'\tx",
        "ok",
        "",
        "3",
    ]


async def test_two_runners_of_one_import_share_its_batches_and_nothing_is_imported_twice(api: Api) -> None:
    read = preview(b"name,email\n" + b"".join(b"P%d,p%d@example.com\n" % (i, i) for i in range(9)))
    async with api.db.transaction() as session:
        job = ContactImport(
            tenant_id=api.admin.tenant_id, filename="x.csv", content=read.text, encoding=read.encoding,
            delimiter=read.delimiter, header=read.header, total_rows=read.total_rows,
            mapping={"name": "name", "email": "email"}, status=ImportStatus.QUEUED, next_row=0,
            created_count=0, updated_count=0, error_count=0, errors=[],
        )  # fmt: skip
        session.add(job)
    # A redelivered event: two handlers on one job at once, each taking 4 rows a call in batches of 2.
    importer = ContactImporter(api.db, rows_per_run=4, batch_rows=2)
    for _ in range(4):
        await asyncio.gather(
            importer.run(job.id, api.admin.tenant_id), importer.run(job.id, api.admin.tenant_id)
        )
    async with api.db.sessionmaker() as session:
        done = await session.get(ContactImport, job.id)
        assert done is not None
        assert (done.status, done.next_row, done.created_count) == ("done", 9, 9)
        assert done.content == ""  # the file is not kept once imported
    assert len(await contacts(api, api.admin.tenant_id)) == 9
