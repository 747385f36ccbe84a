"""Who may do what through the API: one table from role to permissions, read by every route."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from parley.models import Role


class Permission(StrEnum):
    READ_INBOXES = "inboxes:read"
    MANAGE_INBOXES = "inboxes:manage"
    MANAGE_USERS = "users:manage"  # invite users, change their role, deactivate them
    READ_CONTACTS = "contacts:read"
    WRITE_CONTACTS = "contacts:write"
    READ_CONVERSATIONS = "conversations:read"
    UPDATE_CONVERSATIONS = "conversations:update"
    SEND_MESSAGES = "messages:send"
    MANAGE_ROUTING = "routing:manage"
    OVERRIDE_ASSIGNMENT = "assignments:override"
    MERGE_CONTACTS = "contacts:merge"
    READ_DEALS = "deals:read"
    WRITE_DEALS = "deals:write"
    MANAGE_CRM = "crm:manage"  # custom attribute definitions, pipelines, CRM settings
    MANAGE_SCORING = "scoring:manage"
    MANAGE_CANNED_RESPONSES = "canned_responses:manage"
    MANAGE_LABELS = "labels:manage"  # create, rename, delete; anyone who reads conversations reads them
    READ_TASKS = "tasks:read"
    WRITE_TASKS = "tasks:write"  # create tasks; change, complete and reopen one's own and unassigned ones
    MANAGE_TASKS = "tasks:manage"  # change or delete anyone's tasks
    MANAGE_TASK_RULES = "task_rules:manage"
    READ_TICKETS = "tickets:read"
    WRITE_TICKETS = "tickets:write"
    READ_REPORTS = "reports:read"  # CSAT and other floor reports: supervisors and admins
    MANAGE_WEBHOOKS = "webhooks:manage"  # outbound webhooks carry every event out: admins only
    IMPORT_CONTACTS = "contacts:import"  # CSV import and export: whole contact lists at once
    # Privacy (GDPR): reading the audit log, erasing a contact and setting retention are the admins';
    # a supervisor may also export what is held about a contact (to answer an access request).
    READ_AUDIT_LOG = "audit_log:read"
    EXPORT_CONTACTS = "contacts:export"
    ERASE_CONTACTS = "contacts:erase"
    MANAGE_RETENTION = "retention:manage"


_EVERYTHING = frozenset(Permission)
_ADMIN_ONLY = frozenset(
    {
        Permission.MANAGE_USERS,
        Permission.MANAGE_WEBHOOKS,
        Permission.READ_AUDIT_LOG,
        Permission.ERASE_CONTACTS,
        Permission.MANAGE_RETENTION,
    }
)
_READ_CRM = frozenset({Permission.READ_CONTACTS, Permission.READ_CONVERSATIONS})

GRANTS: Mapping[Role, frozenset[Permission]] = {
    Role.ADMIN: _EVERYTHING,
    # Supervisors run the floor (teams, routing, inboxes) but do not hand out roles.
    Role.SUPERVISOR: _EVERYTHING - _ADMIN_ONLY,
    Role.AGENT: _EVERYTHING
    - _ADMIN_ONLY
    - {
        Permission.EXPORT_CONTACTS,
        Permission.MANAGE_INBOXES,
        Permission.MANAGE_USERS,
        Permission.MANAGE_ROUTING,
        Permission.OVERRIDE_ASSIGNMENT,
        Permission.MANAGE_CRM,
        Permission.MANAGE_SCORING,
        Permission.MANAGE_CANNED_RESPONSES,
        Permission.MANAGE_LABELS,
        Permission.MANAGE_TASKS,
        Permission.MANAGE_TASK_RULES,
        Permission.READ_REPORTS,
        Permission.MANAGE_WEBHOOKS,
        Permission.IMPORT_CONTACTS,
    },
    # Marketers own lead scoring and read the pipeline it feeds.
    Role.MARKETER: _READ_CRM | {Permission.READ_DEALS, Permission.MANAGE_SCORING, Permission.IMPORT_CONTACTS},
    Role.BOT_DESIGNER: _READ_CRM,
}


def allows(role: Role, permission: Permission) -> bool:
    """True if `role` holds `permission`."""
    return permission in GRANTS.get(role, frozenset())


def roles_with(permission: Permission) -> list[Role]:
    """The roles holding `permission`, in the order of `Role` (for the API document)."""
    return [role for role in Role if allows(role, permission)]
