"""Search across contacts and message text: PostgreSQL full-text search, SQLite FTS5 on the default.

The indexes come from migration 0009: on PostgreSQL GIN indexes over `to_tsvector('parley_search', …)`
(the `simple` configuration behind `unaccent`: no stemming, since customers write in many languages;
for messages a stored generated column, `search_vector`), on SQLite FTS5 external-content tables
(`search_messages`, `search_contacts`) kept in step by triggers.

What comes back is plain text plus offsets: the caller escapes the text and highlights by offset, so
nothing built from customer text is ever markup. Offsets count Unicode code points (`Array.from` in
JavaScript), half-open `[start, end)`.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from parley.db import UTCDateTime

Kind = Literal["contacts", "messages"]
KINDS: frozenset[Kind] = frozenset(("contacts", "messages"))
MAX_LIMIT = 100
SNIPPET_CHARS = 160
_SNIPPET_BEFORE = 50
ELLIPSIS = "…"

# PostgreSQL: the configuration and the expressions of migration 0009's indexes, spelt the same way
# so the planner recognises them.
_CONFIG = "'parley_search'::regconfig"
_MESSAGE_VECTOR = "m.search_vector"  # generated: to_tsvector('parley_search', body)
_CONTACT_VECTOR = (
    f"to_tsvector({_CONFIG}, "
    "coalesce(c.name, '') || ' ' || coalesce(c.email, '') || ' ' || coalesce(c.phone, ''))"
)

_WORD = re.compile(r"\w+")
# A search-box token: an optionally negated quoted phrase (the closing quote may be missing), or a bare word.
_TOKEN = re.compile(r'(-?)"([^"]*)"?|(\S+)')
_PHONE_LIKE = re.compile(r"[\d\s()+\-./]+")


class EmptyQuery(ValueError):
    """The query has no word to search for (empty, blank, or punctuation only)."""


@dataclass(frozen=True, slots=True)
class Clause:
    """Words that must (or, negated, must not) occur, together as a phrase when there are several."""

    words: tuple[str, ...]
    negated: bool = False
    prefix: bool = False  # the last word also matches as the start of a longer word


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    """The search box's text as alternatives (split by `or`), each a list of clauses."""

    text: str
    groups: tuple[tuple[Clause, ...], ...]

    @property
    def positive(self) -> list[Clause]:
        return [c for group in self.groups for c in group if not c.negated]

    @property
    def prefix_word(self) -> str | None:
        last = self.groups[-1][-1] if self.groups and self.groups[-1] else None
        return last.words[-1] if last is not None and last.prefix else None


def whole_words(parsed: ParsedQuery) -> ParsedQuery:
    """`parsed` with its last word matching whole words only."""
    if parsed.prefix_word is None:
        return parsed
    last = parsed.groups[-1][-1]
    groups = (*parsed.groups[:-1], (*parsed.groups[-1][:-1], Clause(last.words, negated=last.negated)))
    return ParsedQuery(parsed.text, groups)


def parse_query(query: str) -> ParsedQuery:
    """Read the search box like web search engines do: `"a phrase"`, `-without`, `this or that`.

    The last bare word is a prefix ("invo" finds "invoice"), unless the query has an `or`.
    Raises `EmptyQuery` if no word is left to look for.
    """
    groups: list[list[Clause]] = [[]]
    for match in _TOKEN.finditer(query):
        negated_quote, phrase, bare = match.groups()
        if bare is not None:
            if bare.lower() == "or":
                if groups[-1]:
                    groups.append([])
                continue
            negated = bare.startswith("-") and len(bare) > 1
            words = tuple(_WORD.findall(bare))
        else:
            negated = negated_quote == "-"
            words = tuple(_WORD.findall(phrase))
        if words:
            groups[-1].append(Clause(words, negated=negated))
    # An alternative with nothing to look for would match everything: drop it.
    kept = [group for group in groups if any(not c.negated for c in group)]
    if not kept:
        raise EmptyQuery(query)
    # The prefix clause must be the query's last token, so that PostgreSQL can search the rest as is.
    final = _TOKEN.findall(query)[-1][2]
    last = kept[-1][-1]
    if len(groups) == 1 and final and not last.negated and final.lower() != "or" and _WORD.search(final):
        kept[-1][-1] = Clause(last.words, prefix=True)
    return ParsedQuery(query, tuple(tuple(group) for group in kept))


# --- query texts for each backend ---------------------------------------------------------------


def fts5_query(parsed: ParsedQuery) -> str:
    """The FTS5 MATCH expression: every word quoted, so nothing typed is read as FTS5 syntax."""

    def phrase(clause: Clause) -> str:
        quoted = '"' + " ".join(w.replace('"', '""') for w in clause.words) + '"'
        return quoted + "*" if clause.prefix else quoted

    alternatives = []
    for group in parsed.groups:
        expr = "(" + " AND ".join(phrase(c) for c in group if not c.negated) + ")"
        for clause in group:
            if clause.negated:
                expr += " NOT " + phrase(clause)
        alternatives.append(expr)
    return " OR ".join(alternatives)


def _tsquery_lexeme(word: str) -> str:
    return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'"


def tsquery_parts(parsed: ParsedQuery) -> tuple[str, str | None]:
    """PostgreSQL: the text for `websearch_to_tsquery`, and the `to_tsquery` text of the prefix clause."""
    if parsed.prefix_word is None:
        return parsed.text, None
    # The prefix clause is the query's last token: cut it off and search it as a prefix instead.
    tokens = list(_TOKEN.finditer(parsed.text))
    head = parsed.text[: tokens[-1].start()]
    clause = parsed.groups[-1][-1]
    words = [_tsquery_lexeme(w) for w in clause.words]
    return head, " <-> ".join(words) + ":*"


# --- matching in Python, for snippets and "what matched" ------------------------------------------


def _fold(value: str) -> tuple[str, list[int]]:
    """`value` folded (case, accents) like the indexes fold it, and each folded character's source index."""
    if value.isascii():  # the common case, and one character stays one
        return value.lower(), list(range(len(value)))
    folded: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(value):
        base = ch if ch.isascii() else _strip_accents(ch)
        for out in base.casefold():
            folded.append(out)
            origin.append(i)
    return "".join(folded), origin


@functools.lru_cache(maxsize=4096)
def _strip_accents(ch: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))


@functools.lru_cache(maxsize=256)
def _term_pattern(parsed: ParsedQuery) -> re.Pattern[str] | None:
    terms: list[str] = []
    for clause in parsed.positive:
        for i, word in enumerate(clause.words):
            folded = re.escape(_fold(word)[0])
            prefix = clause.prefix and i == len(clause.words) - 1
            terms.append(folded + (r"\w*" if prefix else r"(?!\w)"))
    if not terms:
        return None
    # Longest first, so "invoice" wins over "in" where both start at the same place.
    terms.sort(key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(terms) + ")")


def find_matches(value: str, parsed: ParsedQuery) -> list[tuple[int, int]]:
    """Where the query's words occur in `value`, as `[start, end)` offsets into `value`."""
    pattern = _term_pattern(parsed)
    if pattern is None or not value:
        return []
    folded, origin = _fold(value)
    spans = []
    for m in pattern.finditer(folded):
        if m.end() > m.start():
            spans.append((origin[m.start()], origin[m.end() - 1] + 1))
    return spans


def make_snippet(body: str, parsed: ParsedQuery) -> tuple[str, list[tuple[int, int]]]:
    """A plain-text window of `body` around its first match, and the matches' offsets in it."""
    spans = find_matches(body, parsed)
    start = 0
    if spans and len(body) > SNIPPET_CHARS:
        start = max(0, spans[0][0] - _SNIPPET_BEFORE)
        # Begin at a word boundary rather than mid-word.
        space = body.rfind(" ", 0, start + 1)
        if start > 0 and space != -1 and start - space < 15:
            start = space + 1
        start = min(start, max(0, len(body) - SNIPPET_CHARS))
    end = min(len(body), start + SNIPPET_CHARS)
    # Newlines and tabs become spaces, one for one, so offsets stay put.
    window = re.sub(r"\s", " ", body[start:end])
    lead = ELLIPSIS if start > 0 else ""
    tail = ELLIPSIS if end < len(body) else ""
    shift = len(lead) - start
    inside = [(a + shift, min(b, end) + shift) for a, b in spans if a >= start and a < end]
    return lead + window + tail, inside


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContactHit:
    contact_id: int
    name: str | None
    email: str | None
    phone: str | None
    company: str | None
    # What matched: "name", "email", "phone", "company" or "identity" (an address on some channel).
    matched_field: str
    matched_value: str
    highlights: list[tuple[int, int]]  # offsets into matched_value


@dataclass(frozen=True, slots=True)
class MessageHit:
    message_id: int
    conversation_id: int
    contact_id: int
    contact_name: str | None
    inbox_id: int
    inbox_name: str
    direction: str
    created_at: datetime
    snippet: str
    highlights: list[tuple[int, int]]  # offsets into snippet


@dataclass(frozen=True, slots=True)
class SearchResults:
    query: ParsedQuery
    contacts: list[ContactHit] = field(default_factory=list)
    messages: list[MessageHit] = field(default_factory=list)


def _like_pattern(value: str) -> str:
    return "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


# --- messages -----------------------------------------------------------------------------------

_MESSAGE_COLUMNS = """
    m.id AS message_id, m.conversation_id, cv.contact_id, c.name AS contact_name, m.inbox_id,
    i.name AS inbox_name, m.direction, m.created_at, m.body"""
_MESSAGE_JOINS = """
    JOIN conversations cv ON cv.id = m.conversation_id
    JOIN contacts c ON c.id = cv.contact_id
    JOIN inboxes i ON i.id = m.inbox_id"""

POSTGRESQL_MESSAGES = f"""
    SELECT {_MESSAGE_COLUMNS}, ts_rank({_MESSAGE_VECTOR}, q.query) AS rank
    FROM messages m {_MESSAGE_JOINS},
        (SELECT websearch_to_tsquery({_CONFIG}, :head)
                && to_tsquery({_CONFIG}, coalesce(:prefix, '')) AS query) q
    WHERE m.tenant_id = :tenant_id AND {_MESSAGE_VECTOR} @@ q.query
    ORDER BY rank DESC, m.created_at DESC, m.id DESC
    LIMIT :limit"""  # noqa: S608 - built from constants; what users type is bound

# bm25() is lower for better matches.
SQLITE_MESSAGES = f"""
    SELECT {_MESSAGE_COLUMNS}, bm25(search_messages) AS rank
    FROM search_messages JOIN messages m ON m.id = search_messages.rowid {_MESSAGE_JOINS}
    WHERE search_messages MATCH :match AND m.tenant_id = :tenant_id
    ORDER BY rank, m.created_at DESC, m.id DESC
    LIMIT :limit"""  # noqa: S608 - built from constants; what users type is bound


def _params(dialect: str, parsed: ParsedQuery) -> dict[str, Any]:
    if dialect == "postgresql":
        head, prefix = tsquery_parts(parsed)
        return {"head": head, "prefix": prefix}
    return {"match": fts5_query(parsed)}


async def search_messages(
    session: AsyncSession, tenant_id: int, parsed: ParsedQuery, *, limit: int
) -> list[MessageHit]:
    """The tenant's messages matching `parsed`: whole-word matches of the last word first, then
    those where it only starts a word; each best first, then newest."""
    dialect = session.get_bind().dialect.name
    sql = POSTGRESQL_MESSAGES if dialect == "postgresql" else SQLITE_MESSAGES
    stmt = text(sql).columns(created_at=UTCDateTime(timezone=True))

    async def fetch(query: ParsedQuery, count: int) -> Sequence[Any]:
        params = {"tenant_id": tenant_id, "limit": count, **_params(dialect, query)}
        return (await session.execute(stmt, params)).mappings().all()

    # A prefix of a common word ("thanks":*) makes the index read that word's matches in every
    # tenant, 30-60 ms at a million messages; the whole word is found with the tenant's alone. So the
    # whole word first, and the prefix only when that does not fill the page (bench/inbox.py).
    rows = list(await fetch(whole_words(parsed), limit))
    if parsed.prefix_word is not None and len(rows) < limit:
        seen = {row["message_id"] for row in rows}
        more = await fetch(parsed, limit + len(seen))
        rows += [row for row in more if row["message_id"] not in seen][: limit - len(rows)]
    hits = []
    for row in rows:
        snippet, highlights = make_snippet(row["body"] or "", parsed)
        created_at = row["created_at"]
        hits.append(
            MessageHit(
                message_id=row["message_id"],
                conversation_id=row["conversation_id"],
                contact_id=row["contact_id"],
                contact_name=row["contact_name"],
                inbox_id=row["inbox_id"],
                inbox_name=row["inbox_name"],
                direction=row["direction"],
                created_at=created_at,
                snippet=snippet,
                highlights=highlights,
            )
        )
    return hits


# --- contacts -----------------------------------------------------------------------------------


def _contact_branches(dialect: str, like: str | None, digits: str | None) -> list[str]:
    """The ways a contact can match, each a SELECT of (id, score) served by its own index."""
    if dialect == "postgresql":
        branches = [
            f"""SELECT c.id, ts_rank({_CONTACT_VECTOR}, q.query) AS score
                FROM contacts c, (SELECT websearch_to_tsquery({_CONFIG}, :head)
                    && to_tsquery({_CONFIG}, coalesce(:prefix, '')) AS query) q
                WHERE c.tenant_id = :tenant_id AND {_CONTACT_VECTOR} @@ q.query"""  # noqa: S608
        ]
        op = "ILIKE"
    else:
        branches = [
            """SELECT c.id, -bm25(search_contacts) AS score
               FROM search_contacts JOIN contacts c ON c.id = search_contacts.rowid
               WHERE search_contacts MATCH :match AND c.tenant_id = :tenant_id"""
        ]
        op = "LIKE"  # case-insensitive for ASCII in SQLite
    if like is not None:
        # Each needs 3+ characters: shorter patterns give the trigram indexes nothing to look up.
        branches += [
            # op is ours; what users type is bound.
            "SELECT id, 0.0 AS score FROM contacts WHERE tenant_id = :tenant_id "  # noqa: S608
            f"AND email {op} :like ESCAPE '\\'",
            "SELECT contact_id AS id, 0.0 AS score FROM channel_identities "  # noqa: S608
            f"WHERE tenant_id = :tenant_id AND address {op} :like ESCAPE '\\'",
            "SELECT c.id, 0.0 AS score FROM contacts c JOIN companies co ON co.id = c.company_id "  # noqa: S608
            "WHERE co.tenant_id = :tenant_id AND c.tenant_id = :tenant_id "
            f"AND co.name {op} :like ESCAPE '\\'",
        ]
    if digits is not None:
        branches.append(
            "SELECT id, 0.0 AS score FROM contacts WHERE tenant_id = :tenant_id AND phone LIKE :digits"
        )
    return branches


def _contact_sql(dialect: str, like: str | None, digits: str | None) -> str:
    union = "\nUNION ALL\n".join(_contact_branches(dialect, like, digits))
    return f"""
        SELECT c.id, c.name, c.email, c.phone, co.name AS company, h.score
        FROM (SELECT id, max(score) AS score FROM ({union}) AS u GROUP BY id) AS h
        JOIN contacts c ON c.id = h.id
        LEFT JOIN companies co ON co.id = c.company_id
        WHERE c.tenant_id = :tenant_id
        ORDER BY h.score DESC, c.updated_at DESC, c.id DESC
        LIMIT :limit"""  # noqa: S608 - the branches are ours; what users type is bound


def _substring_terms(query: str) -> tuple[str | None, str | None]:
    """The query as a substring of an email, address or company (one token of 3+ characters),
    and as phone digits (3+ digits, nothing but phone punctuation around them)."""
    stripped = query.strip()
    like = stripped if len(stripped) >= 3 and not any(ch.isspace() for ch in stripped) else None
    digits = None
    if _PHONE_LIKE.fullmatch(stripped):
        only = "".join(ch for ch in stripped if ch.isdigit())
        digits = only if len(only) >= 3 else None
    return like, digits


def _what_matched(
    row: Any, parsed: ParsedQuery, like: str | None, digits: str | None, identities: Sequence[str]
) -> tuple[str, str, list[tuple[int, int]]]:
    needle = like.casefold() if like is not None else None

    def substring(value: str) -> list[tuple[int, int]]:
        if needle is None:
            return []
        at = value.casefold().find(needle)
        return [(at, at + len(needle))] if at != -1 else []

    fields = [
        ("name", row["name"]),
        ("company", row["company"]),
        ("email", row["email"]),
        ("phone", row["phone"]),
        *(("identity", address) for address in identities),
    ]
    present = [(name, value) for name, value in fields if value]
    # The whole query as typed beats its words, which beat phone digits.
    for find in (substring, lambda value: find_matches(value, parsed)):
        for name, value in present:
            spans = find(value)
            if spans:
                return name, value, spans
    if digits:
        for name, value in present:
            spans = _digit_spans(value, digits) if name in ("phone", "identity") else []
            if spans:
                return name, value, spans
    return "name", row["name"] or "", []


def _digit_spans(value: str, digits: str) -> list[tuple[int, int]]:
    positions = [i for i, ch in enumerate(value) if ch.isdigit()]
    at = "".join(value[i] for i in positions).find(digits)
    if at == -1:
        return []
    return [(positions[at], positions[at + len(digits) - 1] + 1)]


async def search_contacts(
    session: AsyncSession, tenant_id: int, parsed: ParsedQuery, *, limit: int
) -> list[ContactHit]:
    """The tenant's contacts matching by name, email, phone (digits), company or identity address."""
    dialect = session.get_bind().dialect.name
    like, digits = _substring_terms(parsed.text)
    params: dict[str, Any] = {"tenant_id": tenant_id, "limit": limit, **_params(dialect, parsed)}
    if like is not None:
        params["like"] = _like_pattern(like)
    if digits is not None:
        params["digits"] = _like_pattern(digits)
    rows = (await session.execute(text(_contact_sql(dialect, like, digits)), params)).mappings().all()
    addresses: dict[int, list[str]] = {}
    if rows and (like is not None or digits is not None):
        op = "ILIKE" if dialect == "postgresql" else "LIKE"
        found = await session.execute(
            text(
                "SELECT contact_id, address FROM channel_identities WHERE tenant_id = :tenant_id "  # noqa: S608
                f"AND contact_id IN :ids AND (address {op} :like ESCAPE '\\' OR address LIKE :digits) "
                "ORDER BY id"
            ).bindparams(bindparam("ids", expanding=True)),
            {
                "tenant_id": tenant_id,
                "ids": [row["id"] for row in rows],
                "like": params.get("like", ""),
                "digits": params.get("digits", ""),
            },
        )
        for contact_id, address in found:
            addresses.setdefault(contact_id, []).append(address)
    hits = []
    for row in rows:
        matched_field, matched_value, highlights = _what_matched(
            row, parsed, like, digits, addresses.get(row["id"], [])
        )
        hits.append(
            ContactHit(
                contact_id=row["id"],
                name=row["name"],
                email=row["email"],
                phone=row["phone"],
                company=row["company"],
                matched_field=matched_field,
                matched_value=matched_value,
                highlights=highlights,
            )
        )
    return hits


async def search(
    session: AsyncSession,
    tenant_id: int,
    query: str,
    *,
    kinds: Collection[Kind] = KINDS,
    limit: int = 20,
) -> SearchResults:
    """Search the tenant's contacts and messages for `query`; up to `limit` results of each kind.

    Raises `EmptyQuery` when the query has nothing to search for.
    """
    parsed = parse_query(query)
    limit = max(1, min(limit, MAX_LIMIT))
    unknown = set(kinds) - KINDS
    if unknown:
        raise ValueError(f"unknown kinds: {sorted(unknown)}")
    results = SearchResults(query=parsed)
    if "contacts" in kinds:
        results.contacts.extend(await search_contacts(session, tenant_id, parsed, limit=limit))
    if "messages" in kinds:
        results.messages.extend(await search_messages(session, tenant_id, parsed, limit=limit))
    return results


def highlighted(value: str, spans: Iterable[tuple[int, int]]) -> list[tuple[str, bool]]:
    """`value` cut into (text, is_match) pieces: what a UI escapes and wraps, piece by piece."""
    pieces: list[tuple[str, bool]] = []
    at = 0
    for start, end in sorted(spans):
        if start < at:
            continue
        if start > at:
            pieces.append((value[at:start], False))
        pieces.append((value[start:end], True))
        at = end
    if at < len(value):
        pieces.append((value[at:], False))
    return pieces
