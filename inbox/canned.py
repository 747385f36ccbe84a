"""Canned responses: saved replies an agent inserts with `/short_code`, filled in for the conversation.

The content is a Jinja2 template run in a `SandboxedEnvironment` narrowed further: it may read
`contact`, `agent` and `conversation` fields, test them (`{% if %}`) and pass them through a few
string filters, nothing else: no loops, calls, arithmetic, includes or attributes of Python objects.
A template is checked when saved (`check_template`, errors name the line) and compiled once per
distinct text (compiling costs ~350 µs, rendering a compiled one ~7 µs). The result is the text of
a message, never HTML: values are substituted as they are, unescaped and unexecuted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from jinja2 import TemplateError, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.models import Company, Contact
from inbox.lookup import InvalidInput, NotFoundError, conversation_with_inbox
from inbox.models import CannedResponse
from parley.models import User
from parley.outbox import emit

MAX_CONTENT_LENGTH = 10_000
MAX_RENDERED_LENGTH = 4096  # what a message body may hold (the API's MAX_MESSAGE_LENGTH)
SHORT_CODE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

# What a template may read: variable -> its fields.
FIELDS: Mapping[str, frozenset[str]] = {
    "contact": frozenset({"name", "first_name", "last_name", "email", "phone", "company"}),
    "agent": frozenset({"name", "first_name", "email"}),
    "conversation": frozenset({"id", "inbox_name"}),
}
# String filters whose output is bounded by their input: nothing can blow a template up.
_FILTERS = ("default", "d", "upper", "lower", "title", "capitalize", "trim", "truncate", "string", "length")
_ALLOWED_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Const,
    nodes.Filter,
    nodes.Test,
    nodes.If,
    nodes.CondExpr,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Compare,
    nodes.Operand,
    nodes.Concat,
    nodes.Keyword,
)


class TemplateProblem(InvalidInput):
    """A canned response's template cannot be saved or rendered; `line` is where, when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        where = f"line {line}: " if line is not None else ""
        super().__init__("invalid_template", f"{where}{message}")
        self.line = line


class _Undefined(Undefined):
    """A missing value prints as nothing; a forbidden one (the sandbox said no) fails the render."""

    __slots__ = ()

    def __str__(self) -> str:
        if self._undefined_exception is SecurityError:
            self._fail_with_undefined_error()
        return ""


class _CannedEnvironment(SandboxedEnvironment):
    """The sandbox, reading only the fields of the dictionaries it is given."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        return self._field(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        return self._field(obj, argument)

    def _field(self, obj: Any, name: Any) -> Any:
        if isinstance(obj, dict) and isinstance(name, str) and not name.startswith("_"):
            return obj[name] if name in obj else self.undefined(obj=obj, name=name)
        return self.unsafe_undefined(obj, str(name))


def _environment() -> SandboxedEnvironment:
    env = _CannedEnvironment(undefined=_Undefined, autoescape=False, keep_trailing_newline=True)
    env.filters = {name: env.filters[name] for name in _FILTERS}
    env.globals.clear()  # range, lipsum, cycler…: nothing to call
    return env


_ENV = _environment()


_NODE_NAMES = {
    "For": "a loop ({% for %})",
    "Call": "calling a function",
    "Assign": "{% set %}",
    "AssignBlock": "{% set %}",
    "Macro": "{% macro %}",
    "Include": "{% include %}",
    "Import": "{% import %}",
    "FromImport": "{% import %}",
    "Extends": "{% extends %}",
    "Block": "{% block %}",
    **{op: "arithmetic" for op in ("Add", "Sub", "Mul", "Div", "FloorDiv", "Mod", "Pow", "Neg", "Pos")},
}


_INTERNALS = "`{name}` is not a field a template may read (Python internals are off limits)"


def _refuse(node: nodes.Node, message: str) -> NoReturn:
    raise TemplateProblem(message, getattr(node, "lineno", None))


def _check_node(node: nodes.Node) -> None:
    if not isinstance(node, _ALLOWED_NODES):
        what = _NODE_NAMES.get(type(node).__name__, type(node).__name__.lower())
        _refuse(
            node,
            f"{what} is not allowed in a canned response: use {{{{ field }}}}, filters such as "
            "`| default('there')`, and {% if %}",
        )
    if isinstance(node, nodes.Name) and node.name not in FIELDS:
        _refuse(node, f"unknown variable `{node.name}`; use {', '.join(sorted(FIELDS))}")
    if isinstance(node, nodes.Getattr | nodes.Getitem):
        if isinstance(node, nodes.Getattr):
            name: Any = node.attr
        elif isinstance(node.arg, nodes.Const):
            name = node.arg.value
        else:
            _refuse(node, "fields are named, not computed: write contact.first_name")
        if not isinstance(name, str) or name.startswith("_"):
            _refuse(node, _INTERNALS.format(name=name))
        parent = node.node
        if not isinstance(parent, nodes.Name):
            _refuse(node, f"`{name}`: only the fields of contact, agent and conversation can be read")
        if parent.name in FIELDS and name not in FIELDS[parent.name]:
            fields = ", ".join(sorted(FIELDS[parent.name]))
            _refuse(node, f"{parent.name} has no field `{name}`; it has {fields}")
    for child in node.iter_child_nodes():
        _check_node(child)


def check_template(content: str) -> None:
    """Raise `TemplateProblem` unless `content` is a template a canned response may hold."""
    _compiled(content)


@functools.lru_cache(maxsize=2048)
def _compiled(content: str) -> Any:
    """The checked, compiled template (a problem raises and is not cached)."""
    if len(content) > MAX_CONTENT_LENGTH:
        raise TemplateProblem(f"the content is longer than {MAX_CONTENT_LENGTH} characters")
    try:
        tree = _ENV.parse(content)
        # Reaching for Python's internals is named as such, wherever in the expression it is.
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            name = node.attr if isinstance(node, nodes.Getattr) else getattr(node, "arg", None)
            name = getattr(name, "value", name)
            if isinstance(name, str) and name.startswith("_"):
                _refuse(node, _INTERNALS.format(name=name))
        _check_node(tree)
        return _ENV.from_string(tree)
    except TemplateSyntaxError as e:  # and TemplateAssertionError: an unknown filter or test
        raise TemplateProblem(e.message or "syntax error", e.lineno) from None


def render_template(content: str, variables: Mapping[str, Mapping[str, str]]) -> str:
    """Fill `content` in with `variables`; `TemplateProblem` if it breaks the rules or fails."""
    template = _compiled(content)
    try:
        text: str = template.render(**{name: dict(fields) for name, fields in variables.items()})
    except SecurityError as e:
        raise TemplateProblem(f"the template reached for something it may not read: {e}") from None
    except TemplateError as e:
        raise TemplateProblem(f"the template failed: {e}") from None
    if len(text) > MAX_RENDERED_LENGTH:
        raise TemplateProblem(f"the rendered text is longer than a message may be ({MAX_RENDERED_LENGTH})")
    return text


# --- canned responses ---------------------------------------------------------------------------


CANNED_CHANGED_TOPIC = "canned_response.changed"


def _checked_short_code(short_code: str) -> str:
    code = short_code.strip().lstrip("/").lower()
    if not SHORT_CODE.fullmatch(code):
        raise InvalidInput(
            "invalid_short_code",
            f"short_code {short_code!r}: 1-64 letters, digits, `-` or `_`, starting with a letter or digit.",
        )
    return code


async def _short_code_taken(session: AsyncSession, tenant_id: int, short_code: str, but: int | None) -> None:
    stmt = select(CannedResponse.id).where(
        CannedResponse.tenant_id == tenant_id, CannedResponse.short_code == short_code
    )
    if but is not None:
        stmt = stmt.where(CannedResponse.id != but)
    if (await session.execute(stmt)).first() is not None:
        raise InvalidInput("short_code_taken", f"short_code: /{short_code} is already a canned response.")


async def get_canned(session: AsyncSession, tenant_id: int, canned_id: int) -> CannedResponse:
    """The tenant's canned response, or `NotFoundError`."""
    canned = (
        await session.execute(
            select(CannedResponse).where(
                CannedResponse.id == canned_id, CannedResponse.tenant_id == tenant_id
            )
        )
    ).scalar_one_or_none()
    if canned is None:
        raise NotFoundError("canned response")
    return canned


async def _announce(session: AsyncSession, canned: CannedResponse, change: str) -> None:
    await session.flush()
    await emit(
        session,
        canned.tenant_id,
        (
            CANNED_CHANGED_TOPIC,
            {"canned_response_id": canned.id, "short_code": canned.short_code, "change": change},
        ),
    )


async def create_canned(
    session: AsyncSession, *, tenant_id: int, user_id: int, short_code: str, title: str, content: str
) -> CannedResponse:
    """Save a canned response: its template is checked (`TemplateProblem`), its short code must be free."""
    code = _checked_short_code(short_code)
    check_template(content)
    await _short_code_taken(session, tenant_id, code, None)
    canned = CannedResponse(
        tenant_id=tenant_id, short_code=code, title=title, content=content, created_by=user_id
    )
    session.add(canned)
    await _announce(session, canned, "created")
    return canned


async def update_canned(
    session: AsyncSession,
    *,
    tenant_id: int,
    canned_id: int,
    short_code: str | None = None,
    title: str | None = None,
    content: str | None = None,
) -> CannedResponse:
    """Change a canned response's short code, title or content (checked as on create)."""
    canned = await get_canned(session, tenant_id, canned_id)
    if short_code is not None:
        code = _checked_short_code(short_code)
        if code != canned.short_code:
            await _short_code_taken(session, tenant_id, code, canned.id)
            canned.short_code = code
    if title is not None:
        canned.title = title
    if content is not None:
        check_template(content)
        canned.content = content
    if session.is_modified(canned):
        await _announce(session, canned, "updated")
    return canned


async def delete_canned(session: AsyncSession, *, tenant_id: int, canned_id: int) -> None:
    """Delete a canned response."""
    canned = await get_canned(session, tenant_id, canned_id)
    await session.delete(canned)
    await _announce(session, canned, "deleted")


def _like_prefix(q: str) -> str:
    escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}%"


async def list_canned(
    session: AsyncSession, *, tenant_id: int, q: str | None = None, limit: int = 50, after: str | None = None
) -> tuple[list[CannedResponse], str | None]:
    """Canned responses by short code; `q` matches the start of the short code or of the title.

    Returns a page and the short code to continue after (None on the last page).
    """
    stmt = select(CannedResponse).where(CannedResponse.tenant_id == tenant_id)
    if q:
        prefix = _like_prefix(q.lstrip("/"))
        stmt = stmt.where(
            or_(
                CannedResponse.short_code.like(prefix, escape="\\"),
                func.lower(CannedResponse.title).like(prefix, escape="\\"),
            )
        )
    if after is not None:
        stmt = stmt.where(CannedResponse.short_code > after)
    rows = list((await session.execute(stmt.order_by(CannedResponse.short_code).limit(limit + 1))).scalars())
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], rows[limit - 1].short_code


def _person(name: str | None) -> dict[str, str]:
    parts = (name or "").split()
    fields = {"name": " ".join(parts)}
    if parts:
        fields["first_name"] = parts[0]
    if len(parts) > 1:
        fields["last_name"] = " ".join(parts[1:])
    return fields


def _present(fields: Mapping[str, str | None]) -> dict[str, str]:
    """Only the values that exist: a missing one is undefined, so `| default(...)` applies."""
    return {key: value for key, value in fields.items() if value}


async def template_variables(
    session: AsyncSession, *, tenant_id: int, user_id: int, conversation_id: int
) -> dict[str, dict[str, str]]:
    """What a canned response may say about the conversation's contact, the agent and the conversation."""
    conversation, inbox = await conversation_with_inbox(session, tenant_id, conversation_id)
    contact, company = (
        await session.execute(
            select(Contact, Company.name)
            .outerjoin(Company, Company.id == Contact.company_id)
            .where(Contact.id == conversation.contact_id)
        )
    ).one()
    agent = (
        await session.execute(select(User).where(User.id == user_id, User.tenant_id == tenant_id))
    ).scalar_one_or_none()
    agent_fields = _person(agent.name) if agent is not None else {}
    if agent is not None:
        agent_fields.pop("last_name", None)
        agent_fields["email"] = agent.email
    return {
        "contact": _present(
            {**_person(contact.name), "email": contact.email, "phone": contact.phone, "company": company}
        ),
        "agent": _present(agent_fields),
        "conversation": _present({"id": str(conversation.id), "inbox_name": inbox.name}),
    }


@dataclass(frozen=True, slots=True)
class Rendered:
    canned: CannedResponse
    text: str


async def render_canned(
    session: AsyncSession, *, tenant_id: int, user_id: int, conversation_id: int, canned_id: int
) -> Rendered:
    """The canned response's text for this conversation; `TemplateProblem` if it cannot be rendered."""
    canned = await get_canned(session, tenant_id, canned_id)
    variables = await template_variables(
        session, tenant_id=tenant_id, user_id=user_id, conversation_id=conversation_id
    )
    return Rendered(canned, render_template(canned.content, variables))
