"""Signing in and out, and resetting a forgotten password by a one-time link sent by email."""

from __future__ import annotations

import logging
import secrets

import aiohttp_jinja2
from aiohttp import web

from gateway.keys import DB, MAILER, SETTINGS
from gateway.ui.web import Ui, page, redirect, safe_next, secure_cookies, session_token
from parley.mailer import MailNotSent
from parley.sessions import (
    MAX_AGE,
    MIN_PASSWORD_LENGTH,
    SESSION_COOKIE,
    SignInFailure,
    SignInRefused,
    check_password,
    complete_password_reset,
    end_session,
    request_password_reset,
    reset_is_valid,
    start_session,
)

logger = logging.getLogger(__name__)

# Signing in has no session yet, so its form is protected by a double-submit cookie instead.
LOGIN_CSRF_COOKIE = "parley_login_csrf"


def _login_form(
    request: web.Request, *, error: str | None = None, email: str = "", status: int = 200
) -> web.Response:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = aiohttp_jinja2.render_template(
        "auth/login.html",
        request,
        {"error": error, "email": email, "login_csrf": token, "next": safe_next(request.query.get("next"))},
        status=status,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=secure_cookies(request), path="/"
    )
    return response


async def login_page(request: web.Request) -> web.StreamResponse:
    return _login_form(request)


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    email = str(form.get("email", "")).strip()
    password = str(form.get("password", ""))
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not secrets.compare_digest(cookie, str(form.get("login_csrf", ""))):
        return _login_form(request, error="The form expired. Please sign in again.", email=email, status=403)
    async with request.app[DB].transaction() as session:
        outcome = await check_password(session, email, password)
        token = None
        if not isinstance(outcome, SignInFailure):
            token = await start_session(
                session,
                outcome,
                user_agent=request.headers.get("User-Agent", ""),
                ip=request.remote or "",
            )
    if isinstance(outcome, SignInFailure):
        if outcome.reason == SignInRefused.LOCKED and outcome.locked_until is not None:
            error = (
                "Too many failed attempts: sign-in to this account is locked until "
                f"{outcome.locked_until:%H:%M} UTC. You can reset your password meanwhile."
            )
            return _login_form(request, error=error, email=email, status=429)
        return _login_form(request, error="Wrong email or password.", email=email, status=401)
    assert token is not None
    response = web.HTTPSeeOther(safe_next(str(form.get("next", "")) or None))
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="Lax",
        secure=secure_cookies(request),
        path="/",
        max_age=int(MAX_AGE.total_seconds()),
    )
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/")
    raise response


@page()
async def logout(ui: Ui) -> web.StreamResponse:
    token = session_token(ui.request)
    if token is not None:
        await end_session(ui.session, token)
    response = redirect("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def forgot_page(request: web.Request) -> web.StreamResponse:
    return _forgot_form(request)


def _forgot_form(request: web.Request, *, sent_to: str | None = None, status: int = 200) -> web.Response:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = aiohttp_jinja2.render_template(
        "auth/forgot.html", request, {"sent_to": sent_to, "login_csrf": token}, status=status
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=secure_cookies(request), path="/"
    )
    return response


def _public_url(request: web.Request) -> str:
    configured = request.app[SETTINGS].public_url
    return configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"


async def forgot(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    email = str(form.get("email", "")).strip()
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not secrets.compare_digest(cookie, str(form.get("login_csrf", ""))):
        return _forgot_form(request, status=403)
    async with request.app[DB].transaction() as session:
        issued = await request_password_reset(session, email) if email else None
    if issued is not None:
        user, token = issued
        link = f"{_public_url(request)}/password/reset/{token}"
        try:
            await request.app[MAILER].send(
                user.email,
                "Reset your Parley password",
                f"Someone (hopefully you) asked to reset the password of {user.email}.\n\n"
                f"Open this link within an hour to choose a new one:\n{link}\n\n"
                "If it was not you, ignore this message: your password stays as it is.",
            )
        except MailNotSent:
            logger.exception("password reset mail for user %s not sent", user.id)
    # The same answer whether or not the account exists: the form does not reveal who has one.
    return _forgot_form(request, sent_to=email or "-")


async def reset_page(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    async with request.app[DB].transaction() as session:
        valid = await reset_is_valid(session, token)
    return aiohttp_jinja2.render_template(
        "auth/reset.html",
        request,
        {"valid": valid, "error": None, "min_length": MIN_PASSWORD_LENGTH},
        status=200 if valid else 410,
    )


async def reset(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    form = await request.post()
    password = str(form.get("password", ""))
    if password != str(form.get("confirm", "")):
        error: str | None = "The two passwords differ."
    else:
        error = None
        try:
            async with request.app[DB].transaction() as session:
                user = await complete_password_reset(session, token, password)
        except ValueError as e:
            error = str(e).capitalize() + "."
        else:
            if user is None:
                return aiohttp_jinja2.render_template(
                    "auth/reset.html", request, {"valid": False, "error": None, "min_length": 0}, status=410
                )
            raise web.HTTPSeeOther("/login?reset=1")
    return aiohttp_jinja2.render_template(
        "auth/reset.html",
        request,
        {"valid": True, "error": error, "min_length": MIN_PASSWORD_LENGTH},
        status=422,
    )


def setup_auth_routes(app: web.Application) -> None:
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/password/forgot", forgot_page)
    app.router.add_post("/password/forgot", forgot)
    app.router.add_get("/password/reset/{token}", reset_page)
    app.router.add_post("/password/reset/{token}", reset)
