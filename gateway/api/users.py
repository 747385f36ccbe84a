"""`/users`: the people of a tenant, their roles, and whether they may still sign in.

Only admins change users. A tenant always keeps at least one active admin: a change that would
leave none (demoting or deactivating the last one, yourself included) answers 409 `last_admin`.
Deactivating a user signs them out everywhere: their web sessions end, their API tokens are
revoked and they go offline, so routing stops giving them conversations.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import Field, StringConstraints, field_validator
from sqlalchemy import select, update

from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable
from gateway.api.schemas import Name, RequestBody, ResponseBody
from gateway.errors import ApiError, NotFound
from gateway.keys import MAILER
from parley.auth import hash_password, normalise_email
from parley.db import utcnow
from parley.mailer import MailNotSent
from parley.models import ApiToken, Presence, Role, User
from parley.sessions import MIN_PASSWORD_LENGTH, end_all_sessions, request_password_reset
from routing.presence import set_presence

logger = logging.getLogger(__name__)

routes = RouteTable("users")

Password = Annotated[str, StringConstraints(min_length=MIN_PASSWORD_LENGTH, max_length=1000)]


def _email(value: str) -> str:
    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as e:
        raise ValueError(str(e)) from None
    return normalise_email(checked.normalized)


class UserCreate(RequestBody):
    email: Annotated[str, StringConstraints(max_length=320)]
    name: Name | None = None
    role: Role = Role.AGENT
    password: Password | None = Field(
        None,
        description="An initial password to tell the user; without one, they are emailed a link "
        "to choose their own (valid for an hour).",
    )

    _email = field_validator("email")(_email)


class UserUpdate(RequestBody):
    name: Name | None = None
    role: Role | None = None
    active: bool | None = Field(
        None, description="false signs the user out everywhere and stops sign-in; true lets them back."
    )


class UserOut(ResponseBody):
    id: int
    email: str
    name: str | None
    role: Role
    active: bool
    presence: Presence
    last_login_at: datetime | None
    created_at: datetime


class UserCreated(UserOut):
    invite_sent: bool = Field(description="A set-your-password link was emailed (no password was given).")


class UserList(ResponseBody):
    data: list[UserOut]


def user_out(user: User) -> UserOut:
    return UserOut(
        id=user.id,
        email=user.email,
        name=user.name,
        role=Role(user.role),
        active=user.active,
        presence=Presence(user.presence),
        last_login_at=user.last_login_at,
        created_at=user.created_at,
    )


async def tenant_user(call: ApiRequest, user_id: int) -> User:
    """The tenant's user with this id; 404 if there is none (or it is another tenant's)."""
    user = (
        await call.session.execute(select(User).where(User.id == user_id, User.tenant_id == call.tenant_id))
    ).scalar_one_or_none()
    if user is None:
        raise NotFound("user")
    return user


async def _active_admin_ids(call: ApiRequest) -> set[int]:
    # Locked (on PostgreSQL) so two admins demoting each other at once cannot leave none.
    rows = await call.session.execute(
        select(User.id)
        .where(User.tenant_id == call.tenant_id, User.role == Role.ADMIN, User.active.is_(True))
        .with_for_update()
    )
    return set(rows.scalars())


@routes.get("/users", allow=Permission.READ_CONVERSATIONS)
async def list_users(call: ApiRequest) -> UserList:
    """List the tenant's users (active and deactivated), by name."""
    rows = await call.session.execute(
        select(User).where(User.tenant_id == call.tenant_id).order_by(User.name, User.email)
    )
    return UserList(data=[user_out(u) for u in rows.scalars()])


@routes.post("/users", allow=Permission.MANAGE_USERS, errors=[409])
async def create_user(call: ApiRequest, *, body: UserCreate) -> UserCreated:
    """Add a user to the tenant.

    With `password`, they sign in with it; without, they are emailed a link to choose their own.
    409 `email_taken` if the address already belongs to a user (sign-in is by email alone, so an
    address belongs to one user across all tenants).
    """
    taken = (await call.session.execute(select(User.id).where(User.email == body.email))).first()
    if taken is not None:
        raise ApiError(409, "email_taken", f"{body.email} already belongs to a user.")
    # Without a password the account holds a random one nobody knows until the link is used.
    password = body.password or secrets.token_urlsafe(32)
    user = User(
        tenant_id=call.tenant_id,
        email=body.email,
        name=body.name,
        role=body.role,
        password_hash=hash_password(password),
    )
    call.session.add(user)
    await call.session.flush()
    await call.session.refresh(user)
    invite_sent = False
    if body.password is None:
        invite_sent = await _send_invitation(call, user)
    return UserCreated(**user_out(user).model_dump(), invite_sent=invite_sent)


async def _send_invitation(call: ApiRequest, user: User) -> bool:
    issued = await request_password_reset(call.session, user.email)
    if issued is None:
        return False
    _, token = issued
    link = f"{call.public_url()}/password/reset/{token}"
    try:
        await call.app[MAILER].send(
            user.email,
            "You have a Parley account",
            f"An admin added {user.email} to Parley as {user.role}.\n\n"
            f"Open this link within an hour to choose your password:\n{link}\n\n"
            f"Later, ask for a new link at {call.public_url()}/password/forgot.",
        )
    except MailNotSent:
        logger.exception("invitation mail for user %s not sent", user.id)
        return False
    return True


@routes.get("/users/{user_id}", allow=Permission.READ_CONVERSATIONS)
async def get_user(call: ApiRequest, *, user_id: int) -> UserOut:
    """Get a user."""
    return user_out(await tenant_user(call, user_id))


@routes.patch("/users/{user_id}", allow=Permission.MANAGE_USERS, errors=[409])
async def update_user(call: ApiRequest, *, user_id: int, body: UserUpdate) -> UserOut:
    """Change a user's name, role, or whether they may sign in.

    Deactivating ends their web sessions, revokes their API tokens and sets them offline. A role
    change revokes their API tokens minted with another role. 409 `last_admin` if the tenant
    would be left without an active admin.
    """
    user = await tenant_user(call, user_id)
    role = body.role if body.role is not None else Role(user.role)
    active = body.active if body.active is not None else user.active
    admins = await _active_admin_ids(call)
    if user.id in admins and (role is not Role.ADMIN or not active) and admins == {user.id}:
        raise ApiError(409, "last_admin", "This is the tenant's last active admin: make another admin first.")
    if "name" in body.model_fields_set:
        user.name = body.name
    now = utcnow()
    if role != user.role:
        user.role = role
        await call.session.execute(
            update(ApiToken)
            .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None), ApiToken.role != role)
            .values(revoked_at=now)
        )
    if active != user.active:
        user.active = active
        if not active:
            await end_all_sessions(call.session, user.id)
            await call.session.execute(
                update(ApiToken)
                .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            if await set_presence(call.session, call.tenant_id, user.id, Presence.OFFLINE):
                call.notify_after_commit()
    await call.session.flush()
    await call.session.refresh(user)  # presence was set by a bulk UPDATE
    return user_out(user)
