"""Users, passwords and API tokens; the principal a request acts as."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db import utcnow
from parley.models import ApiToken, Role, Tenant, User

TOKEN_PREFIX = "prl_"  # noqa: S105 - a prefix that makes leaked tokens recognisable, not a secret
_hasher = PasswordHasher()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: every query it makes is scoped to `tenant_id`."""

    user_id: int
    tenant_id: int
    role: Role


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def normalise_email(email: str) -> str:
    return email.strip().lower()


async def create_tenant_admin(
    session: AsyncSession, *, email: str, password: str, tenant_name: str, role: Role = Role.ADMIN
) -> User:
    """Create (or reuse) the tenant named `tenant_name` and a user in it; ValueError if the email is taken."""
    email = normalise_email(email)
    if "@" not in email:
        raise ValueError(f"not an email address: {email!r}")
    if len(password) < 8:
        raise ValueError("the password must be at least 8 characters long")
    if (await session.execute(select(User.id).where(User.email == email))).first() is not None:
        raise ValueError(f"a user with email {email} already exists")
    tenant = (await session.execute(select(Tenant).where(Tenant.name == tenant_name))).scalar_one_or_none()
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        await session.flush()
    user = User(tenant_id=tenant.id, email=email, password_hash=hash_password(password), role=role)
    session.add(user)
    await session.flush()
    return user


async def issue_token(session: AsyncSession, user: User, *, name: str = "") -> str:
    """Mint an API token for the user; only its hash is stored, so this is the one chance to see it."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiToken(
            tenant_id=user.tenant_id,
            user_id=user.id,
            name=name,
            role=user.role,
            token_hash=_token_digest(token),
        )
    )
    await session.flush()
    return token


async def authenticate_token(session: AsyncSession, token: str) -> Principal | None:
    """The principal a bearer token stands for, or None if it is unknown or revoked."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = (
        await session.execute(
            select(ApiToken.id, ApiToken.user_id, ApiToken.tenant_id, ApiToken.role)
            .join(User, User.id == ApiToken.user_id)
            .where(
                ApiToken.token_hash == _token_digest(token),
                ApiToken.revoked_at.is_(None),
                # A deactivated user's tokens stop working with them.
                User.active.is_(True),
            )
        )
    ).one_or_none()
    if row is None:
        return None
    await session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=utcnow()))
    return Principal(user_id=row.user_id, tenant_id=row.tenant_id, role=Role(row.role))
