"""Why a conversation has its priority, in the inbox pages (HTTP client, both databases)."""

from __future__ import annotations

import html as html_lib

from crm_core.models import ContactTag
from inbox.actions import set_priority
from inbox.models import Conversation
from parley.db import Database
from parley.models import Role
from routing.prioritizer import recompute
from tests.ui.inbox_seed import add_message, make_contact, make_conversation, make_inbox
from tests.ui.test_inbox_views import HOSTILE, Agent, agent, client, make_user

__all__ = ["agent", "client"]


async def test_the_thread_header_and_the_list_explain_a_computed_priority(db: Database, agent: Agent) -> None:
    inbox = await make_inbox(db, agent.tenant_id)
    contact = await make_contact(db, agent.tenant_id, name="Zoë")
    cid = await make_conversation(db, agent.tenant_id, inbox, contact)
    await add_message(db, cid, "This is urgent, my card was charged twice")
    async with db.transaction() as session:
        session.add(ContactTag(contact_id=contact[0], tag="vip", tenant_id=agent.tenant_id))
    async with db.transaction() as session:
        await recompute(session, agent.tenant_id, [cid])

    status, page = await agent.get(f"/inbox/c/{cid}")
    assert status == 200
    sentence = "Priority high because: VIP · said &#39;urgent&#39;"
    assert f'<p class="priority-why" id="priority-why-{cid}" data-priority-source="computed">' in page
    assert sentence in page
    assert f'aria-describedby="priority-why-{cid}"' in page
    _, listing = await agent.get("/inbox?view=all")
    assert f'<span class="prio prio-high" title="{sentence}">' in listing


async def test_a_manual_priority_says_who_set_it_and_reasons_stay_text(db: Database, agent: Agent) -> None:
    inbox = await make_inbox(db, agent.tenant_id)
    cid = await make_conversation(db, agent.tenant_id, inbox, await make_contact(db, agent.tenant_id))
    ann = await make_user(db, agent.tenant_id, "ann@acme.example.com", role=Role.SUPERVISOR, name="Ann Lead")
    async with db.transaction() as session:
        await set_priority(session, agent.tenant_id, ann, cid, "high")
    _, page = await agent.get(f"/inbox/c/{cid}")
    assert "Priority high, set by Ann Lead. It stands until the conversation is resolved" in page

    async with db.transaction() as session:
        row = await session.get_one(Conversation, cid)
        row.priority_source = "computed"
        row.priority_reasons = [{"signal": "urgency", "label": HOSTILE, "points": 50}]
    _, page = await agent.get(f"/inbox/c/{cid}")
    assert HOSTILE not in page
    assert html_lib.escape(f"Priority high because: {HOSTILE}") in page
