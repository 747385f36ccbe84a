"""CSAT: the tenant's survey settings (`/csat/settings`) and the ratings report (`/reports/csat`)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Integer, case, cast, func, select

from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable
from gateway.api.ticket_schemas import (
    CsatReport,
    CsatReportQuery,
    CsatReportRow,
    CsatSettingsIn,
    CsatSettingsOut,
)
from gateway.errors import ApiError
from inbox.csat import settings_of
from inbox.csat_models import CsatSettings, CsatSurvey
from routing.models import ConversationRouting

routes = RouteTable("csat")


def _settings_out(row: CsatSettings) -> CsatSettingsOut:
    return CsatSettingsOut(
        enabled=row.enabled,
        question=row.question,
        whatsapp_template=dict(row.whatsapp_template or {}),
        link_expiry_hours=row.link_expiry_hours,
        reply_window_hours=row.reply_window_hours,
    )


@routes.get("/csat/settings", allow=Permission.READ_REPORTS)
async def get_csat_settings(call: ApiRequest) -> CsatSettingsOut:
    """Whether surveys are sent after resolutions, with what question and WhatsApp template."""
    return _settings_out(await settings_of(call.session, call.tenant_id))


@routes.put("/csat/settings", allow=Permission.MANAGE_INBOXES)
async def put_csat_settings(call: ApiRequest, *, body: CsatSettingsIn) -> CsatSettingsOut:
    """Turn CSAT surveys on or off and set the question, the WhatsApp template and the expiries."""
    row = await call.session.get(CsatSettings, call.tenant_id)
    if row is None:
        row = await settings_of(call.session, call.tenant_id)
        call.session.add(row)
    row.enabled = body.enabled
    if body.question is not None:
        row.question = body.question
    if "whatsapp_template" in body.model_fields_set:
        row.whatsapp_template = {} if body.whatsapp_template is None else body.whatsapp_template.model_dump()
    if body.link_expiry_hours is not None:
        row.link_expiry_hours = body.link_expiry_hours
    if body.reply_window_hours is not None:
        row.reply_window_hours = body.reply_window_hours
    await call.session.flush()
    return _settings_out(row)


def _row(group: Any, sent: int, responses: int, total: int, promoters: int) -> CsatReportRow:
    return CsatReportRow(
        group=None if group is None else str(group),
        sent=sent,
        responses=responses,
        response_rate=round(responses / sent, 4) if sent else None,
        average=round(total / responses, 4) if responses else None,
        csat=round(100 * promoters / responses, 2) if responses else None,
    )


@routes.get("/reports/csat", allow=Permission.READ_REPORTS, errors=[400])
async def csat_report(call: ApiRequest, *, query: CsatReportQuery) -> CsatReport:
    """Surveys sent in [from, to] (UTC days) per agent, team, inbox or day: responses, average, CSAT %.

    CSAT % is the share of responses rated 4 or 5.
    """
    if query.date_to < query.date_from:
        raise ApiError(400, "invalid_range", "`to` is before `from`.")
    start = dt.datetime.combine(query.date_from, dt.time(), dt.UTC)
    end = dt.datetime.combine(query.date_to + dt.timedelta(days=1), dt.time(), dt.UTC)
    group: Any
    sqlite = (await call.session.connection()).dialect.name == "sqlite"
    if query.group_by == "agent":
        group = CsatSurvey.agent_id
    elif query.group_by == "inbox":
        group = CsatSurvey.inbox_id
    elif query.group_by == "team":
        group = ConversationRouting.team_id
    elif sqlite:
        group = func.strftime("%Y-%m-%d", CsatSurvey.sent_at)
    else:
        group = func.to_char(func.timezone("UTC", CsatSurvey.sent_at), "YYYY-MM-DD")
    stmt = (
        select(
            group.label("grp"),
            func.count(CsatSurvey.id),
            func.count(CsatSurvey.rating),
            func.coalesce(func.sum(CsatSurvey.rating), 0),
            func.coalesce(func.sum(cast(case((CsatSurvey.rating >= 4, 1), else_=0), Integer)), 0),
        )
        .where(CsatSurvey.tenant_id == call.tenant_id, CsatSurvey.sent_at >= start, CsatSurvey.sent_at < end)
        .group_by(group)
    )
    if query.group_by == "team":
        stmt = stmt.outerjoin(
            ConversationRouting, ConversationRouting.conversation_id == CsatSurvey.conversation_id
        )
    rows = [
        (grp, int(s), int(r), int(t), int(p)) for grp, s, r, t, p in (await call.session.execute(stmt)).all()
    ]
    rows.sort(key=lambda row: (row[0] is None, str(row[0]) if query.group_by == "day" else (row[0] or 0)))
    totals = [sum(row[i] for row in rows) for i in range(1, 5)]
    return CsatReport(
        group_by=query.group_by,
        data=[_row(*row) for row in rows],
        total=_row(None, *totals),
    )
