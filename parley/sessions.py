"""Signing people in: password checks with lockout, browser sessions, one-time password reset links.

The browser holds a random token in a cookie; the database holds only its SHA-256, so a leaked
table signs nobody in. Sessions end by sign-out, by idling past `IDLE_TIMEOUT`, at `MAX_AGE`, or when
the password changes. After `MAX_FAILURES` wrong passwords in a row the account refuses sign-in for
`LOCKOUT`, whoever asks; a successful sign-in or a password reset clears the count.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from parley.auth import Principal, hash_password, normalise_email, verify_password
from parley.db import utcnow
from parley.models import PasswordReset, Role, User, WebSession

SESSION_COOKIE = "parley_session"
MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
IDLE_TIMEOUT = timedelta(hours=12)
MAX_AGE = timedelta(days=7)
RESET_VALID_FOR = timedelta(hours=1)
MIN_PASSWORD_LENGTH = 8
# Writing last_seen_at on every request would turn every page view into a write.
_SEEN_RESOLUTION = timedelta(minutes=1)
# Hash of a password nobody has: verifying against it for unknown emails keeps the timing the same.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SignInRefused(StrEnum):
    WRONG = "wrong"
    LOCKED = "locked"


@dataclass(frozen=True, slots=True)
class SignInFailure:
    reason: SignInRefused
    locked_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class SessionUser:
    """The signed-in person behind a browser session."""

    principal: Principal
    session_id: int
    token_hash: str
    email: str
    name: str | None

    @property
    def display_name(self) -> str:
        return self.name or self.email.split("@", 1)[0]


async def check_password(session: AsyncSession, email: str, password: str) -> User | SignInFailure:
    """The user if the password is right and the account not locked; counts failures toward lockout."""
    now = utcnow()
    user = (
        await session.execute(select(User).where(User.email == normalise_email(email)).with_for_update())
    ).scalar_one_or_none()
    if user is None or not user.active:
        verify_password(_DUMMY_HASH, password)
        return SignInFailure(SignInRefused.WRONG)
    if user.locked_until is not None and user.locked_until > now:
        return SignInFailure(SignInRefused.LOCKED, user.locked_until)
    if not verify_password(user.password_hash, password):
        user.failed_logins += 1
        if user.failed_logins >= MAX_FAILURES:
            user.locked_until = now + LOCKOUT
            user.failed_logins = 0
            return SignInFailure(SignInRefused.LOCKED, user.locked_until)
        return SignInFailure(SignInRefused.WRONG)
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    return user


async def start_session(session: AsyncSession, user: User, *, user_agent: str = "", ip: str = "") -> str:
    """A new browser session for `user`; returns the token for the cookie (the only time it exists)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        WebSession(
            tenant_id=user.tenant_id,
            user_id=user.id,
            token_hash=digest(token),
            created_at=now,
            last_seen_at=now,
            expires_at=now + MAX_AGE,
            user_agent=user_agent[:400],
            ip=ip[:64],
        )
    )
    await session.flush()
    return token


async def resume_session(session: AsyncSession, token: str) -> SessionUser | None:
    """Who a session cookie signs in, or None if the session is unknown, ended or idle too long."""
    now = utcnow()
    row = (
        await session.execute(
            select(
                WebSession.id,
                WebSession.token_hash,
                WebSession.last_seen_at,
                User.id.label("user_id"),
                User.tenant_id,
                User.role,
                User.email,
                User.name,
            )
            .join(User, User.id == WebSession.user_id)
            .where(
                WebSession.token_hash == digest(token),
                WebSession.revoked_at.is_(None),
                WebSession.expires_at > now,
                WebSession.last_seen_at > now - IDLE_TIMEOUT,
                User.active.is_(True),
            )
        )
    ).one_or_none()
    if row is None:
        return None
    if now - row.last_seen_at > _SEEN_RESOLUTION:
        await session.execute(update(WebSession).where(WebSession.id == row.id).values(last_seen_at=now))
    return SessionUser(
        principal=Principal(user_id=row.user_id, tenant_id=row.tenant_id, role=Role(row.role)),
        session_id=row.id,
        token_hash=row.token_hash,
        email=row.email,
        name=row.name,
    )


async def end_session(session: AsyncSession, token: str) -> None:
    await session.execute(
        update(WebSession)
        .where(WebSession.token_hash == digest(token), WebSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def end_all_sessions(session: AsyncSession, user_id: int) -> None:
    await session.execute(
        update(WebSession)
        .where(WebSession.user_id == user_id, WebSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def csrf_token(secret_key: str, token_hash: str) -> str:
    """The CSRF token for a session: derived, so nothing more is stored and it dies with the session."""
    return hmac.new(secret_key.encode(), f"csrf:{token_hash}".encode(), hashlib.sha256).hexdigest()


def csrf_matches(secret_key: str, token_hash: str, presented: str) -> bool:
    return hmac.compare_digest(csrf_token(secret_key, token_hash), presented)


async def request_password_reset(session: AsyncSession, email: str) -> tuple[User, str] | None:
    """A one-time reset token for the account with `email`, or None if there is no such active user."""
    user = (
        await session.execute(select(User).where(User.email == normalise_email(email), User.active.is_(True)))
    ).scalar_one_or_none()
    if user is None:
        return None
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        PasswordReset(
            user_id=user.id, token_hash=digest(token), created_at=now, expires_at=now + RESET_VALID_FOR
        )
    )
    await session.flush()
    return user, token


async def reset_is_valid(session: AsyncSession, token: str) -> bool:
    return (
        await session.execute(
            select(PasswordReset.id).where(
                PasswordReset.token_hash == digest(token),
                PasswordReset.used_at.is_(None),
                PasswordReset.expires_at > utcnow(),
            )
        )
    ).first() is not None


async def complete_password_reset(session: AsyncSession, token: str, new_password: str) -> User | None:
    """Set the new password if the link is valid and unused; ends every session of the user.

    ValueError if the password is too short; None if the link is unknown, used or expired.
    """
    if len(new_password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    now = utcnow()
    used = (
        await session.execute(
            update(PasswordReset)
            .where(
                PasswordReset.token_hash == digest(token),
                PasswordReset.used_at.is_(None),
                PasswordReset.expires_at > now,
            )
            .values(used_at=now)
            .returning(PasswordReset.user_id)
        )
    ).scalar_one_or_none()
    if used is None:
        return None
    user = await session.get(User, used)
    if user is None or not user.active:
        return None
    user.password_hash = hash_password(new_password)
    user.failed_logins = 0
    user.locked_until = None
    # Any other outstanding link for this account dies with this one.
    await session.execute(
        update(PasswordReset)
        .where(PasswordReset.user_id == user.id, PasswordReset.used_at.is_(None))
        .values(used_at=now)
    )
    await end_all_sessions(session, user.id)
    return user
