"""Priority scoring in the agents' UI: the sentence that says why a conversation has its priority."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from inbox.models import Conversation
from routing.priority import explain


def priority_why(conversation: Conversation) -> str:
    """The sentence saying why the conversation has its priority, or who set it (plain text)."""
    return explain(conversation.priority, conversation.priority_reasons, conversation.priority_source)


def setup_priority_ui(app: web.Application) -> None:
    aiohttp_jinja2.get_env(app).filters["priority_why"] = priority_why
