"""The pure priority scorer: each signal, phrase matching, thresholds, and properties under hypothesis."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing.priority import (
    DEFAULT_CONFIG,
    LEVELS,
    OpenDeal,
    ScoringConfig,
    Signals,
    assess,
    explain,
    format_money,
    level_for,
    match,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
CONFIG = ScoringConfig.from_dict()


def labels(signals: Signals, config: ScoringConfig = CONFIG) -> list[str]:
    return [reason.label for reason in match(signals, config)]


def said(*texts: str) -> list[str]:
    return labels(Signals(now=NOW, texts=texts))


def test_the_issues_example_reads_as_the_issue_wrote_it() -> None:
    signals = Signals(
        now=NOW,
        open_deals=[OpenDeal(1_200_000, "EUR")],
        waiting_since=NOW - timedelta(minutes=14, seconds=30),
    )
    assessment = assess(signals, CONFIG)
    assert assessment.priority == "high"
    assert [r.label for r in assessment.reasons] == ["open deal €12,000", "waiting 14 min"]
    assert assessment.score == 30 + 14
    assert (
        explain(assessment.priority, assessment.reasons_as_dicts())
        == "Priority high because: open deal €12,000 · waiting 14 min"
    )


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("This is URGENT!", ["said 'urgent'"]),
        ("urgent.", ["said 'urgent'"]),
        ("It is urgently needed", []),  # word boundaries: "urgently" is not "urgent"
        ("nonurgent matter", []),
        ("Es ist dringend", ["said 'dringend'"]),
        ("Ich will KUNDIGEN", ["said 'kündigen'"]),  # accents do not matter either way
        ("Ich will kündigen", ["said 'kündigen'"]),
        ("please cancel   my\nplan", ["said 'cancel my'"]),  # any whitespace between words
        ("cancel mysql backups", []),
        ("the app is not working", ["said 'not working'"]),
        ("Ça ne fonctionne pas", ["said 'ne fonctionne pas'"]),
        ("ASAP please", ["said 'asap'"]),
        ("nothing special here", []),
    ],
)
def test_urgency_phrases_match_on_word_boundaries_ignoring_case_and_accents(
    text: str, found: list[str]
) -> None:
    assert said(text) == found


def test_urgency_words_count_once_each_across_messages_and_up_to_the_cap() -> None:
    reasons = match(Signals(now=NOW, texts=["urgent", "URGENT again", "refund"]), CONFIG)
    assert [(r.label, r.points) for r in reasons] == [("said 'urgent'", 20), ("said 'refund'", 10)]
    capped = match(Signals(now=NOW, texts=["emergency! urgent asap, refund"]), CONFIG)
    assert sum(r.points for r in capped) == CONFIG.urgency_max_points == 40
    assert [r.label for r in capped] == ["said 'emergency'", "said 'urgent'"]  # the strongest first


def test_lifecycle_stage_scores_its_configured_points() -> None:
    assert [(r.label, r.points) for r in match(Signals(now=NOW, lifecycle_stage="customer"), CONFIG)] == [
        ("lifecycle: customer", 15)
    ]
    assert match(Signals(now=NOW, lifecycle_stage="lead"), CONFIG) == []  # zero points: no reason


def test_the_best_open_deal_counts_by_its_currencys_bands_without_conversion() -> None:
    deals = [OpenDeal(150_000, "USD"), OpenDeal(6_000_000, "GBP"), OpenDeal(99_999_999, "JPY")]
    [reason] = match(Signals(now=NOW, open_deals=deals), CONFIG)
    assert (reason.label, reason.points) == ("open deal £60,000", 50)
    # No bands for yen: no points, however large (there is no FX conversion).
    assert match(Signals(now=NOW, open_deals=[OpenDeal(99_999_999, "JPY")]), CONFIG) == []
    assert match(Signals(now=NOW, open_deals=[OpenDeal(99_999, "EUR")]), CONFIG) == []  # below the bands


def test_intent_scores_the_strongest_known_intent() -> None:
    reasons = match(Signals(now=NOW, intents=["greet", "billing_issue", "cancel_subscription"]), CONFIG)
    assert [(r.label, r.points) for r in reasons] == [("intent: cancel_subscription", 25)]


def test_waiting_time_scores_per_minute_up_to_the_cap() -> None:
    def waiting(minutes: float) -> list[tuple[str, int]]:
        signals = Signals(now=NOW, waiting_since=NOW - timedelta(minutes=minutes))
        return [(r.label, r.points) for r in match(signals, CONFIG)]

    assert waiting(0.5) == []
    assert waiting(14.9) == [("waiting 14 min", 14)]
    assert waiting(125) == [("waiting 2 h 5 min", 30)]
    half = ScoringConfig.from_dict({"waiting": {"points_per_minute": 0.5, "max_points": 100}})
    half_hour = Signals(now=NOW, waiting_since=NOW - timedelta(minutes=30))
    assert [r.points for r in match(half_hour, half)] == [15]


def test_the_vip_tag_counts_on_the_contact_or_the_conversation_in_any_case() -> None:
    assert labels(Signals(now=NOW, tags=["Vip"])) == ["VIP"]
    gold = ScoringConfig.from_dict({"vip": {"tag": "Gold"}})
    assert labels(Signals(now=NOW, tags=["gold"]), gold) == ["VIP"]
    assert labels(Signals(now=NOW, tags=["vip"]), gold) == []


def test_thresholds_map_the_score_onto_levels() -> None:
    thresholds = DEFAULT_CONFIG["thresholds"]
    assert [level_for(s, thresholds) for s in (0, 9, 10, 19, 20, 39, 40, 69, 70, 500)] == [
        "none",
        "none",
        "low",
        "low",
        "medium",
        "medium",
        "high",
        "high",
        "urgent",
        "urgent",
    ]


def test_money_is_formatted_in_the_currencys_minor_units() -> None:
    assert format_money(1_200_000, "EUR") == "€12,000"
    assert format_money(1_200_050, "USD") == "$12,000.50"
    assert format_money(1_234_567, "JPY") == "¥1,234,567"  # no minor units
    assert format_money(1_234, "KWD") == "KWD1.234"  # three


def test_a_config_survives_its_round_trip() -> None:
    assert ScoringConfig.from_dict(CONFIG.as_dict()) == CONFIG


# --- properties -----------------------------------------------------------------------------------

stages = st.sampled_from(["visitor", "lead", "mql", "sql", "opportunity", "customer", "churned", None])
deal = st.builds(OpenDeal, st.integers(0, 10_000_000), st.sampled_from(["EUR", "USD", "GBP", "JPY"]))
deals = st.lists(deal, max_size=3)
words = st.sampled_from(["urgent", "refund", "hello", "dringend", "not working", "thanks", "asap", "broken"])
texts = st.lists(st.lists(words, max_size=5).map(" ".join), max_size=3)
intent = st.sampled_from(["complaint", "greet", "billing_issue", "report_outage"])
intents = st.lists(intent, max_size=2)
waits = st.one_of(st.none(), st.integers(0, 300).map(lambda m: NOW - timedelta(minutes=m)))
tags = st.lists(st.sampled_from(["vip", "trial", "VIP", "beta"]), max_size=2)
signals_st = st.builds(
    Signals,
    now=st.just(NOW),
    lifecycle_stage=stages,
    open_deals=deals,
    texts=texts,
    intents=intents,
    waiting_since=waits,
    tags=tags,
)
thresholds_st = st.lists(st.integers(0, 200), min_size=4, max_size=4).map(sorted)


@st.composite
def added_signal(draw: st.DrawFn, signals: Signals) -> Signals:
    """`signals` with one more positive signal: a deal, words, an intent, a longer wait, a tag, a stage."""
    kind = draw(st.sampled_from(["deal", "text", "intent", "wait", "tag", "stage"]))
    if kind == "deal":
        return dataclasses.replace(signals, open_deals=[*signals.open_deals, draw(deal)])
    if kind == "text":
        return dataclasses.replace(signals, texts=[*signals.texts, draw(words)])
    if kind == "intent":
        return dataclasses.replace(signals, intents=[*signals.intents, draw(intent)])
    if kind == "wait":
        since = signals.waiting_since or NOW
        return dataclasses.replace(signals, waiting_since=since - timedelta(minutes=draw(st.integers(0, 60))))
    if kind == "tag":
        return dataclasses.replace(signals, tags=[*signals.tags, "vip"])
    stage = signals.lifecycle_stage
    better = max(
        ["visitor", "lead", "mql", "sql", "opportunity", "customer", "churned"],
        key=lambda s: CONFIG.lifecycle_points.get(s, 0),
    )
    if CONFIG.lifecycle_points.get(stage or "", 0) <= CONFIG.lifecycle_points[better]:
        return dataclasses.replace(signals, lifecycle_stage=better)
    return signals


@given(st.data(), signals_st, thresholds_st)
def test_adding_a_positive_signal_never_lowers_the_priority(
    data: st.DataObject, signals: Signals, thresholds: list[int]
) -> None:
    config = dataclasses.replace(
        CONFIG, thresholds=dict(zip(("low", "medium", "high", "urgent"), thresholds, strict=True))
    )
    more = data.draw(added_signal(signals))
    before, after = assess(signals, config), assess(more, config)
    assert after.score >= before.score
    assert LEVELS.index(after.priority) >= LEVELS.index(before.priority)


@given(signals_st, thresholds_st)
def test_the_level_is_the_highest_threshold_the_score_reaches_and_the_reasons_add_up(
    signals: Signals, thresholds: list[int]
) -> None:
    named = dict(zip(("low", "medium", "high", "urgent"), thresholds, strict=True))
    config = dataclasses.replace(CONFIG, thresholds=named)
    assessment = assess(signals, config)
    assert assessment.score == sum(r.points for r in assessment.reasons)
    assert all(r.points > 0 for r in assessment.reasons)
    index = LEVELS.index(assessment.priority)
    if index > 0:
        assert assessment.score >= named[assessment.priority]
    if index < len(LEVELS) - 1:
        assert assessment.score < named[LEVELS[index + 1]]
