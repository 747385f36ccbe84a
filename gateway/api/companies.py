"""`/companies`: the organisations contacts work at, made from business email domains or by hand."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select

from crm_core.attributes import definitions, validate_attributes
from crm_core.models import Company
from gateway.api.crm_schemas import CompanyCreate, CompanyList, CompanyOut, CompanyQuery, CompanyUpdate
from gateway.api.pagination import fetch_page
from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable, field_errors
from gateway.api.schemas import merge_patch
from gateway.errors import NotFound

routes = RouteTable("companies")


async def get_company_row(call: ApiRequest, company_id: int) -> Company:
    company = (
        await call.session.execute(
            select(Company).where(Company.id == company_id, Company.tenant_id == call.tenant_id)
        )
    ).scalar_one_or_none()
    if company is None:
        raise NotFound("company")
    return company


async def _checked(call: ApiRequest, values: dict[str, Any]) -> dict[str, Any]:
    coerced, errors = validate_attributes(await definitions(call.session, call.tenant_id, "company"), values)
    if errors:
        raise field_errors({f"body.attributes.{key}": message for key, message in errors.items()})
    return coerced


@routes.get("/companies", allow=Permission.READ_CONTACTS)
async def list_companies(call: ApiRequest, *, query: CompanyQuery) -> CompanyList:
    """List companies, newest first; `q` matches a substring of the name or domain."""
    stmt = select(Company).where(Company.tenant_id == call.tenant_id)
    if query.q is not None:
        stmt = stmt.where(
            or_(
                Company.name.icontains(query.q, autoescape=True),
                Company.domain.icontains(query.q, autoescape=True),
            )
        )
    if query.domain is not None:
        stmt = stmt.where(Company.domain == query.domain)
    rows, next_cursor = await fetch_page(call.session, stmt, Company.id, query)
    return CompanyList(data=[CompanyOut.model_validate(c) for c in rows], next_cursor=next_cursor)


@routes.post("/companies", allow=Permission.WRITE_CONTACTS, errors=[409])
async def create_company(call: ApiRequest, *, body: CompanyCreate) -> CompanyOut:
    """Create a company; 409 if the tenant already has one with this domain."""
    company = Company(
        tenant_id=call.tenant_id,
        name=body.name,
        domain=body.domain,
        attributes={k: v for k, v in (await _checked(call, body.attributes)).items() if v is not None},
    )
    call.session.add(company)
    await call.session.flush()
    return CompanyOut.model_validate(company)


@routes.get("/companies/{company_id}", allow=Permission.READ_CONTACTS)
async def get_company(call: ApiRequest, *, company_id: int) -> CompanyOut:
    """Get a company (its contacts: `GET /contacts?company_id=`, its deals: `GET /deals?company_id=`)."""
    return CompanyOut.model_validate(await get_company_row(call, company_id))


@routes.patch("/companies/{company_id}", allow=Permission.WRITE_CONTACTS, errors=[409])
async def update_company(call: ApiRequest, *, company_id: int, body: CompanyUpdate) -> CompanyOut:
    """Change a company's name, domain or attributes (merged; a key set to null is removed)."""
    company = await get_company_row(call, company_id)
    if body.name is not None:
        company.name = body.name
    if "domain" in body.model_fields_set:
        company.domain = body.domain
    if body.attributes is not None:
        company.attributes = merge_patch(company.attributes, await _checked(call, body.attributes))
    await call.session.flush()
    return CompanyOut.model_validate(company)


@routes.delete("/companies/{company_id}", allow=Permission.WRITE_CONTACTS)
async def delete_company(call: ApiRequest, *, company_id: int) -> None:
    """Delete a company; its contacts and deals stay, without a company."""
    await call.session.delete(await get_company_row(call, company_id))
