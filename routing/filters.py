"""Routing's side of the agents' conversation list: which conversations a team has.

`inbox.listing` cannot import routing (it sits below it), so it takes a subquery of conversation
ids to keep (`ConversationFilters.within`); this builds the team's. The list stays one query, and
routing keeps its own tables to itself.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, select

from routing.models import ConversationRouting


def team_conversations(tenant_id: int, team_id: int) -> Select[Any]:
    """Ids of the tenant's conversations routed to `team_id` (another tenant's team has none)."""
    return select(ConversationRouting.conversation_id).where(
        ConversationRouting.tenant_id == tenant_id, ConversationRouting.team_id == team_id
    )
