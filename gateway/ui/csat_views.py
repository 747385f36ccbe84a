"""The public CSAT rating page: reached from the survey's signed link, no sign-in.

The token names the survey and is signed with the server's secret key; the survey's expiry bounds
it. No CSRF token is needed: the form is bound to that token and only sets one survey's rating, which
may be changed (not added to) until the survey expires, so a replayed post changes nothing more.
"""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from gateway.keys import DB, NOTIFIER, SETTINGS
from inbox.csat import record_rating, settings_of, survey_by_token
from inbox.csat_models import CsatSurvey
from inbox.lookup import InvalidInput, NotFoundError
from parley.db import utcnow

_GONE = "This rating link has expired. Thank you all the same!"
_UNKNOWN = "This rating link is not valid."


def _page(
    request: web.Request,
    *,
    status: int = 200,
    problem: str | None = None,
    context: dict[str, object] | None = None,
) -> web.Response:
    shown: dict[str, object] = {"problem": problem, "question": "", "saved": False, "rating": None}
    shown |= {"comment": None, **(context or {})}
    response = aiohttp_jinja2.render_template("csat/rate.html", request, shown, status=status)
    # The token is in the path: keep it out of other sites' Referer headers.
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _shown(survey: CsatSurvey, question: str, **extra: object) -> dict[str, object]:
    return {"question": question, "rating": survey.rating, "comment": survey.comment, **extra}


async def rating_page(request: web.Request) -> web.StreamResponse:
    async with request.app[DB].transaction() as session:
        try:
            survey = await survey_by_token(
                session, request.app[SETTINGS].secret_key, request.match_info["token"]
            )
        except NotFoundError:
            return _page(request, status=404, problem=_UNKNOWN)
        if utcnow() > survey.expires_at:
            return _page(request, status=410, problem=_GONE)
        settings = await settings_of(session, survey.tenant_id)
        return _page(request, context=_shown(survey, settings.question))


async def submit_rating(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    raw_rating, comment = str(form.get("rating", "")), str(form.get("comment", "")).strip()[:2000]
    async with request.app[DB].transaction() as session:
        try:
            survey = await survey_by_token(
                session, request.app[SETTINGS].secret_key, request.match_info["token"]
            )
        except NotFoundError:
            return _page(request, status=404, problem=_UNKNOWN)
        settings = await settings_of(session, survey.tenant_id)
        if raw_rating not in ("1", "2", "3", "4", "5"):
            return _page(request, status=422, context=_shown(survey, settings.question))
        try:
            await record_rating(session, survey, int(raw_rating), comment or None, via="link", now=utcnow())
        except InvalidInput:
            return _page(request, status=410, problem=_GONE)
        shown = _shown(survey, settings.question, saved=True)
    request.app[NOTIFIER].notify()
    return _page(request, context=shown)


def setup_csat_routes(app: web.Application) -> None:
    app.router.add_get("/csat/{token}", rating_page)
    app.router.add_post("/csat/{token}", submit_rating)
