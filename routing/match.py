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

import functools
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time
from zoneinfo import ZoneInfo

CHAT, EMAIL, VOICE = "chat", "email", "voice"
CHANNEL_KINDS = (CHAT, EMAIL, VOICE)

STRATEGIES = ("manual", "sticky", "skill", "territory", "round_robin", "least_loaded")
DEFAULT_CHAIN = ("sticky", "skill", "least_loaded")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@functools.cache
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


def plan_simple(waiting: Iterable[Need], agents: Sequence[Agent], loads: Loads, now: float) -> list[Choice]:
    """The specification of `plan`: `match` for each conversation in queue order, loads updated as it goes.

    Serves every conversation someone eligible can take, earlier ones first; one nobody eligible
    can take is passed over without holding up the ones behind it. Quadratic; `plan` gives the
    same answer faster (a property test holds them equal).
    """
    choices: list[Choice] = []
    # Only agents with room for some kind can take anything; the pool shrinks as they fill up.
    free = {a.user_id: a for a in agents if a.available and _has_room(a, loads)}
    for need in sorted(waiting, key=lambda n: n.order):
        if not free:
            break
        choice = match(need, free.values(), loads, now)
        if choice is None:
            continue
        choices.append(choice)
        _add_load(loads, choice.user_id, need.channel_kind)
        agent = free[choice.user_id]
        if _has_room(agent, loads):
            # Round robin and ties read the last-assignment times of this very plan.
            free[choice.user_id] = _with_last(agent, max(now, agent.last_assigned_at) + 1e-6 * len(choices))
        else:
            del free[choice.user_id]
    return choices


def plan(waiting: Iterable[Need], agents: Sequence[Agent], loads: Loads, now: float) -> list[Choice]:
    """Serve the queue in order while anyone has room; `loads` is updated with each choice.

    The same choices as `plan_simple`, but a conversation with no hard requirement beyond capacity
    (no team, skill or language) is matched through heaps kept per channel kind, in O(log agents)
    instead of a scan of every agent; the others are matched by `match` over the agents with room.
    """
    choices: list[Choice] = []
    pool = _Pool(agents, loads)
    for need in sorted(waiting, key=lambda n: n.order):
        if not pool.free:
            break
        if need.team_id is None and not need.required_skills and need.language is None:
            choice = pool.choose(need) if need.automatic else None
        else:
            choice = match(need, pool.free.values(), loads, now)
        if choice is None:
            continue
        choices.append(choice)
        pool.take(choice.user_id, need.channel_kind, now, len(choices))
    return choices


def _has_room(agent: Agent, loads: Mapping[int, Mapping[str, int]]) -> bool:
    return any(free_capacity(agent, loads, kind) > 0 for kind in agent.capacity)


def _add_load(loads: Loads, user_id: int, kind: str) -> None:
    agent_loads = loads.setdefault(user_id, {})
    agent_loads[kind] = agent_loads.get(kind, 0) + 1


_HeapEntry = tuple[tuple[float, ...], int, int]  # (rank key, user id, version)


class _Pool:
    """The agents with room during one `plan`, indexed for the strategies that need no scan."""

    def __init__(self, agents: Sequence[Agent], loads: Loads) -> None:
        self.loads = loads
        self.free = {a.user_id: a for a in agents if a.available and _has_room(a, loads)}
        self.version = dict.fromkeys(self.free, 0)
        self.heaps: dict[tuple[str, str], list[_HeapEntry]] = {}
        self.by_territory: dict[str, set[int]] = {}
        for agent in self.free.values():
            for territory in agent.territories:
                self.by_territory.setdefault(territory, set()).add(agent.user_id)

    def _key(self, strategy: str, agent: Agent, kind: str) -> tuple[float, ...]:
        if strategy == "round_robin":
            return (agent.last_assigned_at, agent.user_id)
        return (_load_ratio(agent, self.loads, kind), agent.last_assigned_at, agent.user_id)

    def _heap(self, strategy: str, kind: str) -> list[_HeapEntry]:
        heap = self.heaps.get((strategy, kind))
        if heap is None:
            heap = [
                (self._key(strategy, a, kind), a.user_id, self.version[a.user_id])
                for a in self.free.values()
                if free_capacity(a, self.loads, kind) > 0
            ]
            heapq.heapify(heap)
            self.heaps[(strategy, kind)] = heap
        return heap

    def _top(self, strategy: str, kind: str) -> Agent | None:
        heap = self._heap(strategy, kind)
        while heap:
            _, user_id, version = heap[0]
            agent = self.free.get(user_id)
            # Stale entries and agents now full for this kind go for good: loads only grow in a plan.
            if (
                agent is None
                or version != self.version[user_id]
                or free_capacity(agent, self.loads, kind) <= 0
            ):
                heapq.heappop(heap)
                continue
            return agent
        return None

    def choose(self, need: Need) -> Choice | None:
        """`match` for a conversation whose only hard requirement is room for its channel kind."""
        kind = need.channel_kind
        if self._top("least_loaded", kind) is None:
            return None  # nobody eligible: `match` returns None before any strategy
        for strategy in (*need.strategies, "least_loaded"):
            chosen: Agent | None = None
            if strategy == "sticky" and need.previous_agent_id is not None:
                previous = self.free.get(need.previous_agent_id)
                if previous is not None and free_capacity(previous, self.loads, kind) > 0:
                    chosen = previous
            elif strategy == "territory" and need.territory is not None:
                local = [
                    self.free[u]
                    for u in self.by_territory.get(need.territory, ())
                    if u in self.free and free_capacity(self.free[u], self.loads, kind) > 0
                ]
                chosen = _least_loaded(need, local, self.loads)
            elif strategy in ("round_robin", "least_loaded"):
                chosen = self._top(strategy, kind)
            if chosen is not None:
                return Choice(need.conversation_id, chosen.user_id, strategy)
        return None  # pragma: no cover - least_loaded found someone above

    def take(self, user_id: int, kind: str, now: float, made: int) -> None:
        """Record that `user_id` took a conversation of `kind` (the `made`-th choice of the plan)."""
        _add_load(self.loads, user_id, kind)
        agent = self.free[user_id]
        self.version[user_id] += 1
        if not _has_room(agent, self.loads):
            del self.free[user_id]
            return
        agent = _with_last(agent, max(now, agent.last_assigned_at) + 1e-6 * made)
        self.free[user_id] = agent
        for (strategy, heap_kind), heap in self.heaps.items():
            if free_capacity(agent, self.loads, heap_kind) > 0:
                heapq.heappush(heap, (self._key(strategy, agent, heap_kind), user_id, self.version[user_id]))


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
