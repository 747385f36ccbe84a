"""Tickets opened from conversations: their subject and priority levels (no database needed)."""

from __future__ import annotations

from crm_core.ticket_models import PRIORITIES
from inbox.models import ConversationPriority
from inbox.tickets import subject_from


def test_ticket_priorities_are_the_conversations_levels() -> None:
    assert tuple(p.value for p in ConversationPriority) == PRIORITIES


def test_the_subject_is_the_first_line_of_the_customers_words_shortened() -> None:
    assert subject_from("\n  My parcel never arrived \nOrder 1234", 7) == "My parcel never arrived"
    assert subject_from("", 7) == subject_from(None, 7) == "Conversation 7"
    long = subject_from("x" * 500, 7)
    assert len(long) == 120 and long.endswith("…")
