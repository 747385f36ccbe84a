"""Routing tables: teams, agent profiles, routing policies, each conversation's routing state, assignments."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from parley.db import Base, BigId, utcnow


class Team(Base):
    """A group of agents a conversation can be routed to (billing, Spanish speakers, tier 2…)."""

    __tablename__ = "teams"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TeamMember(Base):
    __tablename__ = "team_members"

    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)


class AgentProfile(Base):
    """What an agent can take: skills with levels, languages, territories, capacity per channel kind, hours.

    `working_hours` maps a weekday (`mon`…`sun`) to `[["09:00", "17:30"], …]` in `time_zone`;
    empty means any time. `capacity` maps a channel kind (`chat`, `email`, `voice`) to the most
    conversations of that kind the agent holds at once. `last_assigned_at` orders round robin.
    """

    __tablename__ = "agent_profiles"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    skills: Mapped[dict[str, Any]] = mapped_column(default=dict)
    languages: Mapped[list[Any]] = mapped_column(default=list)
    territories: Mapped[list[Any]] = mapped_column(default=list)
    capacity: Mapped[dict[str, Any]] = mapped_column(default=dict)
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    working_hours: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_assigned_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class RoutingPolicy(Base):
    """How an inbox's (or a team's) conversations find an agent.

    Exactly one of `inbox_id` and `team_id` is set. An inbox policy names the team that serves the
    inbox (None: every agent of the tenant), the strategy chain, the skills and language every
    conversation needs, its default priority, and where the queue overflows after a wait.
    """

    __tablename__ = "routing_policies"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    inbox_id: Mapped[int | None] = mapped_column(ForeignKey("inboxes.id", ondelete="CASCADE"), unique=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), unique=True)
    serving_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    strategies: Mapped[list[Any]] = mapped_column(default=list)
    required_skills: Mapped[dict[str, Any]] = mapped_column(default=dict)
    language: Mapped[str | None] = mapped_column(String(20))
    priority: Mapped[int] = mapped_column(default=0)
    overflow_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    overflow_after_seconds: Mapped[int | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class RoutingState(StrEnum):
    WAITING = "waiting"  # in the queue, assigned automatically as soon as someone eligible is free
    MANUAL = "manual"  # visible in the queue, assigned only by a person (the `manual` strategy)
    ASSIGNED = "assigned"
    CLOSED = "closed"  # resolved: no longer routed


class ConversationRouting(Base):
    """A conversation's routing state: what it needs, where it waits, who has it."""

    __tablename__ = "conversation_routing"
    __table_args__ = (
        # The queue, in the order it is served: priority first, then time waiting.
        Index("ix_conversation_routing_queue", "tenant_id", "state", "priority", "queued_at"),
    )

    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    channel_kind: Mapped[str] = mapped_column(String(10))
    state: Mapped[str] = mapped_column(String(10))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    overflow_team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"))
    overflow_after_seconds: Mapped[int | None]
    strategies: Mapped[list[Any]] = mapped_column(default=list)
    required_skills: Mapped[dict[str, Any]] = mapped_column(default=dict)
    language: Mapped[str | None] = mapped_column(String(20))
    territory: Mapped[str | None] = mapped_column(String(20))
    priority: Mapped[int] = mapped_column(default=0)
    # The contact's last agent, read when the conversation is queued (the `sticky` strategy).
    previous_agent_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    queued_at: Mapped[datetime | None]
    assigned_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Assignment(Base):
    """One assignment of a conversation to an agent: the history sticky routing and reports read."""

    __tablename__ = "assignments"
    __table_args__ = (Index("ix_assignments_contact_id_id", "contact_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # The strategy that chose the agent, or `override` (a supervisor), `manual` (the conversation API).
    reason: Mapped[str] = mapped_column(String(20))
    waited_seconds: Mapped[float | None]
    assigned_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- SLAs -----------------------------------------------------------------------------------------


class BusinessCalendarRecord(Base):
    """When SLA clocks run: weekly hours in a time zone, minus public and custom holidays.

    `hours` maps a weekday (`mon`…`sun`) to `[["09:00", "12:00"], ["13:00", "18:00"]]`;
    `holiday_country`/`holiday_subdivision` name a calendar of the `holidays` package.
    """

    __tablename__ = "business_calendars"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    time_zone: Mapped[str] = mapped_column(String(64), default="UTC")
    hours: Mapped[dict[str, Any]] = mapped_column(default=dict)
    holiday_country: Mapped[str | None] = mapped_column(String(3))
    holiday_subdivision: Mapped[str | None] = mapped_column(String(10))
    custom_holidays: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SlaPolicy(Base):
    """The promises made to conversations of an inbox and/or team and/or priority (null: any).

    Targets are business minutes on `calendar_id` (null: round the clock); a warning fires at
    `warning_fraction` of a target. `escalations` lists the actions run on a warning or a breach.
    The most specific enabled policy that matches a conversation applies (ties: the oldest).
    """

    __tablename__ = "sla_policies"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    enabled: Mapped[bool] = mapped_column(default=True)
    inbox_id: Mapped[int | None] = mapped_column(ForeignKey("inboxes.id", ondelete="CASCADE"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    priority: Mapped[str | None] = mapped_column(String(10))
    first_response_minutes: Mapped[int | None]
    next_response_minutes: Mapped[int | None]
    resolution_minutes: Mapped[int | None]
    warning_fraction: Mapped[float] = mapped_column(default=0.8)
    calendar_id: Mapped[int | None] = mapped_column(ForeignKey("business_calendars.id", ondelete="SET NULL"))
    escalations: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SlaClock(Base):
    """One SLA promise being timed for a conversation: first response, next response or resolution.

    `due_at` and `warn_at` are kept up to date (start plus target plus business time spent paused),
    so the sweep and the inbox's "sort by SLA due" read them through partial indexes on running
    clocks. `paused_total_seconds` is business time.
    """

    __tablename__ = "sla_clocks"
    __table_args__ = (
        # One running clock of a kind per conversation: starting twice (at-least-once events) is a no-op.
        Index(
            "uq_sla_clocks_running_kind",
            "conversation_id",
            "kind",
            unique=True,
            postgresql_where=text("stopped_at IS NULL"),
            sqlite_where=text("stopped_at IS NULL"),
        ),
        # A conversation's next due time (the inbox list's sort), over running clocks only.
        Index(
            "ix_sla_clocks_running_due",
            "conversation_id",
            "due_at",
            postgresql_where=text("stopped_at IS NULL AND paused_at IS NULL"),
            sqlite_where=text("stopped_at IS NULL AND paused_at IS NULL"),
        ),
        # The sweep's two questions: which warnings and which breaches have come due.
        Index(
            "ix_sla_clocks_warn_sweep",
            "warn_at",
            postgresql_where=text("stopped_at IS NULL AND paused_at IS NULL AND warned_at IS NULL"),
            sqlite_where=text("stopped_at IS NULL AND paused_at IS NULL AND warned_at IS NULL"),
        ),
        Index(
            "ix_sla_clocks_breach_sweep",
            "due_at",
            postgresql_where=text("stopped_at IS NULL AND paused_at IS NULL AND breached_at IS NULL"),
            sqlite_where=text("stopped_at IS NULL AND paused_at IS NULL AND breached_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    policy_id: Mapped[int] = mapped_column(ForeignKey("sla_policies.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    target_minutes: Mapped[int]
    started_at: Mapped[datetime]
    paused_at: Mapped[datetime | None]
    paused_total_seconds: Mapped[float] = mapped_column(default=0.0)
    warn_at: Mapped[datetime]
    due_at: Mapped[datetime]
    warned_at: Mapped[datetime | None]
    breached_at: Mapped[datetime | None]
    stopped_at: Mapped[datetime | None]


class SlaEscalationRun(Base):
    """An escalation action performed for a clock at a stage: what makes each action run once."""

    __tablename__ = "sla_escalation_runs"

    clock_id: Mapped[int] = mapped_column(ForeignKey("sla_clocks.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(10), primary_key=True)
    action_index: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    action: Mapped[str] = mapped_column(String(30))
    outcome: Mapped[str] = mapped_column(String(10))  # done, failed (a permanent refusal)
    detail: Mapped[str | None] = mapped_column(Text)
    performed_at: Mapped[datetime] = mapped_column(default=utcnow)


class PriorityScoringConfig(Base):
    """A tenant's priority scoring settings (`routing.priority.ScoringConfig` as JSON); none: the defaults."""

    __tablename__ = "priority_scoring_configs"

    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
