"""Contact CSV import and export: `/contacts/imports` and `/contacts/export.csv`.

An import is three steps: upload the file (`POST /contacts/imports`, the CSV as the raw body or
as multipart `file`) and get a preview with a suggested mapping; start it with the column mapping
(`POST /contacts/imports/{id}/start`), which queues it for the background workers; follow it
(`GET /contacts/imports/{id}`) and download the per-row error report
(`GET /contacts/imports/{id}/errors.csv`). The file and report routes take the raw CSV, so they
are plain aiohttp handlers authenticated like every API call; the rest are declared routes.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

from aiohttp import BodyPartReader, web
from pydantic import Field, field_validator
from sqlalchemy import select

from crm_core.attributes import definitions
from crm_core.csv_import import (
    FIELDS,
    IMPORT_TOPIC,
    MAX_BYTES,
    CsvRefused,
    export_header,
    export_row,
    mapping_errors,
    preview,
    safe_cell,
    suggest_mapping,
)
from crm_core.import_models import ContactImport, ImportStatus
from crm_core.models import Company, Contact, ContactTag
from gateway.api.contacts import contact_search
from gateway.api.pagination import fetch_page
from gateway.api.permissions import Permission, allows
from gateway.api.routing import API_PREFIX, ApiRequest, RouteTable, error_response, field_errors
from gateway.api.schemas import ContactQuery, Page, PageQuery, RequestBody, ResponseBody
from gateway.errors import ApiError, NotFound
from gateway.keys import DB, SETTINGS
from parley.auth import Principal, authenticate_token
from parley.outbox import emit
from parley.sessions import SESSION_COOKIE, csrf_matches, resume_session

routes = RouteTable("contact imports")

EXPORT_BATCH = 1000


class ImportStart(RequestBody):
    mapping: dict[str, str] = Field(
        description="Column name → field: name, email, phone, company, tags, lifecycle_stage or "
        "attributes.<key> (a defined contact attribute). Columns left out are ignored."
    )
    region: str | None = Field(
        None,
        min_length=2,
        max_length=2,
        description="Where national phone numbers are from (default: the tenant's).",
    )

    @field_validator("region")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value


class RowErrorOut(ResponseBody):
    row: int = Field(description="The row as a spreadsheet numbers it: the header is row 1.")
    column: str
    error: str


class ImportOut(ResponseBody):
    id: int
    filename: str
    status: str = Field(description="uploaded, queued, running, done or failed.")
    encoding: str
    delimiter: str
    header: list[str]
    total_rows: int
    processed_rows: int
    mapping: dict[str, str]
    region: str | None
    created_count: int
    updated_count: int
    error_count: int = Field(description="Rows refused (each is in the error report).")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ImportPreview(ImportOut):
    rows: list[list[str]] = Field(description="The first rows after the header.")
    suggested_mapping: dict[str, str]
    fields: list[str] = Field(description="What a column can be mapped to.")


class ImportDetail(ImportOut):
    errors: list[RowErrorOut] = Field(description="The first 100 row errors; all of them: errors.csv.")


class ImportList(Page):
    data: list[ImportOut]


def import_out(job: ContactImport) -> ImportOut:
    return ImportOut(
        id=job.id,
        filename=job.filename,
        status=job.status,
        encoding=job.encoding,
        delimiter=job.delimiter,
        header=job.header,
        total_rows=job.total_rows,
        processed_rows=job.next_row,
        mapping=job.mapping,
        region=job.region,
        created_count=job.created_count,
        updated_count=job.updated_count,
        error_count=job.error_count,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


async def get_import(call: ApiRequest, import_id: int) -> ContactImport:
    """The tenant's import; 404 if there is none (or it is another tenant's)."""
    job = (
        await call.session.execute(
            select(ContactImport).where(
                ContactImport.id == import_id, ContactImport.tenant_id == call.tenant_id
            )
        )
    ).scalar_one_or_none()
    if job is None:
        raise NotFound("import")
    return job


@routes.get("/contacts/imports", allow=Permission.IMPORT_CONTACTS, errors=[400])
async def list_imports(call: ApiRequest, *, query: PageQuery) -> ImportList:
    """The tenant's contact imports, newest first."""
    stmt = select(ContactImport).where(ContactImport.tenant_id == call.tenant_id)
    rows, next_cursor = await fetch_page(call.session, stmt, ContactImport.id, query)
    return ImportList(data=[import_out(j) for j in rows], next_cursor=next_cursor)


@routes.get("/contacts/imports/{import_id}", allow=Permission.IMPORT_CONTACTS)
async def get_contact_import(call: ApiRequest, *, import_id: int) -> ImportDetail:
    """An import's progress, counts and first row errors."""
    job = await get_import(call, import_id)
    return ImportDetail(
        **import_out(job).model_dump(), errors=[RowErrorOut.model_validate(e) for e in job.errors[:100]]
    )


@routes.post(
    "/contacts/imports/{import_id}/start", allow=Permission.IMPORT_CONTACTS, status=202, errors=[409]
)
async def start_import(call: ApiRequest, *, import_id: int, body: ImportStart) -> ImportOut:
    """Start an uploaded import with its column mapping; it runs in the background (poll this import).

    422 naming each column whose mapping is wrong (an unknown field, an undefined attribute, a
    field mapped twice). 409 `already_started` for an import that was started before.
    """
    job = await get_import(call, import_id)
    if job.status != ImportStatus.UPLOADED:
        raise ApiError(409, "already_started", f"This import is {job.status}.")
    keys = list(await definitions(call.session, call.tenant_id))
    mapping = {column: target for column, target in body.mapping.items() if target and target != "ignore"}
    errors = mapping_errors(mapping, job.header, keys)
    if errors:
        raise field_errors({f"body.mapping.{column}": message for column, message in errors.items()})
    job.mapping = mapping
    job.region = body.region
    job.status = ImportStatus.QUEUED
    await emit(call.session, call.tenant_id, (IMPORT_TOPIC, {"import_id": job.id}))
    call.notify_after_commit()
    await call.session.flush()
    await call.session.refresh(job)
    return import_out(job)


# --- raw routes: the file in, the report and the export out -----------------------------------------


async def _principal(request: web.Request, session: Any, permission: Permission) -> Principal:
    """Who is calling, as the declared routes check it (token, or session cookie + CSRF for changes)."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        principal = await authenticate_token(session, token.strip())
        if principal is None:
            raise ApiError(401, "unauthorized", "The API token is unknown or was revoked.")
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        signed_in = await resume_session(session, cookie) if cookie else None
        if signed_in is None:
            raise ApiError(401, "unauthorized", "Send an API token: `Authorization: Bearer <token>`.")
        if request.method not in ("GET", "HEAD") and not csrf_matches(
            request.app[SETTINGS].secret_key, signed_in.token_hash, request.headers.get("X-CSRF-Token", "")
        ):
            raise ApiError(403, "csrf", "Send the page's CSRF token in the X-CSRF-Token header.")
        principal = signed_in.principal
    if not allows(principal.role, permission):
        raise ApiError(403, "forbidden", f"The {principal.role} role lacks the {permission} permission.")
    return principal


async def _upload_bytes(request: web.Request) -> tuple[bytes, str]:
    """The uploaded file and its name: multipart `file`, or the raw body (`?filename=`)."""
    if request.content_type == "multipart/form-data":
        reader = await request.multipart()
        async for part in reader:
            if isinstance(part, BodyPartReader) and part.name == "file":
                data = bytearray()
                while chunk := await part.read_chunk():
                    data += chunk
                    if len(data) > MAX_BYTES:
                        raise ApiError(
                            413, "payload_too_large", f"CSV files are limited to {MAX_BYTES} bytes."
                        )
                return bytes(data), part.filename or ""
        raise ApiError(422, "validation_error", "Send the CSV as the multipart field `file`.")
    if request.content_length is not None and request.content_length > MAX_BYTES:
        raise ApiError(413, "payload_too_large", f"CSV files are limited to {MAX_BYTES} bytes.")
    data = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        data += chunk
        if len(data) > MAX_BYTES:
            raise ApiError(413, "payload_too_large", f"CSV files are limited to {MAX_BYTES} bytes.")
    return bytes(data), request.query.get("filename", "")


async def upload_import(request: web.Request) -> web.StreamResponse:
    """`POST /api/v1/contacts/imports`: read the CSV, answer its preview and a suggested mapping."""
    db = request.app[DB]
    async with db.transaction() as session:
        principal = await _principal(request, session, Permission.IMPORT_CONTACTS)
    data, filename = await _upload_bytes(request)
    try:
        read = preview(data)
    except CsvRefused as e:
        return error_response(422, "invalid_csv", str(e))
    async with db.transaction() as session:
        keys = list(await definitions(session, principal.tenant_id))
        job = ContactImport(
            tenant_id=principal.tenant_id,
            created_by_id=principal.user_id,
            filename=filename[:255],
            content=read.text,
            encoding=read.encoding,
            delimiter=read.delimiter,
            header=read.header,
            total_rows=read.total_rows,
            mapping={},
            status=ImportStatus.UPLOADED,
            next_row=0,
            created_count=0,
            updated_count=0,
            error_count=0,
            errors=[],
        )
        session.add(job)
        await session.flush()
        await session.refresh(job)
        answer = ImportPreview(
            **import_out(job).model_dump(),
            rows=read.rows,
            suggested_mapping=suggest_mapping(read.header, keys),
            fields=[*FIELDS, *(f"attributes.{k}" for k in keys)],
        )
    return web.Response(text=answer.model_dump_json(), status=201, content_type="application/json")


def _csv_line(cells: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(cells)
    return out.getvalue()


async def import_errors_csv(request: web.Request) -> web.StreamResponse:
    """`GET /api/v1/contacts/imports/{id}/errors.csv`: every refused row: row, column, error."""
    raw = request.match_info["import_id"]
    async with request.app[DB].transaction() as session:
        principal = await _principal(request, session, Permission.IMPORT_CONTACTS)
        job = (
            await session.execute(
                select(ContactImport).where(
                    ContactImport.id == (int(raw) if raw.isdigit() and len(raw) < 19 else 0),
                    ContactImport.tenant_id == principal.tenant_id,
                )
            )
        ).scalar_one_or_none()
        if job is None:
            raise NotFound("import")
    body = _csv_line(["row", "column", "error"]) + "".join(
        _csv_line([e["row"], safe_cell(e["column"]), safe_cell(e["error"])]) for e in job.errors
    )
    return web.Response(
        text=body,
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="import-{job.id}-errors.csv"'},
    )


async def export_csv(request: web.Request) -> web.StreamResponse:
    """`GET /api/v1/contacts/export.csv`: the contacts `GET /contacts` would list, every page, streamed."""
    db = request.app[DB]
    try:
        query = ContactQuery.model_validate(
            {k: v for k, v in request.query.items() if k not in ("cursor", "limit")}
        )
    except ValueError as e:
        return error_response(422, "validation_error", str(e).splitlines()[0])
    async with db.transaction() as session:
        principal = await _principal(request, session, Permission.IMPORT_CONTACTS)
        keys = sorted(await definitions(session, principal.tenant_id))
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            "Content-Disposition": 'attachment; filename="contacts.csv"',
        }
    )
    await response.prepare(request)
    # A BOM, so Excel reads the file as UTF-8; the import drops it again.
    await response.write(("\ufeff" + _csv_line(export_header(keys))).encode())
    cursor: str | None = None
    while True:
        # One short transaction per batch: a slow download holds no database lock.
        async with db.sessionmaker() as session:
            stmt = await contact_search(session, principal.tenant_id, query)
            page = PageQuery.model_construct(limit=EXPORT_BATCH, cursor=cursor)  # over the API cap of 200
            contacts, cursor = await fetch_page(session, stmt, Contact.id, page, descending=False)
            ids = [c.id for c in contacts]
            tags: dict[int, list[str]] = {}
            for contact_id, tag in (
                await session.execute(
                    select(ContactTag.contact_id, ContactTag.tag)
                    .where(ContactTag.contact_id.in_(ids))
                    .order_by(ContactTag.tag)
                )
            ).all():
                tags.setdefault(contact_id, []).append(tag)
            company_ids = {c.company_id for c in contacts if c.company_id is not None}
            named = await session.execute(
                select(Company.id, Company.name).where(
                    Company.tenant_id == principal.tenant_id, Company.id.in_(company_ids)
                )
            )
            companies = {company_id: name for company_id, name in named.all()}
        chunk = "".join(
            _csv_line(export_row(c, companies.get(c.company_id or 0), tags.get(c.id, []), keys))
            for c in contacts
        )
        if chunk:
            await response.write(chunk.encode())
        if cursor is None:
            break
    await response.write_eof()
    return response


def setup_contact_csv(app: web.Application) -> None:
    """The raw CSV routes (before the declared `/contacts/{contact_id}`: routes match in order)."""
    app.router.add_post(f"{API_PREFIX}/contacts/imports", upload_import, name="upload_contact_import")
    app.router.add_get(
        f"{API_PREFIX}/contacts/imports/{{import_id}}/errors.csv",
        import_errors_csv,
        name="contact_import_errors",
    )
    app.router.add_get(
        f"{API_PREFIX}/contacts/export.csv", export_csv, name="export_contacts", allow_head=False
    )


def openapi_paths() -> dict[str, Any]:
    """The raw routes in the OpenAPI document."""
    csv_body = {"content": {"text/csv": {"schema": {"type": "string"}}}}
    return {
        f"{API_PREFIX}/contacts/imports": {
            "post": {
                "operationId": "upload_contact_import",
                "summary": "Upload a CSV of contacts and preview it",
                "description": "The CSV as the raw body (`?filename=`) or multipart `file`, up to 20 MiB and "
                "100,000 rows. Answers 201 with the header, first rows and a suggested mapping; 422 "
                "`invalid_csv` if the file cannot be read.",
                "tags": ["contact imports"],
                "parameters": [
                    {"name": "filename", "in": "query", "required": False, "schema": {"type": "string"}}
                ],
                "requestBody": {"required": True, **csv_body},
                "responses": {"201": {"description": "The upload's preview (ImportPreview)."}},
            }
        },
        f"{API_PREFIX}/contacts/imports/{{import_id}}/errors.csv": {
            "get": {
                "operationId": "contact_import_errors",
                "summary": "Download an import's error report",
                "tags": ["contact imports"],
                "parameters": [
                    {"name": "import_id", "in": "path", "required": True, "schema": {"type": "integer"}}
                ],
                "responses": {"200": {"description": "row, column, error", **csv_body}},
            }
        },
        f"{API_PREFIX}/contacts/export.csv": {
            "get": {
                "operationId": "export_contacts",
                "summary": "Export contacts as CSV",
                "description": "Takes the filters of `GET /contacts`; every matching contact, streamed. "
                "Cells starting with = + - @ are prefixed with ' so spreadsheets do not run them.",
                "tags": ["contact imports"],
                "responses": {"200": {"description": "The contacts", **csv_body}},
            }
        },
    }
