"""The routing decision and queue model hold their invariants under any sequence of events (hypothesis).

A state machine adds agents and conversations, changes presence and capacity, resolves
conversations, and after every step lets `plan` serve the queue. After each step: no agent is
above capacity, no conversation is held by two agents, no conversation waits while an agent who
could take it has room, and within a priority the queue is served first come, first served.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from routing.match import CHANNEL_KINDS, Agent, Choice, Need, eligible, match, plan, plan_simple, within_hours

SKILLS = ("billing", "tech")
LANGUAGES = ("en", "es")
TEAMS = (1, 2)

capacities = st.fixed_dictionaries({kind: st.integers(0, 3) for kind in CHANNEL_KINDS})
agents = st.builds(
    lambda capacity, teams, skills, languages, available: (capacity, teams, skills, languages, available),
    capacities,
    st.frozensets(st.sampled_from(TEAMS)),
    st.dictionaries(st.sampled_from(SKILLS), st.integers(1, 3)),
    st.frozensets(st.sampled_from(LANGUAGES)),
    st.booleans(),
)
needs = st.fixed_dictionaries(
    {
        "channel_kind": st.sampled_from(CHANNEL_KINDS),
        "priority": st.integers(0, 2),
        "team_id": st.none() | st.sampled_from(TEAMS),
        "required_skills": st.dictionaries(st.sampled_from(SKILLS), st.integers(1, 3), max_size=1),
        "language": st.none() | st.sampled_from(LANGUAGES),
        "strategies": st.sampled_from(
            [("sticky", "skill", "least_loaded"), ("round_robin",), ("territory", "least_loaded"), ("skill",)]
        ),
        "sticky": st.booleans(),
    }
)


def _requirements_met(need: Need, agent: Agent, now: float) -> bool:
    """`eligible` without the capacity and presence conditions."""
    roomy = replace(agent, available=True, capacity={need.channel_kind: 1})
    return eligible(need, roomy, {}, now)


class Routing(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.agents: dict[int, Agent] = {}
        self.waiting: dict[int, Need] = {}
        self.assigned: dict[int, tuple[Need, int]] = {}  # conversation → (need, agent)
        self.clock = 1000.0
        self.next_id = 1
        self.last_plan: list[Choice] = []
        self.waiting_before: dict[int, Need] = {}

    def loads(self) -> dict[int, dict[str, int]]:
        loads: dict[int, dict[str, int]] = {}
        for need, user_id in self.assigned.values():
            per_agent = loads.setdefault(user_id, {})
            per_agent[need.channel_kind] = per_agent.get(need.channel_kind, 0) + 1
        return loads

    def serve(self) -> None:
        self.clock += 1
        self.waiting_before = dict(self.waiting)
        choices = plan(self.waiting.values(), list(self.agents.values()), self.loads(), self.clock)
        assert len({c.conversation_id for c in choices}) == len(choices), "a conversation chosen twice"
        for choice in choices:
            assert choice.conversation_id not in self.assigned, "an assigned conversation chosen again"
            need = self.waiting.pop(choice.conversation_id)
            self.assigned[choice.conversation_id] = (need, choice.user_id)
            self.agents[choice.user_id] = replace(self.agents[choice.user_id], last_assigned_at=self.clock)
        self.last_plan = choices

    @rule(agent=agents)
    def add_agent(
        self, agent: tuple[dict[str, int], frozenset[int], dict[str, int], frozenset[str], bool]
    ) -> None:
        capacity, teams, skills, languages, available = agent
        user_id = len(self.agents) + 1
        self.agents[user_id] = Agent(
            user_id, available, capacity, teams, skills, languages, frozenset({"FR"})
        )
        self.serve()

    @rule(spec=needs)
    def conversation_arrives(self, spec: dict[str, object]) -> None:
        self.clock += 1
        sticky = bool(spec.pop("sticky"))
        previous = next(iter(self.agents), None) if sticky else None
        need = Need(
            conversation_id=self.next_id,
            queued_at=self.clock,
            previous_agent_id=previous,
            territory="FR",
            **spec,  # type: ignore[arg-type]
        )
        self.next_id += 1
        self.waiting[need.conversation_id] = need
        self.serve()

    @precondition(lambda self: bool(self.agents))
    @rule(data=st.data())
    def presence_changes(self, data: st.DataObject) -> None:
        user_id = data.draw(st.sampled_from(sorted(self.agents)))
        self.agents[user_id] = replace(self.agents[user_id], available=not self.agents[user_id].available)
        self.serve()

    @precondition(lambda self: bool(self.agents))
    @rule(data=st.data(), capacity=capacities)
    def capacity_changes(self, data: st.DataObject, capacity: dict[str, int]) -> None:
        user_id = data.draw(st.sampled_from(sorted(self.agents)))
        self.agents[user_id] = replace(self.agents[user_id], capacity=capacity)
        self.serve()

    @precondition(lambda self: bool(self.assigned))
    @rule(data=st.data())
    def conversation_resolved(self, data: st.DataObject) -> None:
        del self.assigned[data.draw(st.sampled_from(sorted(self.assigned)))]
        self.serve()

    @invariant()
    def nobody_above_capacity_from_routing(self) -> None:
        # Lowering capacity may leave an agent above it; routing itself never adds beyond it.
        loads = self.loads()
        for choice in self.last_plan:
            agent = self.agents[choice.user_id]
            kind = self.assigned[choice.conversation_id][0].channel_kind
            assert loads[choice.user_id][kind] <= agent.capacity.get(kind, 0)

    @invariant()
    def no_conversation_held_twice(self) -> None:
        assert not (set(self.waiting) & set(self.assigned))

    @invariant()
    def nobody_eligible_idle_while_a_conversation_waits(self) -> None:
        loads = self.loads()
        for need in self.waiting.values():
            for agent in self.agents.values():
                assert not eligible(need, agent, loads, self.clock), (need, agent)

    @invariant()
    def first_come_first_served_within_a_priority(self) -> None:
        for choice in self.last_plan:
            served = self.assigned[choice.conversation_id][0]
            agent = self.agents[choice.user_id]
            for still in self.waiting.values():
                if (
                    still.conversation_id in self.waiting_before
                    and still.priority >= served.priority
                    and still.order < served.order
                    and still.channel_kind == served.channel_kind
                ):
                    assert not _requirements_met(still, agent, self.clock), (still, served, agent)


TestRouting = Routing.TestCase
TestRouting.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


def test_manual_strategy_never_assigns() -> None:
    need = Need(1, "chat", 0.0, strategies=("manual",))
    assert match(need, [Agent(1, True, {"chat": 5})], {}, 1.0) is None


def test_sticky_prefers_the_previous_agent_even_when_busier() -> None:
    agents = [Agent(1, True, {"chat": 5}), Agent(2, True, {"chat": 5})]
    need = Need(1, "chat", 0.0, previous_agent_id=2)
    choice = match(need, agents, {2: {"chat": 3}}, 1.0)
    assert choice == Choice(1, 2, "sticky")


def test_skill_takes_the_best_level_then_the_lighter_load() -> None:
    agents = [
        Agent(1, True, {"chat": 5}, skills={"tech": 2}),
        Agent(2, True, {"chat": 5}, skills={"tech": 3}),
        Agent(3, True, {"chat": 5}, skills={"tech": 3}),
        Agent(4, True, {"chat": 5}, skills={"tech": 1}),  # below the required level
    ]
    need = Need(1, "chat", 0.0, required_skills={"tech": 2}, strategies=("skill",))
    assert match(need, agents, {2: {"chat": 1}}, 1.0) == Choice(1, 3, "skill")
    assert match(replace(need, required_skills={"tech": 4}), agents, {}, 1.0) is None


def test_overflow_team_joins_after_the_wait() -> None:
    agents = [Agent(1, True, {"chat": 1}, teams=frozenset({2}))]
    need = Need(1, "chat", 100.0, team_id=1, overflow_team_id=2, overflow_after=60.0)
    assert match(need, agents, {}, 159.0) is None
    assert match(need, agents, {}, 160.0) == Choice(1, 1, "least_loaded")


def test_territory_prefers_a_local_agent() -> None:
    agents = [Agent(1, True, {"chat": 5}), Agent(2, True, {"chat": 5}, territories=frozenset({"DE"}))]
    need = Need(1, "chat", 0.0, territory="DE", strategies=("territory",))
    assert match(need, agents, {2: {"chat": 2}}, 1.0) == Choice(1, 2, "territory")


def test_working_hours_in_the_agents_time_zone_including_night_shifts() -> None:
    # Monday 2026-11-23 22:30 UTC is Tuesday 07:30 in Tokyo and Monday 23:30 in Paris.
    now = datetime(2026, 11, 23, 22, 30, tzinfo=UTC)
    assert within_hours({"tue": [["07:00", "15:00"]]}, "Asia/Tokyo", now)
    assert not within_hours({"mon": [["07:00", "15:00"]]}, "Asia/Tokyo", now)
    assert within_hours({"mon": [["22:00", "06:00"]]}, "Europe/Paris", now)
    assert within_hours({"sun": [["22:00", "06:00"]]}, "UTC", datetime(2026, 11, 23, 5, 0, tzinfo=UTC))
    assert not within_hours({"mon": [["09:00", "09:00"]]}, "UTC", now)
    assert within_hours({}, "UTC", now)


@settings(max_examples=400, deadline=None)
@given(
    agent_specs=st.lists(agents, max_size=12),
    need_specs=st.lists(needs, max_size=30),
    loads_seed=st.lists(st.integers(0, 3), min_size=12, max_size=12),
    last_seed=st.lists(st.sampled_from([0.0, 5.0, 9.0]), min_size=12, max_size=12),
    territories=st.lists(st.sampled_from(["FR", "DE", None]), min_size=30, max_size=30),
)
def test_the_indexed_plan_makes_exactly_the_choices_of_the_simple_one(
    agent_specs: list[tuple[dict[str, int], frozenset[int], dict[str, int], frozenset[str], bool]],
    need_specs: list[dict[str, object]],
    loads_seed: list[int],
    last_seed: list[float],
    territories: list[str | None],
) -> None:
    pool = [
        Agent(
            i + 1,
            available,
            capacity,
            teams,
            skills,
            languages,
            frozenset({"FR"} if i % 2 else {"DE"}),
            last_seed[i],
        )
        for i, (capacity, teams, skills, languages, available) in enumerate(agent_specs)
    ]
    loads = {a.user_id: {"chat": loads_seed[i]} for i, a in enumerate(pool)}
    waiting = []
    for i, spec in enumerate(need_specs):
        spec = dict(spec)
        sticky = spec.pop("sticky")
        if i % 3 == 0:  # most real conversations need nothing but room
            spec.update(team_id=None, required_skills={}, language=None)
        waiting.append(
            Need(
                conversation_id=i + 1,
                queued_at=float(i % 7),
                previous_agent_id=(i % 5) + 1 if sticky else None,
                territory=territories[i],
                **spec,  # type: ignore[arg-type]
            )
        )
    simple_loads = {k: dict(v) for k, v in loads.items()}
    assert plan(waiting, pool, loads, 10.0) == plan_simple(waiting, pool, simple_loads, 10.0)
    assert loads == simple_loads
