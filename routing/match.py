"""Who should take a conversation: pure, side-effect-free decisions over value objects.

`match(need, agents, loads, now)` picks one agent for one conversation by walking its strategy
chain; `plan(waiting, agents, loads, now)` serves a whole queue in order (priority, then time
waiting) and says which conversation goes to whom. Nothing here touches the database: the
assigner (`routing.assigner`) loads the facts under a lock, asks, and writes the answer.

Hard requirements apply whatever the strategy: the agent is available (online, within working
hours), has free capacity for the conversation's channel kind, belongs to the serving team (or,
after the overflow wait, the overflow team), holds every required skill at the required level and
speaks the required language. Strategies only rank the agents who pass. Every automatic chain
ends in `least_loaded`, so a conversation never waits while someone who could take it is free;
only the `manual` strategy leaves a conversation for a person to pick.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from zoneinfo import ZoneInfo

CHAT, EMAIL, VOICE = "chat", "email", "voice"
CHANNEL_KINDS = (CHAT, EMAIL, VOICE)

STRATEGIES = ("manual", "sticky", "skill", "territory", "round_robin", "least_loaded")
DEFAULT_CHAIN = ("sticky", "skill", "least_loaded")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def channel_kind(channel: str) -> str:
    """The capacity a channel draws on: phone calls are voice, mailboxes email, everything else chat."""
    if channel.startswith("email") or channel in {"imap", "smtp", "mailgun", "postmark", "sendgrid"}:
        return EMAIL
    if channel.endswith("voice") or channel in {"voice", "sip"}:
        return VOICE
    return CHAT


def within_hours(hours: Mapping[str, Sequence[Sequence[str]]], time_zone: str, now: datetime) -> bool:
    """True if `now` falls in the agent's working hours (weekday → [start, end) pairs in `time_zone`).

    No hours at all means any time. A pair whose end is before its start runs past midnight.
    """
    if not hours:
        return True
    local = now.astimezone(ZoneInfo(time_zone))
    clock = local.time()
    today = WEEKDAYS[local.weekday()]
    yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
    for start_text, end_text in hours.get(today, ()):
        start, end = time.fromisoformat(start_text), time.fromisoformat(end_text)
        if start == end:
            continue
        if (start <= clock < end) if start < end else clock >= start:
            return True
    for start_text, end_text in hours.get(yesterday, ()):
        start, end = time.fromisoformat(start_text), time.fromisoformat(end_text)
        if end < start and clock < end:  # yesterday's night shift still running
            return True
    return False


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent as routing sees them at one moment."""

    user_id: int
    available: bool
    capacity: Mapping[str, int]
    teams: frozenset[int] = frozenset()
    skills: Mapping[str, int] = field(default_factory=dict)
    languages: frozenset[str] = frozenset()
    territories: frozenset[str] = frozenset()
    last_assigned_at: float = 0.0  # seconds since the epoch; 0 = never


@dataclass(frozen=True, slots=True)
class Need:
    """A conversation waiting for an agent, with everything its routing depends on."""

    conversation_id: int
    channel_kind: str
    queued_at: float  # seconds since the epoch
    priority: int = 0
    team_id: int | None = None
    overflow_team_id: int | None = None
    overflow_after: float | None = None
    required_skills: Mapping[str, int] = field(default_factory=dict)
    language: str | None = None
    territory: str | None = None
    previous_agent_id: int | None = None
    strategies: tuple[str, ...] = DEFAULT_CHAIN

    @property
    def order(self) -> tuple[int, float, int]:
        """Queue order: higher priority first, then longer waiting, then the older conversation."""
        return (-self.priority, self.queued_at, self.conversation_id)

    @property
    def automatic(self) -> bool:
        return "manual" not in self.strategies

    def teams(self, now: float) -> frozenset[int] | None:
        """The teams that may take it now (None: anyone); the overflow team joins after the wait."""
        if self.team_id is None:
            return None
        if (
            self.overflow_team_id is not None
            and self.overflow_after is not None
            and now - self.queued_at >= self.overflow_after
        ):
            return frozenset({self.team_id, self.overflow_team_id})
        return frozenset({self.team_id})


@dataclass(frozen=True, slots=True)
class Choice:
    conversation_id: int
    user_id: int
    strategy: str


Loads = dict[int, dict[str, int]]


def free_capacity(agent: Agent, loads: Mapping[int, Mapping[str, int]], kind: str) -> int:
    return agent.capacity.get(kind, 0) - loads.get(agent.user_id, {}).get(kind, 0)


def eligible(need: Need, agent: Agent, loads: Mapping[int, Mapping[str, int]], now: float) -> bool:
    """True if `agent` may take `need` now: the hard requirements, whatever the strategy."""
    if not agent.available or free_capacity(agent, loads, need.channel_kind) <= 0:
        return False
    teams = need.teams(now)
    if teams is not None and not (teams & agent.teams):
        return False
    if need.language is not None and need.language not in agent.languages:
        return False
    return all(agent.skills.get(skill, 0) >= level for skill, level in need.required_skills.items())


def _load_ratio(agent: Agent, loads: Mapping[int, Mapping[str, int]], kind: str) -> float:
    return loads.get(agent.user_id, {}).get(kind, 0) / max(agent.capacity.get(kind, 0), 1)


Ranker = Callable[[Need, Sequence[Agent], Mapping[int, Mapping[str, int]]], Agent | None]


def _sticky(need: Need, agents: Sequence[Agent], loads: Mapping[int, Mapping[str, int]]) -> Agent | None:
    return next((a for a in agents if a.user_id == need.previous_agent_id), None)


def _least_loaded(
    need: Need, agents: Sequence[Agent], loads: Mapping[int, Mapping[str, int]]
) -> Agent | None:
    kind = need.channel_kind
    return min(
        agents, key=lambda a: (_load_ratio(a, loads, kind), a.last_assigned_at, a.user_id), default=None
    )


def _round_robin(need: Need, agents: Sequence[Agent], loads: Mapping[int, Mapping[str, int]]) -> Agent | None:
    # The agent served longest ago is next: a pointer that survives restarts and new agents.
    return min(agents, key=lambda a: (a.last_assigned_at, a.user_id), default=None)


def _skill(need: Need, agents: Sequence[Agent], loads: Mapping[int, Mapping[str, int]]) -> Agent | None:
    if not need.required_skills and need.language is None:
        return None  # nothing to match on: leave it to the next strategy
    kind = need.channel_kind

    def fit(a: Agent) -> tuple[int, float, float, int]:
        level = sum(a.skills.get(skill, 0) for skill in need.required_skills)
        return (-level, _load_ratio(a, loads, kind), a.last_assigned_at, a.user_id)

    return min(agents, key=fit, default=None)


def _territory(need: Need, agents: Sequence[Agent], loads: Mapping[int, Mapping[str, int]]) -> Agent | None:
    if need.territory is None:
        return None
    local = [a for a in agents if need.territory in a.territories]
    return _least_loaded(need, local, loads)


RANKERS: Mapping[str, Ranker] = {
    "sticky": _sticky,
    "skill": _skill,
    "territory": _territory,
    "round_robin": _round_robin,
    "least_loaded": _least_loaded,
}


def match(
    need: Need, agents: Iterable[Agent], loads: Mapping[int, Mapping[str, int]], now: float
) -> Choice | None:
    """The agent who should take `need` now, and the strategy that chose them; None: it waits."""
    if not need.automatic:
        return None
    candidates = [a for a in agents if eligible(need, a, loads, now)]
    if not candidates:
        return None
    for strategy in (*need.strategies, "least_loaded"):
        ranker = RANKERS.get(strategy)
        chosen = ranker(need, candidates, loads) if ranker is not None else None
        if chosen is not None:
            return Choice(need.conversation_id, chosen.user_id, strategy)
    raise AssertionError("least_loaded always chooses among candidates")  # pragma: no cover


def plan(waiting: Iterable[Need], agents: Sequence[Agent], loads: Loads, now: float) -> list[Choice]:
    """Serve the queue in order while anyone has capacity; `loads` is updated with each choice.

    The result assigns every conversation someone eligible can take, earlier ones first; a
    conversation nobody eligible can take is passed over without holding up the ones behind it.
    """
    choices: list[Choice] = []
    # Only agents with room for some kind can take anything; the pool shrinks as they fill up.
    free = {
        a.user_id: a
        for a in agents
        if a.available and any(free_capacity(a, loads, kind) > 0 for kind in a.capacity)
    }
    for need in sorted(waiting, key=lambda n: n.order):
        if not free:
            break
        choice = match(need, free.values(), loads, now)
        if choice is None:
            continue
        choices.append(choice)
        agent_loads = loads.setdefault(choice.user_id, {})
        agent_loads[need.channel_kind] = agent_loads.get(need.channel_kind, 0) + 1
        agent = free[choice.user_id]
        if any(free_capacity(agent, loads, kind) > 0 for kind in agent.capacity):
            # Round robin and ties read the last-assignment times of this very plan.
            free[choice.user_id] = _with_last(agent, max(now, agent.last_assigned_at) + 1e-6 * len(choices))
        else:
            del free[choice.user_id]
    return choices


def _with_last(agent: Agent, last_assigned_at: float) -> Agent:
    if agent.last_assigned_at == last_assigned_at:
        return agent
    return Agent(
        agent.user_id,
        agent.available,
        agent.capacity,
        agent.teams,
        agent.skills,
        agent.languages,
        agent.territories,
        last_assigned_at,
    )
