"""The Timeline section of the contact panel: the contact's feed, newest first, older on demand.

The section (`contacts/_timeline.html`, included in the panel) loads its first page with htmx once
shown; each page ends with a "Show older" button that swaps in the next. Lines are built here as
plain text from the feed's values and escaped by the template: nothing a customer wrote is markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.api.permissions import Permission
from gateway.api.timeline import visible_kinds
from gateway.ui.contact_views import tenant_contact
from gateway.ui.deal_views import money
from gateway.ui.web import Ui, page
from inbox.timeline_feed import InvalidCursor, TimelineItem, contact_timeline

PAGE_SIZE = 20
_ICONS = {
    "message": "💬",
    "call": "☎",
    "voicemail": "☎",
    "conversation": "🗂",
    "deal": "💼",
    "ticket": "🎫",
    "csat": "★",
    "campaign": "📣",
    "consent": "✔",
    "lifecycle": "↗",
    "contact": "⇄",
}


@dataclass(frozen=True, slots=True)
class Line:
    """One line of the section: what happened (plain text), a detail, and where it links."""

    kind: str
    icon: str
    when: Any
    title: str
    detail: str
    href: str | None


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return ""
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def _money(data: dict[str, Any]) -> str:
    amount, currency = data.get("amount_minor"), data.get("currency")
    if not isinstance(amount, int) or not isinstance(currency, str):
        return ""
    return money(amount, currency)


def describe(item: TimelineItem) -> tuple[str, str]:
    """The item as a title and a detail, plain text."""
    d = item.data
    kind = item.kind
    channel = str(d.get("channel") or "")
    if kind == "message.in":
        return f"Customer wrote on {channel}", str(d.get("text") or "")
    if kind == "message.out":
        return f"Reply on {channel}", str(d.get("text") or "")
    if kind == "call":
        call = d.get("call") or {}
        parts = ["Call", str(call.get("status") or ""), _duration(call.get("duration"))]
        return " · ".join(p for p in parts if p), str(d.get("text") or "")
    if kind == "voicemail":
        length = _duration((d.get("voicemail") or {}).get("duration"))
        return f"Voicemail ({length})" if length else "Voicemail", str(d.get("text") or "")
    if kind.startswith("conversation."):
        verb = kind.split(".", 1)[1]
        return f"Conversation #{item.conversation_id} {verb}", str(d.get("inbox") or "")
    if kind.startswith("deal."):
        title = str(d.get("title") or f"#{item.deal_id}")
        money = _money(d)
        if kind == "deal.opened":
            return f"Deal “{title}” opened", " · ".join(p for p in (money, str(d.get("stage") or "")) if p)
        verb = {"deal.won": "won", "deal.lost": "lost"}.get(kind, "moved")
        move = f"{d.get('from_stage') or '?'} → {d.get('to_stage') or '?'}"
        return f"Deal “{title}” {verb}", " · ".join(p for p in (money, move) if p)
    if kind.startswith("ticket."):
        verb = {"ticket.created": "created", "ticket.updated": "updated"}.get(kind, "status changed")
        detail = str(d.get("subject") or d.get("title") or "")
        changes = d.get("changes")
        if kind == "ticket.updated" and isinstance(changes, dict) and changes:
            detail = ", ".join(
                f"{field}: {c.get('old', '?')} → {c.get('new', '?')}" if isinstance(c, dict) else str(field)
                for field, c in changes.items()
            )
        if kind == "ticket.status_changed":
            old, new = d.get("from") or d.get("old"), d.get("to") or d.get("new") or d.get("status")
            detail = f"{old or '?'} → {new or '?'}"
        return f"Ticket #{item.ticket_id} {verb}", detail
    if kind == "csat.rated":
        return f"Satisfaction rated {d.get('rating', '?')}", str(d.get("comment") or "")
    if kind.startswith("campaign."):
        verb = "sent" if kind == "campaign.sent" else "replied to"
        return f"Campaign #{item.campaign_id} {verb}", str(d.get("name") or "")
    if kind == "consent.changed":
        state = "granted" if d.get("granted") else "withdrawn"
        purpose = f" ({d['purpose']})" if d.get("purpose") else ""
        return f"Consent {state} for {d.get('channel') or '?'}{purpose}", str(d.get("source") or "")
    if kind == "lifecycle.changed":
        return f"Lifecycle {d.get('from') or '—'} → {d.get('to') or '?'}", str(d.get("reason") or "")
    if kind == "contact.merged":
        name = d.get("merged_name") or "a contact"
        return f"Merged with {name} (#{d.get('merged_id')})", str(d.get("reason") or "")
    return kind, ""


def _href(item: TimelineItem) -> str | None:
    if item.conversation_id is not None:
        return f"/inbox/c/{item.conversation_id}"
    if item.deal_id is not None:
        return "/deals"
    return None


def lines(ui: Ui, items: list[TimelineItem]) -> list[Line]:
    result = []
    for item in items:
        title, detail = describe(item)
        family = item.kind.split(".", 1)[0]
        result.append(
            Line(item.kind, _ICONS.get(family, "•"), ui.local(item.occurred_at), title, detail, _href(item))
        )
    return result


@page(allow=Permission.READ_CONTACTS)
async def timeline_page(ui: Ui) -> web.StreamResponse:
    """One page of the contact's timeline as list items, ending with a "Show older" button if more."""
    raw = ui.request.match_info["contact_id"]
    contact = await tenant_contact(ui, int(raw)) if raw.isdigit() and len(raw) <= 18 else None
    if contact is None:
        return web.Response(status=404, text="No such contact.")
    kind = ui.request.query.get("kind", "")
    before = ui.request.query.get("before") or None
    try:
        kinds = visible_kinds(ui.role, [k for k in kind.split(",") if k])
        feed = await contact_timeline(
            ui.session, ui.tenant_id, contact.id, kinds=kinds, cursor=before, limit=PAGE_SIZE
        )
    except (ValueError, InvalidCursor):
        return web.Response(status=400, text="That part of the timeline is not available.")
    context = {
        "contact_id": contact.id,
        "lines": lines(ui, list(feed.items)),
        "next_cursor": feed.next_cursor,
        "kind": kind,
        "first_page": before is None,
    }
    return ui.render("contacts/_timeline_items.html", context)


def setup_timeline_routes(app: web.Application) -> None:
    app.router.add_get("/contacts/{contact_id}/timeline", timeline_page)
