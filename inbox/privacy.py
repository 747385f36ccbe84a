"""GDPR for a contact: export everything held about them, and erase it while keeping the counts.

Both walk the SQLAlchemy metadata for the tables that refer to contacts (and to conversations),
as `crm_core.merge` does, so a table added later (tickets, tasks, timeline…) is exported without
anyone remembering to add it here, and its free text (its `Text` columns) is erased.

Erasure, in one transaction: the contact's name becomes "Erased contact #<id>", its email, phone,
attributes and tags are cleared; each identity's address becomes a random placeholder (unique, and
irreversible: nothing derived from the address is kept); every message of its conversations keeps
its row (direction, status, times: reports still add up) but loses its body, provider leftovers
(email headers and subjects live there), typed content and attachment details; merge audits lose
their snapshot. The search indexes follow the rows (SQLite FTS5 triggers; PostgreSQL's generated
`search_vector`); on SQLite the FTS index is then optimised so that no segment still holds the
old words. Consent decisions stay: an opt-out must outlive the person's data. Attachment files are
deleted from the media store after the commit, by `delete_media` (idempotent).
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from sqlalchemy import ColumnElement, String, Table, Text, cast, delete, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.models import ChannelIdentity, Contact, ContactMerge, ContactTag
from inbox.models import Conversation, Message
from parley.audit import AuditEntry
from parley.db import Base, utcnow
from parley.media import MediaStore

ERASED_TEXT = "[erased]"
# Handled by name below; every other table referring to contacts is discovered from the metadata.
_CONTACT_TABLES_HANDLED = {"conversations"}
_CONVERSATION_TABLES_HANDLED = {"messages"}


class ContactNotFound(LookupError):
    """No such contact in this tenant."""


def erased_name(contact_id: int) -> str:
    return f"Erased contact #{contact_id}"


def jsonable(value: Any) -> Any:
    """A column value as JSON: times in ISO 8601, decimals and enums as their text, bytes in base64."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def _table(name: str) -> Table:
    return Base.metadata.tables[name]


def _row(table: Table, row: Any) -> dict[str, Any]:
    mapping = row._mapping
    return {column.name: jsonable(mapping[column]) for column in table.columns}


def referring_tables(target: str) -> list[tuple[Table, str]]:
    """Every (table, column) with a foreign key to `<target>.id`, in dependency order."""
    found = []
    for table in Base.metadata.sorted_tables:
        for fk in table.foreign_keys:
            if fk.column.table.name == target and fk.column.name == "id" and table.name != target:
                found.append((table, fk.parent.name))
    return found


async def _tenant_contact(session: AsyncSession, tenant_id: int, contact_id: int) -> Contact:
    contact = (
        await session.execute(select(Contact).where(Contact.id == contact_id, Contact.tenant_id == tenant_id))
    ).scalar_one_or_none()
    if contact is None:
        raise ContactNotFound(contact_id)
    return contact


async def _rows(
    session: AsyncSession, table: Table, column: str, ids: list[int], tenant_id: int
) -> list[Any]:
    if not ids:
        return []
    stmt = select(table).where(table.c[column].in_(ids))
    if "tenant_id" in table.c:
        stmt = stmt.where(table.c.tenant_id == tenant_id)
    if "id" in table.c:
        stmt = stmt.order_by(table.c.id)
    return list((await session.execute(stmt)).all())


# --- export ---------------------------------------------------------------------------------------


async def export_contact(
    session: AsyncSession, *, tenant_id: int, contact_id: int, media: MediaStore | None
) -> dict[str, Any]:
    """Everything held about a contact, as JSON-ready data (see the module's docstring)."""
    contact = await _tenant_contact(session, tenant_id, contact_id)
    contacts = _table("contacts")
    contact_row = (await session.execute(select(contacts).where(contacts.c.id == contact.id))).one()
    company = None
    if contact.company_id is not None:
        companies = _table("companies")
        found = (
            await session.execute(
                select(companies).where(
                    companies.c.id == contact.company_id, companies.c.tenant_id == tenant_id
                )
            )
        ).one_or_none()
        company = None if found is None else _row(companies, found)

    records: dict[str, list[dict[str, Any]]] = {}
    for table, column in referring_tables("contacts"):
        if table.name in _CONTACT_TABLES_HANDLED:
            continue
        rows = await _rows(session, table, column, [contact.id], tenant_id)
        records.setdefault(table.name, []).extend(_row(table, r) for r in rows)

    conversations_table = _table("conversations")
    conversation_rows = await _rows(session, conversations_table, "contact_id", [contact.id], tenant_id)
    conversation_ids = [r.id for r in conversation_rows]
    messages_table = _table("messages")
    messages_by_conversation: dict[int, list[dict[str, Any]]] = {}
    for row in await _rows(session, messages_table, "conversation_id", conversation_ids, tenant_id):
        message = _row(messages_table, row)
        message["attachments"] = [_attachment(a, media) for a in message.get("attachments") or []]
        messages_by_conversation.setdefault(row.conversation_id, []).append(message)
    conversations = [
        {**_row(conversations_table, r), "messages": messages_by_conversation.get(r.id, [])}
        for r in conversation_rows
    ]
    conversation_records: dict[str, list[dict[str, Any]]] = {}
    for table, column in referring_tables("conversations"):
        if table.name in _CONVERSATION_TABLES_HANDLED or table.name == "conversations":
            continue
        rows = await _rows(session, table, column, conversation_ids, tenant_id)
        conversation_records.setdefault(table.name, []).extend(_row(table, r) for r in rows)

    history = await session.execute(
        select(AuditEntry)
        .where(
            AuditEntry.tenant_id == tenant_id,
            AuditEntry.object_type == "contact",
            AuditEntry.object_id == contact.id,
        )
        .order_by(AuditEntry.id)
    )
    audit_rows = [
        {
            "at": e.at.isoformat(),
            "action": e.action,
            "actor_type": e.actor_type,
            "actor_id": e.actor_id,
            "details": jsonable(e.details),
        }
        for e in history.scalars()
    ]
    return {
        "format": "parley.contact-export/1",
        "exported_at": utcnow().isoformat(),
        "contact": _row(contacts, contact_row),
        "company": company,
        "records": records,
        "conversations": conversations,
        "conversation_records": conversation_records,
        "consent_history": [e for e in audit_rows if e["action"] == "consent.changed"],
        "audit": audit_rows,
    }


def _attachment(attachment: Any, media: MediaStore | None) -> Any:
    if not isinstance(attachment, dict):
        return attachment
    url = attachment.get("url")
    stored = media is not None and isinstance(url, str) and media.key_of(url) is not None
    return {**attachment, "download_url": url if stored else None}


# --- erasure --------------------------------------------------------------------------------------


@dataclass(slots=True)
class ErasureReport:
    contact_id: int
    identities: int = 0
    tags: int = 0
    conversations: int = 0
    messages: int = 0
    attachments: int = 0
    merge_audits: int = 0
    other_columns: dict[str, int] = field(default_factory=dict)
    # Files to delete once the transaction has committed; not part of the answer.
    media_keys: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        """What was erased, counted (for the answer and the audit log: no erased data)."""
        return {
            "identities": self.identities,
            "tags": self.tags,
            "conversations": self.conversations,
            "messages": self.messages,
            "attachments": self.attachments,
            "merge_audits": self.merge_audits,
            "other_columns": dict(self.other_columns),
        }


async def erase_contact(
    session: AsyncSession, *, tenant_id: int, contact_id: int, media: MediaStore | None
) -> ErasureReport:
    """Anonymise the contact and its conversations' messages in the session's transaction."""
    contact = await _tenant_contact(session, tenant_id, contact_id)
    report = ErasureReport(contact_id=contact.id)
    contact.name = erased_name(contact.id)
    contact.email = None
    contact.phone = None
    contact.attributes = {}

    tags = await session.execute(delete(ContactTag).where(ContactTag.contact_id == contact.id))
    report.tags = int(getattr(tags, "rowcount", 0) or 0)

    identities = (
        await session.execute(
            select(ChannelIdentity).where(
                ChannelIdentity.contact_id == contact.id, ChannelIdentity.tenant_id == tenant_id
            )
        )
    ).scalars()
    for identity in identities:
        # Random, not a hash of the address: a hash of a phone number can be reversed by trying them all.
        identity.address = f"erased:{identity.id}:{secrets.token_hex(8)}"
        identity.match_key = None
        report.identities += 1

    conversation_ids = list(
        (
            await session.execute(
                select(Conversation.id).where(
                    Conversation.contact_id == contact.id, Conversation.tenant_id == tenant_id
                )
            )
        ).scalars()
    )
    report.conversations = len(conversation_ids)
    if conversation_ids:
        with_files = await session.execute(
            select(Message.id, Message.attachments).where(
                Message.conversation_id.in_(conversation_ids), Message.tenant_id == tenant_id
            )
        )
        for message_id, attachments in with_files.all():
            if not attachments:
                continue
            markers = [_erased_attachment(a, media) for a in attachments]
            report.media_keys.extend(str(m["media_key"]) for m in markers if "media_key" in m)
            report.attachments += len(attachments)
            await session.execute(update(Message).where(Message.id == message_id).values(attachments=markers))
        erased = await session.execute(
            update(Message)
            .where(Message.conversation_id.in_(conversation_ids), Message.tenant_id == tenant_id)
            .values(body=ERASED_TEXT, extra={"erased": True}, error_message=None, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        report.messages = int(getattr(erased, "rowcount", 0) or 0)
        # A provider's message id can name the sender (an email Message-ID's domain); each stays unique.
        await session.execute(
            update(Message)
            .where(Message.conversation_id.in_(conversation_ids), Message.provider_message_id.is_not(None))
            .values(provider_message_id=literal("erased:") + cast(Message.id, String))
            .execution_options(synchronize_session=False)
        )
        # Email threads are keyed by Message-IDs, which may name the customer's address.
        await session.execute(
            update(Conversation)
            .where(Conversation.id.in_(conversation_ids), Conversation.thread_key.is_not(None))
            .values(thread_key=None)
            .execution_options(synchronize_session=False)
        )

    merges = await session.execute(
        update(ContactMerge)
        .where(ContactMerge.survivor_id == contact.id, ContactMerge.tenant_id == tenant_id)
        .values(merged_snapshot={"erased": True}, report={"erased": True}, reason=ERASED_TEXT)
        .execution_options(synchronize_session=False)
    )
    report.merge_audits = int(getattr(merges, "rowcount", 0) or 0)

    await _erase_other_tables(session, report, tenant_id, contact.id, conversation_ids)
    await session.flush()
    if session.get_bind().dialect.name == "sqlite":
        await _optimise_sqlite_search(session)
    return report


def _erased_attachment(attachment: Any, media: MediaStore | None) -> dict[str, Any]:
    """What is left of an attachment: that there was one, and the (random) key of its file.

    The key stays so that erasing again deletes a file whose deletion after the commit failed.
    """
    if not isinstance(attachment, dict):
        return {"erased": True}
    key = attachment.get("media_key") if attachment.get("erased") else None
    url = attachment.get("url")
    if key is None and media is not None and isinstance(url, str):
        key = media.key_of(url)
    return {"erased": True, "media_key": key} if key else {"erased": True}


async def _erase_other_tables(
    session: AsyncSession, report: ErasureReport, tenant_id: int, contact_id: int, conversation_ids: list[int]
) -> None:
    """Free text in tables added by other features (notes of a ticket, a timeline entry's summary)."""
    known = {"channel_identities", "contact_tags", "contact_merges", "conversations", "messages"}
    targets = [(t, c, [contact_id]) for t, c in referring_tables("contacts")]
    targets += [(t, c, conversation_ids) for t, c in referring_tables("conversations")]
    for table, column, ids in targets:
        if table.name in known or not ids:
            continue
        free_text = [
            c
            for c in table.columns
            if isinstance(c.type, Text) and not c.primary_key and not c.foreign_keys and not c.unique
        ]
        if not free_text:
            continue
        where: ColumnElement[bool] = table.c[column].in_(ids)
        if "tenant_id" in table.c:
            where = where & (table.c.tenant_id == tenant_id)
        for c in free_text:
            result = await session.execute(
                update(table).where(where, c.is_not(None), c != "").values({c.name: ERASED_TEXT})
            )
            changed = int(getattr(result, "rowcount", 0) or 0)
            if changed:
                report.other_columns[f"{table.name}.{c.name}"] = changed


async def _optimise_sqlite_search(session: AsyncSession) -> None:
    # FTS5 records a deletion as a marker next to the old postings; merging every segment into one
    # drops both, so the erased words are gone from the index's storage, not only from its answers.
    for index in ("search_messages", "search_contacts"):
        exists = await session.execute(
            text("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"), {"name": index}
        )
        if exists.first() is not None:
            # `index` is one of the two fixed names above, never input.
            await session.execute(text(f"INSERT INTO {index}({index}) VALUES ('optimize')"))  # noqa: S608


async def delete_media(media: MediaStore | None, keys: list[str]) -> int:
    """Delete erased attachments' files (after the commit); return how many were still there."""
    if media is None:
        return 0
    deleted = 0
    for key in keys:
        deleted += await media.delete(key)
    return deleted
