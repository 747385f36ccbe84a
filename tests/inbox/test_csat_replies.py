"""Which customer replies are CSAT ratings: a digit 1-5 first, the rest the comment."""

from __future__ import annotations

import pytest

from inbox.csat import parse_rating_reply, survey_id_of, survey_text, survey_token
from inbox.lookup import NotFoundError


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("4", (4, None)),
        (" 5 ", (5, None)),
        ("4 great service", (4, "great service")),
        ("5! thanks a lot", (5, "thanks a lot")),
        ("3/5 slow but fine", (3, "slow but fine")),
        ("2 - nobody\nanswered", (2, "nobody\nanswered")),
        ("1.", (1, None)),
    ],
)
def test_a_leading_digit_from_1_to_5_is_a_rating(text: str, parsed: tuple[int, str | None]) -> None:
    assert parse_rating_reply(text) == parsed


@pytest.mark.parametrize("text", ["", "hello", "0", "6", "45", "4.5 stars", "10 items missing", "four", "#4"])
def test_anything_else_is_not(text: str) -> None:
    assert parse_rating_reply(text) is None


def test_links_are_signed_and_a_forged_one_names_no_survey() -> None:
    token = survey_token("key-one", 42)
    assert survey_id_of("key-one", token) == 42
    with pytest.raises(NotFoundError):
        survey_id_of("key-two", token)
    with pytest.raises(NotFoundError):
        survey_id_of("key-one", token[:-2] + "xx")
    assert "Reply with a number from 1 to 5" in survey_text("How did we do?", None)
