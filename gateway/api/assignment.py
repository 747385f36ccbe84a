"""Routing through the API: teams, agent profiles, routing policies, the queue, supervisors' overrides."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, StringConstraints, field_validator
from sqlalchemy import delete, select

from gateway.api.permissions import Permission
from gateway.api.routing import ApiRequest, RouteTable
from gateway.api.schemas import Id, Name, RequestBody, ResponseBody
from gateway.errors import ApiError, NotFound
from inbox.models import Conversation, ConversationStatus, Inbox
from parley.db import utcnow
from parley.models import User
from parley.outbox import emit
from routing import assigner
from routing.match import CHANNEL_KINDS, STRATEGIES, WEEKDAYS
from routing.models import AgentProfile, ConversationRouting, RoutingPolicy, Team, TeamMember
from routing.presence import ANSWERING_ROLES
from routing.queue import QueueEntry, queue_entry, waiting_list

routes = RouteTable("routing")

Skill = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=60)]
Level = Annotated[int, Field(ge=1, le=10)]
Language = Annotated[
    str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=2, max_length=20)
]
Territory = Annotated[
    str, StringConstraints(strip_whitespace=True, to_upper=True, min_length=2, max_length=20)
]
Strategy = Annotated[str, Field(json_schema_extra={"enum": list(STRATEGIES)})]
Clock = Annotated[str, StringConstraints(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]


def _strategies(value: list[str]) -> list[str]:
    unknown = [s for s in value if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
    if len(set(value)) != len(value):
        raise ValueError("a strategy appears twice")
    return value


# --- bodies ---------------------------------------------------------------------------------------


class TeamCreate(RequestBody):
    name: Name


class TeamOut(ResponseBody):
    id: int
    name: str
    member_ids: list[int]
    created_at: datetime


class TeamList(ResponseBody):
    data: list[TeamOut]


class AgentProfileIn(RequestBody):
    skills: dict[Skill, Level] = Field(default_factory=dict, description="Skill name → level (1-10).")
    languages: list[Language] = Field(default_factory=list, max_length=20)
    territories: list[Territory] = Field(
        default_factory=list, max_length=50, description="Country codes or region names the agent serves."
    )
    capacity: dict[str, Annotated[int, Field(ge=0, le=1000)]] = Field(
        default_factory=lambda: {"chat": 5, "email": 10, "voice": 1},
        description="Most conversations held at once per channel kind: `chat`, `email`, `voice`.",
    )
    time_zone: str = "UTC"
    working_hours: dict[str, list[tuple[Clock, Clock]]] = Field(
        default_factory=dict,
        description='Weekday (`mon`…`sun`) → [["09:00", "17:30"], …] in `time_zone`; empty: any time.',
    )

    @field_validator("capacity")
    @classmethod
    def _kinds(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(CHANNEL_KINDS))
        if unknown:
            raise ValueError(f"unknown channel kinds {unknown}; use {list(CHANNEL_KINDS)}")
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Paris)") from None
        return value

    @field_validator("working_hours")
    @classmethod
    def _days(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(WEEKDAYS))
        if unknown:
            raise ValueError(f"unknown weekdays {unknown}; use {list(WEEKDAYS)}")
        return value


class AgentProfileOut(AgentProfileIn):
    user_id: int
    presence: str
    team_ids: list[int]
    last_assigned_at: datetime | None


class RoutingPolicyIn(RequestBody):
    serving_team_id: Id | None = Field(None, description="The team that serves this inbox; null: everyone.")
    strategies: list[Strategy] = Field(
        default_factory=list,
        max_length=len(STRATEGIES),
        description="The strategy chain, tried in order; every automatic chain ends in `least_loaded`. "
        "Empty: the team's chain, else sticky → skill → least_loaded. `manual`: nobody is assigned "
        "automatically.",
    )
    required_skills: dict[Skill, Level] = Field(default_factory=dict)
    language: Language | None = None
    priority: int = Field(0, ge=-100, le=100, description="Higher is served first.")
    overflow_team_id: Id | None = None
    overflow_after_seconds: int | None = Field(None, ge=0, le=7 * 24 * 3600)

    _check_strategies = field_validator("strategies")(_strategies)


class RoutingPolicyOut(RoutingPolicyIn):
    inbox_id: int | None
    team_id: int | None


class ConversationNeeds(RequestBody):
    """What a conversation needs, as triage, a bot's intent or a rule decided."""

    required_skills: dict[Skill, Level] | None = None
    language: Language | None = None
    priority: int | None = Field(None, ge=-100, le=100)
    team_id: Id | None = None


class AssignmentCreate(RequestBody):
    assignee_id: Id | None = Field(
        description="The agent to give it to, whatever the strategy; null: back to the queue."
    )


class QueueEntryOut(ResponseBody):
    conversation_id: int
    state: str = Field(description="`waiting`, `manual`, `assigned` or `closed`.")
    priority: int
    team_id: int | None
    queued_at: datetime | None
    position: int | None = Field(description="1 is served next; null when not waiting.")
    waiting: int = Field(description="How many conversations wait in the same queue.")
    estimated_wait_seconds: float | None = Field(
        description="Position over the queue's recent serving rate; null without recent data."
    )


class QueueQuery(RequestBody):
    team_id: Id | None = None
    limit: int = Field(100, ge=1, le=1000)


class QueueList(ResponseBody):
    data: list[QueueEntryOut]
    total: int


# --- helpers --------------------------------------------------------------------------------------


def _entry(entry: QueueEntry) -> QueueEntryOut:
    return QueueEntryOut(
        conversation_id=entry.conversation_id,
        state=entry.state,
        priority=entry.priority,
        team_id=entry.team_id,
        queued_at=entry.queued_at,
        position=entry.position,
        waiting=entry.waiting,
        estimated_wait_seconds=entry.estimated_wait_seconds,
    )


async def _team(call: ApiRequest, team_id: int) -> Team:
    team = (
        await call.session.execute(select(Team).where(Team.id == team_id, Team.tenant_id == call.tenant_id))
    ).scalar_one_or_none()
    if team is None:
        raise NotFound("team")
    return team


async def _agent(call: ApiRequest, user_id: int) -> User:
    user = (
        await call.session.execute(select(User).where(User.id == user_id, User.tenant_id == call.tenant_id))
    ).scalar_one_or_none()
    if user is None:
        raise NotFound("user")
    return user


async def _team_out(call: ApiRequest, team: Team) -> TeamOut:
    members = (
        await call.session.scalars(
            select(TeamMember.user_id).where(TeamMember.team_id == team.id).order_by(TeamMember.user_id)
        )
    ).all()
    return TeamOut(id=team.id, name=team.name, member_ids=list(members), created_at=team.created_at)


async def _check_teams(call: ApiRequest, *team_ids: int | None) -> None:
    for team_id in team_ids:
        if team_id is not None:
            found = (
                await call.session.execute(
                    select(Team.id).where(Team.id == team_id, Team.tenant_id == call.tenant_id)
                )
            ).scalar_one_or_none()
            if found is None:
                raise ApiError(422, "invalid_team", f"no team {team_id} in this tenant.")


async def _routing_changed(call: ApiRequest, user_id: int | None = None) -> None:
    """Something that may let an agent take more was changed: the queue is served again."""
    await emit(call.session, call.tenant_id, (assigner.PROFILE_CHANGED_TOPIC, {"user_id": user_id}))
    call.notify_after_commit()


# --- teams ----------------------------------------------------------------------------------------


@routes.get("/teams", allow=Permission.READ_CONVERSATIONS)
async def list_teams(call: ApiRequest) -> TeamList:
    """List teams with their members."""
    teams = (
        await call.session.scalars(select(Team).where(Team.tenant_id == call.tenant_id).order_by(Team.id))
    ).all()
    return TeamList(data=[await _team_out(call, team) for team in teams])


@routes.post("/teams", allow=Permission.MANAGE_ROUTING, errors=[409])
async def create_team(call: ApiRequest, *, body: TeamCreate) -> TeamOut:
    """Create a team (names are unique in a tenant: 409 otherwise)."""
    team = Team(tenant_id=call.tenant_id, name=body.name)
    call.session.add(team)
    await call.session.flush()
    return await _team_out(call, team)


@routes.delete("/teams/{team_id}", allow=Permission.MANAGE_ROUTING)
async def delete_team(call: ApiRequest, *, team_id: int) -> None:
    """Delete a team; inboxes it served are then served by everyone."""
    await call.session.delete(await _team(call, team_id))
    await _routing_changed(call)


@routes.put("/teams/{team_id}/members/{user_id}", allow=Permission.MANAGE_ROUTING)
async def add_team_member(call: ApiRequest, *, team_id: int, user_id: int) -> TeamOut:
    """Add a user to a team (no change if already a member)."""
    team = await _team(call, team_id)
    await _agent(call, user_id)
    exists = await call.session.get(TeamMember, (team_id, user_id))
    if exists is None:
        call.session.add(TeamMember(team_id=team_id, user_id=user_id, tenant_id=call.tenant_id))
        await call.session.flush()
        await _routing_changed(call, user_id)
    return await _team_out(call, team)


@routes.delete("/teams/{team_id}/members/{user_id}", allow=Permission.MANAGE_ROUTING)
async def remove_team_member(call: ApiRequest, *, team_id: int, user_id: int) -> None:
    """Remove a user from a team."""
    await _team(call, team_id)
    await call.session.execute(
        delete(TeamMember).where(TeamMember.team_id == team_id, TeamMember.user_id == user_id)
    )


# --- agent profiles -------------------------------------------------------------------------------


async def _profile_out(call: ApiRequest, user: User) -> AgentProfileOut:
    profile = await call.session.get(AgentProfile, user.id)
    teams = (
        await call.session.scalars(
            select(TeamMember.team_id).where(TeamMember.user_id == user.id).order_by(TeamMember.team_id)
        )
    ).all()
    fields: dict[str, Any] = {}
    if profile is not None:
        fields = {
            "skills": profile.skills,
            "languages": profile.languages,
            "territories": profile.territories,
            "capacity": profile.capacity,
            "time_zone": profile.time_zone,
            "working_hours": profile.working_hours,
        }
    return AgentProfileOut(
        user_id=user.id,
        presence=user.presence,
        team_ids=list(teams),
        last_assigned_at=profile.last_assigned_at if profile is not None else None,
        **fields,
    )


@routes.get("/agents/{user_id}/profile", allow=Permission.READ_CONVERSATIONS)
async def get_agent_profile(call: ApiRequest, *, user_id: int) -> AgentProfileOut:
    """Get what an agent can take: skills, languages, territories, capacity, working hours."""
    return await _profile_out(call, await _agent(call, user_id))


@routes.put("/agents/{user_id}/profile", allow=Permission.MANAGE_ROUTING)
async def put_agent_profile(call: ApiRequest, *, user_id: int, body: AgentProfileIn) -> AgentProfileOut:
    """Set an agent's routing profile; raised capacity or a new skill serves the queue at once."""
    user = await _agent(call, user_id)
    if user.role not in ANSWERING_ROLES:
        raise ApiError(422, "not_an_agent", f"A {user.role} does not answer conversations.")
    values = body.model_dump()
    values["working_hours"] = {
        day: [list(pair) for pair in pairs] for day, pairs in body.working_hours.items()
    }
    profile = await call.session.get(AgentProfile, user_id)
    if profile is None:
        call.session.add(AgentProfile(user_id=user_id, tenant_id=call.tenant_id, **values))
    else:
        for key, value in values.items():
            setattr(profile, key, value)
        profile.updated_at = utcnow()
    await call.session.flush()
    await _routing_changed(call, user_id)
    return await _profile_out(call, user)


# --- routing policies -----------------------------------------------------------------------------


def _policy_out(
    policy: RoutingPolicy | None, *, inbox_id: int | None, team_id: int | None
) -> RoutingPolicyOut:
    if policy is None:
        return RoutingPolicyOut(inbox_id=inbox_id, team_id=team_id)
    return RoutingPolicyOut(
        inbox_id=policy.inbox_id,
        team_id=policy.team_id,
        serving_team_id=policy.serving_team_id,
        strategies=policy.strategies,
        required_skills=policy.required_skills,
        language=policy.language,
        priority=policy.priority,
        overflow_team_id=policy.overflow_team_id,
        overflow_after_seconds=policy.overflow_after_seconds,
    )


async def _put_policy(
    call: ApiRequest, body: RoutingPolicyIn, *, inbox_id: int | None, team_id: int | None
) -> RoutingPolicyOut:
    await _check_teams(call, body.serving_team_id, body.overflow_team_id)
    where = RoutingPolicy.inbox_id == inbox_id if inbox_id is not None else RoutingPolicy.team_id == team_id
    policy = (await call.session.execute(select(RoutingPolicy).where(where))).scalar_one_or_none()
    if policy is None:
        policy = RoutingPolicy(tenant_id=call.tenant_id, inbox_id=inbox_id, team_id=team_id)
        call.session.add(policy)
    for key, value in body.model_dump().items():
        setattr(policy, key, value)
    policy.updated_at = utcnow()
    await call.session.flush()
    return _policy_out(policy, inbox_id=inbox_id, team_id=team_id)


async def _inbox(call: ApiRequest, inbox_id: int) -> None:
    found = (
        await call.session.execute(
            select(Inbox.id).where(Inbox.id == inbox_id, Inbox.tenant_id == call.tenant_id)
        )
    ).scalar_one_or_none()
    if found is None:
        raise NotFound("inbox")


@routes.get("/inboxes/{inbox_id}/routing", allow=Permission.READ_INBOXES)
async def get_inbox_routing(call: ApiRequest, *, inbox_id: int) -> RoutingPolicyOut:
    """Get how the inbox's conversations find an agent."""
    await _inbox(call, inbox_id)
    policy = (
        await call.session.execute(select(RoutingPolicy).where(RoutingPolicy.inbox_id == inbox_id))
    ).scalar_one_or_none()
    return _policy_out(policy, inbox_id=inbox_id, team_id=None)


@routes.put("/inboxes/{inbox_id}/routing", allow=Permission.MANAGE_ROUTING, errors=[422])
async def put_inbox_routing(call: ApiRequest, *, inbox_id: int, body: RoutingPolicyIn) -> RoutingPolicyOut:
    """Set the inbox's routing: serving team, strategy chain, required skills, priority, overflow.

    Applies to conversations queued from now on.
    """
    await _inbox(call, inbox_id)
    return await _put_policy(call, body, inbox_id=inbox_id, team_id=None)


@routes.get("/teams/{team_id}/routing", allow=Permission.READ_CONVERSATIONS)
async def get_team_routing(call: ApiRequest, *, team_id: int) -> RoutingPolicyOut:
    """Get the team's routing defaults (used where an inbox it serves leaves a field empty)."""
    await _team(call, team_id)
    policy = (
        await call.session.execute(select(RoutingPolicy).where(RoutingPolicy.team_id == team_id))
    ).scalar_one_or_none()
    return _policy_out(policy, inbox_id=None, team_id=team_id)


@routes.put("/teams/{team_id}/routing", allow=Permission.MANAGE_ROUTING, errors=[422])
async def put_team_routing(call: ApiRequest, *, team_id: int, body: RoutingPolicyIn) -> RoutingPolicyOut:
    """Set the team's routing defaults: strategy chain, required skills, language, overflow."""
    await _team(call, team_id)
    return await _put_policy(call, body, inbox_id=None, team_id=team_id)


# --- conversations: needs, override, queue --------------------------------------------------------


async def _conversation(call: ApiRequest, conversation_id: int) -> Conversation:
    conversation = (
        await call.session.execute(
            select(Conversation).where(
                Conversation.id == conversation_id, Conversation.tenant_id == call.tenant_id
            )
        )
    ).scalar_one_or_none()
    if conversation is None:
        raise NotFound("conversation")
    return conversation


@routes.put("/conversations/{conversation_id}/routing", allow=Permission.UPDATE_CONVERSATIONS, errors=[422])
async def put_conversation_needs(
    call: ApiRequest, *, conversation_id: int, body: ConversationNeeds
) -> QueueEntryOut:
    """Set what a conversation needs (skills, language, priority, team), as triage or a bot decided.

    A waiting conversation is re-served at once with its new needs; fields left out keep their value.
    """
    await assigner.lock_tenant(call.session, call.tenant_id)
    conversation = await _conversation(call, conversation_id)
    await _check_teams(call, body.team_id)
    row = await call.session.get(ConversationRouting, conversation_id)
    if row is None:
        await assigner.enqueue(call.session, call.tenant_id, conversation_id, conversation.created_at)
        row = await call.session.get(ConversationRouting, conversation_id)
    if row is None:  # resolved or assigned: nothing is queued, but the needs are kept for later
        raise ApiError(
            422, "not_routable", "The conversation is resolved or assigned; reopen or unassign it first."
        )
    for key, value in body.model_dump(exclude_unset=True).items():
        setattr(row, key, value)
    await call.session.flush()
    await assigner.serve_queue(call.session, call.tenant_id)
    call.notify_after_commit()
    entry = await queue_entry(call.session, call.tenant_id, conversation_id)
    assert entry is not None
    return _entry(entry)


@routes.post(
    "/conversations/{conversation_id}/assignment",
    allow=Permission.OVERRIDE_ASSIGNMENT,
    status=200,
    errors=[422],
)
async def override_assignment(
    call: ApiRequest, *, conversation_id: int, body: AssignmentCreate
) -> QueueEntryOut:
    """Assign or reassign a conversation regardless of strategy and capacity (supervisors and admins).

    Null sends it back to the queue. The previous agent's freed capacity serves the queue at once.
    """
    await assigner.lock_tenant(call.session, call.tenant_id)
    conversation = await _conversation(call, conversation_id)
    if conversation.status == ConversationStatus.RESOLVED:
        raise ApiError(422, "conversation_resolved", "Reopen the conversation before assigning it.")
    if body.assignee_id is not None:
        user = (
            await call.session.execute(
                select(User).where(User.id == body.assignee_id, User.tenant_id == call.tenant_id)
            )
        ).scalar_one_or_none()
        if user is None or user.role not in ANSWERING_ROLES:
            raise ApiError(
                422, "invalid_assignee", f"assignee_id: no agent {body.assignee_id} in this tenant."
            )
    if await call.session.get(ConversationRouting, conversation_id) is None:
        # Routing has not seen it yet (its opening event is still on its way): queue it first.
        await assigner.enqueue(call.session, call.tenant_id, conversation_id, conversation.created_at)
    old = conversation.assignee_id
    if old != body.assignee_id:
        conversation.assignee_id = body.assignee_id
        await call.session.flush()
        if body.assignee_id is None:
            await assigner.enqueue(call.session, call.tenant_id, conversation_id, utcnow())
        else:
            await assigner.assign(
                call.session, call.tenant_id, conversation_id, body.assignee_id, reason="override"
            )
        events: list[tuple[str, dict[str, Any]]] = [
            (
                "conversation.updated",
                {
                    "conversation_id": conversation_id,
                    "inbox_id": conversation.inbox_id,
                    "contact_id": conversation.contact_id,
                    "changes": {"assignee_id": {"old": old, "new": body.assignee_id}},
                    "changed_by": {"type": "user", "id": call.principal.user_id},
                },
            )
        ]
        if body.assignee_id is not None:
            events.append(
                (
                    assigner.ASSIGNED_TOPIC,
                    {
                        "conversation_id": conversation_id,
                        "inbox_id": conversation.inbox_id,
                        "contact_id": conversation.contact_id,
                        "assignee_id": body.assignee_id,
                        "strategy": "override",
                        "waited_seconds": None,
                    },
                )
            )
        await emit(call.session, call.tenant_id, *events)
        await assigner.serve_queue(call.session, call.tenant_id)
        call.notify_after_commit()
    entry = await queue_entry(call.session, call.tenant_id, conversation_id)
    if entry is None:  # assigned before routing ever saw it
        entry = QueueEntry(conversation_id, "assigned", 0, None, None, None, 0, None)
    return _entry(entry)


@routes.get("/conversations/{conversation_id}/queue", allow=Permission.READ_CONVERSATIONS)
async def get_queue_position(call: ApiRequest, *, conversation_id: int) -> QueueEntryOut:
    """Where the conversation stands in its queue: position, how many wait, estimated wait."""
    await _conversation(call, conversation_id)
    entry = await queue_entry(call.session, call.tenant_id, conversation_id)
    if entry is None:
        raise NotFound("queue entry")
    return _entry(entry)


@routes.get("/queue", allow=Permission.READ_CONVERSATIONS)
async def list_queue(call: ApiRequest, *, query: QueueQuery) -> QueueList:
    """List waiting conversations in the order they will be served (priority, then time waiting)."""
    if query.team_id is not None:
        await _team(call, query.team_id)
    entries = await waiting_list(call.session, call.tenant_id, team_id=query.team_id, limit=query.limit)
    total = entries[0].waiting if entries else 0
    return QueueList(data=[_entry(e) for e in entries], total=total)
