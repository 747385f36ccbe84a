"""Priority scoring: a conversation's priority computed from signals, with the reasons why.

Pure and side-effect free: `match(signals, config)` finds the reasons a conversation deserves
attention (each a signal, a label an agent reads and its points), `assess(signals, config)` sums
them and maps the score onto a level through the tenant's thresholds. Loading the signals and
storing the outcome is `routing.prioritizer`'s business.

Signals: the contact's lifecycle stage; the contact's best open deal by value bands per currency
(amounts in minor units; there is no currency conversion, so a deal in a currency without bands
scores nothing); urgency words and phrases in the customer's unanswered messages (matched on word
boundaries, ignoring case and accents, every language's list at once); the bot layer's detected
intent on those messages; minutes waiting for an answer, up to a cap; and a VIP tag on the contact
or label on the conversation. Points are never negative, so adding a signal never lowers a priority.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from babel.core import Locale
from babel.numbers import UnknownCurrencyError, format_currency, get_currency_precision, parse_pattern

LEVELS = ("none", "low", "medium", "high", "urgent")
THRESHOLD_LEVELS = LEVELS[1:]

LIFECYCLE = "lifecycle"
DEAL = "deal"
URGENCY = "urgency"
INTENT = "intent"
WAITING = "waiting"
VIP = "vip"
SIGNALS = (LIFECYCLE, DEAL, URGENCY, INTENT, WAITING, VIP)

DEFAULT_CONFIG: Mapping[str, Any] = {
    "lifecycle_points": {
        "visitor": 0,
        "lead": 0,
        "mql": 5,
        "sql": 10,
        "opportunity": 15,
        "customer": 15,
        "churned": 10,
    },
    # Minor units: 1,000.00 is 100000. The highest band an open deal reaches counts.
    "deal_bands": {
        currency: [
            {"min_amount_minor": 100_000, "points": 10},
            {"min_amount_minor": 1_000_000, "points": 30},
            {"min_amount_minor": 5_000_000, "points": 50},
        ]
        for currency in ("EUR", "USD", "GBP", "CHF")
    },
    "urgency_phrases": {
        "en": {
            "urgent": 20,
            "asap": 20,
            "as soon as possible": 20,
            "emergency": 25,
            "cancel my": 15,
            "refund": 10,
            "not working": 15,
            "broken": 10,
            "complaint": 10,
        },
        "de": {"dringend": 20, "sofort": 15, "funktioniert nicht": 15, "kündigen": 15, "rückerstattung": 10},
        "fr": {"urgent": 20, "ne fonctionne pas": 15, "remboursement": 10, "annuler mon": 15},
        "es": {"urgente": 20, "no funciona": 15, "reembolso": 10, "cancelar mi": 15},
    },
    "urgency_max_points": 40,
    "intent_points": {"cancel_subscription": 25, "complaint": 20, "billing_issue": 10, "report_outage": 30},
    "waiting": {"points_per_minute": 1.0, "max_points": 30},
    "vip": {"tag": "vip", "points": 40},
    "thresholds": {"low": 10, "medium": 20, "high": 40, "urgent": 70},
}


def fold(text: str) -> str:
    """Text as phrases are compared: accents dropped, case folded ("Kündigen" → "kundigen")."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


@dataclass(frozen=True, slots=True)
class PhraseMatcher:
    """Finds configured phrases in text on word boundaries, whatever the case and accents."""

    points: Mapping[str, int]  # folded phrase -> points
    spelling: Mapping[str, str]  # folded phrase -> the phrase as configured (for the label)
    pattern: re.Pattern[str] | None

    @classmethod
    def build(cls, phrases: Mapping[str, Mapping[str, int]]) -> PhraseMatcher:
        points: dict[str, int] = {}
        spelling: dict[str, str] = {}
        for by_phrase in phrases.values():
            for phrase, value in by_phrase.items():
                key = " ".join(fold(phrase).split())
                if key and value > points.get(key, -1):
                    points[key] = int(value)
                    spelling[key] = " ".join(phrase.split())
        if not points:
            return cls(points, spelling, None)
        # Longest first: "cancel my" wins over a shorter phrase starting at the same place.
        alternatives = sorted(points, key=len, reverse=True)
        body = "|".join(r"\s+".join(re.escape(word) for word in key.split()) for key in alternatives)
        return cls(points, spelling, re.compile(rf"(?<!\w)(?:{body})(?!\w)"))

    def find(self, texts: Iterable[str]) -> list[str]:
        """The folded phrases found in `texts`, each once, in order of first appearance."""
        if self.pattern is None:
            return []
        found: dict[str, None] = {}
        for text in texts:
            for hit in self.pattern.finditer(fold(text)):
                found.setdefault(" ".join(hit.group(0).split()), None)
        return list(found)


@dataclass(frozen=True, slots=True)
class DealBand:
    min_amount_minor: int
    points: int


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    """A tenant's scoring settings; `from_dict` fills what is missing from `DEFAULT_CONFIG`."""

    lifecycle_points: Mapping[str, int]
    deal_bands: Mapping[str, tuple[DealBand, ...]]
    urgency_phrases: Mapping[str, Mapping[str, int]]
    urgency_max_points: int
    intent_points: Mapping[str, int]
    waiting_points_per_minute: float
    waiting_max_points: int
    vip_tag: str
    vip_points: int
    thresholds: Mapping[str, int]
    matcher: PhraseMatcher = field(compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None) -> ScoringConfig:
        merged = {**DEFAULT_CONFIG, **(data or {})}
        waiting = {**DEFAULT_CONFIG["waiting"], **merged["waiting"]}
        vip = {**DEFAULT_CONFIG["vip"], **merged["vip"]}
        phrases = {
            str(lang): {str(p): int(v) for p, v in by.items()}
            for lang, by in merged["urgency_phrases"].items()
        }
        return cls(
            lifecycle_points={str(k): int(v) for k, v in merged["lifecycle_points"].items()},
            deal_bands={
                str(currency).upper(): tuple(
                    sorted(
                        (DealBand(int(b["min_amount_minor"]), int(b["points"])) for b in bands),
                        key=lambda band: band.min_amount_minor,
                    )
                )
                for currency, bands in merged["deal_bands"].items()
            },
            urgency_phrases=phrases,
            urgency_max_points=int(merged["urgency_max_points"]),
            intent_points={str(k): int(v) for k, v in merged["intent_points"].items()},
            waiting_points_per_minute=float(waiting["points_per_minute"]),
            waiting_max_points=int(waiting["max_points"]),
            vip_tag=str(vip["tag"]),
            vip_points=int(vip["points"]),
            thresholds={level: int(merged["thresholds"][level]) for level in THRESHOLD_LEVELS},
            matcher=PhraseMatcher.build(phrases),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "lifecycle_points": dict(self.lifecycle_points),
            "deal_bands": {
                currency: [{"min_amount_minor": b.min_amount_minor, "points": b.points} for b in bands]
                for currency, bands in self.deal_bands.items()
            },
            "urgency_phrases": {lang: dict(by) for lang, by in self.urgency_phrases.items()},
            "urgency_max_points": self.urgency_max_points,
            "intent_points": dict(self.intent_points),
            "waiting": {
                "points_per_minute": self.waiting_points_per_minute,
                "max_points": self.waiting_max_points,
            },
            "vip": {"tag": self.vip_tag, "points": self.vip_points},
            "thresholds": dict(self.thresholds),
        }


@dataclass(frozen=True, slots=True)
class OpenDeal:
    amount_minor: int
    currency: str


@dataclass(frozen=True, slots=True)
class Signals:
    """What the scorer knows of one conversation at `now`."""

    now: datetime
    lifecycle_stage: str | None = None
    open_deals: Sequence[OpenDeal] = ()
    # The customer's messages nobody has answered yet (their text), and the intents found on them.
    texts: Sequence[str] = ()
    intents: Sequence[str] = ()
    # When the oldest unanswered customer message arrived; None: nobody is waiting for an answer.
    waiting_since: datetime | None = None
    tags: Sequence[str] = ()  # the contact's tags and the conversation's labels


@dataclass(frozen=True, slots=True)
class Reason:
    signal: str
    label: str
    points: int

    def as_dict(self) -> dict[str, Any]:
        return {"signal": self.signal, "label": self.label, "points": self.points}


@dataclass(frozen=True, slots=True)
class Assessment:
    priority: str
    score: int
    reasons: tuple[Reason, ...]

    def reasons_as_dicts(self) -> list[dict[str, Any]]:
        return [reason.as_dict() for reason in self.reasons]


_LOCALE = Locale.parse("en")
_WHOLE = parse_pattern("¤#,##0")


@functools.lru_cache(maxsize=4096)
def format_money(amount_minor: int, currency: str) -> str:
    """Money as agents read it: "€12,000" for 1200000 EUR (minor units; no decimals when they are zero)."""
    try:
        amount = Decimal(amount_minor).scaleb(-get_currency_precision(currency))
        if amount == amount.to_integral_value():
            return str(_WHOLE.apply(amount, _LOCALE, currency=currency, currency_digits=False))
        return format_currency(amount, currency, locale=_LOCALE)
    except (UnknownCurrencyError, ValueError):
        return f"{Decimal(amount_minor).scaleb(-2):,.2f} {currency}"


def format_wait(minutes: int) -> str:
    if minutes < 60:
        return f"waiting {minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"waiting {hours} h {rest} min" if rest else f"waiting {hours} h"


def _deal_reason(deals: Sequence[OpenDeal], config: ScoringConfig) -> Reason | None:
    best: tuple[int, int, OpenDeal] | None = None
    for deal in deals:
        bands = config.deal_bands.get(deal.currency.upper(), ())
        points = max((b.points for b in bands if deal.amount_minor >= b.min_amount_minor), default=0)
        if points > 0 and (best is None or (points, deal.amount_minor) > best[:2]):
            best = (points, deal.amount_minor, deal)
    if best is None:
        return None
    points, _, deal = best
    return Reason(DEAL, f"open deal {format_money(deal.amount_minor, deal.currency.upper())}", points)


def _urgency_reasons(texts: Sequence[str], config: ScoringConfig) -> list[Reason]:
    found = config.matcher.find(texts)
    # The strongest words first, until the cap: each keeps its label even when the cap trims it.
    ranked = sorted(found, key=lambda key: -config.matcher.points[key])
    room = config.urgency_max_points
    reasons = []
    for key in ranked:
        points = min(config.matcher.points[key], room)
        if points <= 0:
            continue
        room -= points
        reasons.append(Reason(URGENCY, f"said '{config.matcher.spelling[key]}'", points))
    return reasons


def match(signals: Signals, config: ScoringConfig) -> list[Reason]:
    """Every reason the conversation scores points for, strongest signal kinds in a fixed order."""
    reasons: list[Reason] = []
    vip = fold(config.vip_tag)
    if config.vip_points > 0 and any(fold(tag) == vip for tag in signals.tags):
        reasons.append(Reason(VIP, "VIP", config.vip_points))
    deal = _deal_reason(signals.open_deals, config)
    if deal is not None:
        reasons.append(deal)
    if signals.waiting_since is not None:
        minutes = max(0, int((signals.now - signals.waiting_since).total_seconds() // 60))
        points = min(config.waiting_max_points, int(minutes * config.waiting_points_per_minute))
        if points > 0:
            reasons.append(Reason(WAITING, format_wait(minutes), points))
    intents = sorted(
        {name for name in signals.intents if config.intent_points.get(name, 0) > 0},
        key=lambda name: (-config.intent_points[name], name),
    )
    if intents:
        reasons.append(Reason(INTENT, f"intent: {intents[0]}", config.intent_points[intents[0]]))
    reasons.extend(_urgency_reasons(signals.texts, config))
    stage_points = config.lifecycle_points.get(signals.lifecycle_stage or "", 0)
    if stage_points > 0:
        reasons.append(Reason(LIFECYCLE, f"lifecycle: {signals.lifecycle_stage}", stage_points))
    return reasons


def level_for(score: int, thresholds: Mapping[str, int]) -> str:
    """The highest level whose threshold the score reaches ("none" below every threshold)."""
    reached = [level for level in THRESHOLD_LEVELS if score >= thresholds[level]]
    return max(reached, key=LEVELS.index) if reached else "none"


def assess(signals: Signals, config: ScoringConfig) -> Assessment:
    """The conversation's computed priority, score and reasons."""
    reasons = tuple(match(signals, config))
    score = sum(reason.points for reason in reasons)
    return Assessment(level_for(score, config.thresholds), score, reasons)


SOURCE_NOTES = {
    "manual": "set by hand; scoring resumes once the conversation is resolved",
    "escalation": "raised by an SLA escalation; scoring resumes once the conversation is resolved",
}


def explain(priority: str, reasons: Iterable[Mapping[str, Any]] | None, source: str = "computed") -> str:
    """The sentence an agent reads: "Priority high because: open deal €12,000 · waiting 14 min".

    Plain text: escape it to show it. A priority set by hand or by an escalation is not explained by
    the scorer's reasons: it says who set it instead.
    """
    if source in SOURCE_NOTES:
        return f"Priority {priority}, {SOURCE_NOTES[source]}"
    labels = [str(r.get("label", "")) for r in reasons or () if r.get("label")]
    if not labels:
        return f"Priority {priority}"
    return f"Priority {priority} because: " + " · ".join(labels)
