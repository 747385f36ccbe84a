"""CSV import of contacts: read any spreadsheet's CSV, map its columns, validate each row, import in batches.

Reading: the bytes are decoded as UTF-8 (a BOM, which Excel writes, is dropped), UTF-16 when it
starts with a UTF-16 BOM, else Windows-1252 (what Excel writes without "UTF-8"); the delimiter
(`,` `;` tab `|`) is sniffed from the first lines. Rows are numbered as a spreadsheet shows them:
the header is row 1, so the first contact is row 2.

Importing: each valid row creates a contact or updates the one that already has its email or phone
(the same exact-address identity resolution that messages use), so a file never duplicates a
contact, and two rows of one file with the same address are one contact (the later row's values
win). A row whose email and phone belong to two different contacts is refused rather than merging
them: merging is a human's decision (`/contacts/{id}/merge`). Empty cells change nothing. Rows are
written in batches (one multi-row INSERT per table per batch), each batch committing with the job's
progress, so a worker that dies resumes after the last committed batch.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.attributes import AttributeType, coerce, definitions
from crm_core.identities import EMAIL, PHONE, match_key, normalise_email, normalise_phone
from crm_core.import_models import ContactImport, ImportStatus
from crm_core.lifecycle import set_stage
from crm_core.lifecycle_stages import LifecycleStage
from crm_core.models import AttributeDefinition, ChannelIdentity, Company, Contact, ContactTag
from crm_core.tenant_settings import crm_settings
from parley.db import Database, utcnow
from parley.outbox import Event, emit

logger = logging.getLogger(__name__)

IMPORT_TOPIC = "contacts.import_requested"
MAX_BYTES = 20 * 1024 * 1024
MAX_ROWS = 100_000
MAX_COLUMNS = 200
PREVIEW_ROWS = 5
BATCH_ROWS = 500
# One handler call imports this many rows, then queues the rest: an outbox lease never runs out.
ROWS_PER_RUN = 10_000
MAX_REPORTED_ERRORS = 10_000
# Outbox attempts after which a failing import is marked failed (the dispatcher gives up at 15).
GIVE_UP_AFTER = 10
DELIMITERS = ",;\t|"
FIELDS = ("name", "email", "phone", "company", "tags", "lifecycle_stage")
ATTRIBUTE_PREFIX = "attributes."
# OWASP's CSV injection list: a cell starting with one of these is a formula to a spreadsheet.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class CsvRefused(ValueError):
    """The upload cannot be imported at all (not text, empty, too large)."""


# --- reading --------------------------------------------------------------------------------------


def decode(data: bytes) -> tuple[str, str]:
    """The text and the encoding it was read with."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16"), "utf-16"
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), "cp1252"


def sniff_delimiter(text: str) -> str:
    sample = text[:65536]
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        first = sample.splitlines()[0] if sample else ""
        return max(DELIMITERS, key=first.count) if any(d in first for d in DELIMITERS) else ","


def read_rows(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Every record of the file (the header first) with its spreadsheet row number, cells stripped.

    Blank records are skipped but counted, so the numbers are the ones a spreadsheet shows.
    """
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=False)
    for number, record in enumerate(reader, start=1):
        cells = [c.strip() for c in record]
        if any(cells):
            yield number, cells


@dataclass(frozen=True, slots=True)
class Preview:
    text: str
    encoding: str
    delimiter: str
    header: list[str]
    rows: list[list[str]]
    total_rows: int


def preview(data: bytes) -> Preview:
    """Read an upload: its header, first rows and size; CsvRefused if it is not a usable CSV."""
    if len(data) > MAX_BYTES:
        raise CsvRefused(f"the file is over {MAX_BYTES // (1024 * 1024)} MiB")
    if b"\x00" in data and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise CsvRefused("the file is not text (a spreadsheet must be saved as CSV)")
    text, encoding = decode(data)
    text = text.replace("\x00", "")
    delimiter = sniff_delimiter(text)
    try:
        rows = (cells for _, cells in read_rows(text, delimiter))
        header = next(rows, None)
        if header is None:
            raise CsvRefused("the file is empty")
        if len(header) > MAX_COLUMNS:
            raise CsvRefused(f"the file has over {MAX_COLUMNS} columns")
        names = [h for h in header if h]
        if len(set(names)) != len(names):
            raise CsvRefused("two columns have the same name")
        if not names:
            raise CsvRefused("the first row must name the columns")
        first: list[list[str]] = []
        total = 0
        for row in rows:
            total += 1
            if total > MAX_ROWS:
                raise CsvRefused(f"the file has over {MAX_ROWS} rows; split it")
            if len(first) < PREVIEW_ROWS:
                first.append(row)
    except csv.Error as e:
        raise CsvRefused(f"the file is not valid CSV: {e}") from None
    return Preview(text, encoding, delimiter, header, first, total)


_ALIASES = {
    "name": ("name", "full name", "fullname", "contact", "contact name"),
    "email": ("email", "e-mail", "email address", "mail"),
    "phone": ("phone", "phone number", "mobile", "telephone", "tel", "cell"),
    "company": ("company", "company name", "organisation", "organization", "account"),
    "tags": ("tags", "tag", "labels"),
    "lifecycle_stage": ("lifecycle_stage", "lifecycle stage", "stage", "lifecycle"),
}


def suggest_mapping(header: Sequence[str], attribute_keys: Sequence[str]) -> dict[str, str]:
    """A first guess at the mapping from the column names (an export's own names map back)."""
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    for column in header:
        key = column.strip().lower()
        target = next((f for f, names in _ALIASES.items() if key in names), None)
        if (
            target is None
            and key.startswith(ATTRIBUTE_PREFIX)
            and key[len(ATTRIBUTE_PREFIX) :] in attribute_keys
        ):
            target = key
        if target is None and key in attribute_keys:
            target = ATTRIBUTE_PREFIX + key
        if target is not None and target not in taken:
            mapping[column] = target
            taken.add(target)
    return mapping


def mapping_errors(
    mapping: Mapping[str, str], header: Sequence[str], attribute_keys: Sequence[str]
) -> dict[str, str]:
    """What is wrong with a mapping, by column; empty if it can be used."""
    errors: dict[str, str] = {}
    seen: dict[str, str] = {}
    for column, target in mapping.items():
        if column not in header:
            errors[column] = "no such column in the file"
        elif target.startswith(ATTRIBUTE_PREFIX):
            if target[len(ATTRIBUTE_PREFIX) :] not in attribute_keys:
                errors[column] = f"{target[len(ATTRIBUTE_PREFIX) :]!r} is not a defined contact attribute"
        elif target not in FIELDS:
            errors[column] = f"unknown field {target!r}"
        if target in seen and column not in errors:
            errors[column] = f"{seen[target]!r} is already mapped to {target}"
        seen.setdefault(target, column)
    if not ({"email", "phone", "name"} & set(mapping.values())) and not errors:
        errors["mapping"] = "map at least one of name, email or phone"
    return errors


# --- validating -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ContactRow:
    """One row's values, validated; None means the cell was empty (nothing to change)."""

    row: int
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    company: str | None = None
    tags: list[str] = field(default_factory=list)
    lifecycle_stage: LifecycleStage | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    column: str
    error: str

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "error": self.error}


def unquote_formula(cell: str) -> str:
    """Undo the export's formula guard: `'=x` back to `=x` (and `'+1 415…` to `+1 415…`)."""
    if len(cell) >= 2 and cell[0] == "'" and cell[1] in "=+-@\t\r":
        return cell[1:]
    return cell


_TRUE = frozenset({"true", "yes", "y", "1", "on"})
_FALSE = frozenset({"false", "no", "n", "0", "off"})


def attribute_value(definition: AttributeDefinition, cell: str) -> Any:
    """A cell as the attribute's type; ValueError if it is not one."""
    kind = AttributeType(definition.type)
    value: Any = cell
    if kind is AttributeType.NUMBER:
        try:
            number = float(cell.replace(" ", ""))
        except ValueError:
            raise ValueError("must be a number") from None
        value = int(number) if number.is_integer() and "." not in cell else number
    elif kind is AttributeType.BOOLEAN:
        lowered = cell.lower()
        if lowered not in _TRUE | _FALSE:
            raise ValueError("must be true or false (yes/no, 1/0)")
        value = lowered in _TRUE
    elif kind is AttributeType.ENUM:
        matches = [o for o in definition.options if str(o).lower() == cell.lower()]
        value = matches[0] if matches else cell
    return coerce(definition, value)


def validate_row(
    row_number: int,
    cells: Mapping[str, str],
    mapping: Mapping[str, str],
    attributes: Mapping[str, AttributeDefinition],
    region: str | None,
) -> tuple[ContactRow | None, list[RowError]]:
    """The row's contact values, or None and what is wrong with it (every fault, by column)."""
    out = ContactRow(row_number)
    errors: list[RowError] = []
    for column, target in mapping.items():
        cell = unquote_formula(cells.get(column, "").strip())
        if not cell:
            continue
        try:
            if target == "name":
                if len(cell) > 200:
                    raise ValueError("must be at most 200 characters")
                out.name = cell
            elif target == "email":
                out.email = normalise_email(cell)
            elif target == "phone":
                out.phone = normalise_phone(cell, region)
            elif target == "company":
                if len(cell) > 200:
                    raise ValueError("must be at most 200 characters")
                out.company = cell
            elif target == "tags":
                tags = sorted({t.strip().lower() for t in cell.replace(";", ",").split(",") if t.strip()})
                if any(len(t) > 64 for t in tags):
                    raise ValueError("a tag must be at most 64 characters")
                out.tags = tags
            elif target == "lifecycle_stage":
                try:
                    out.lifecycle_stage = LifecycleStage(cell.lower())
                except ValueError:
                    raise ValueError(f"must be one of {', '.join(LifecycleStage)}") from None
            else:
                key = target[len(ATTRIBUTE_PREFIX) :]
                out.attributes[key] = attribute_value(attributes[key], cell)
        except ValueError as e:
            errors.append(RowError(row_number, column, str(e)))
    if not errors and out.name is None and out.email is None and out.phone is None:
        errors.append(RowError(row_number, "", "a contact needs a name, an email or a phone"))
    return (None if errors else out), errors


# --- importing ------------------------------------------------------------------------------------


@dataclass(slots=True)
class BatchResult:
    created: list[int] = field(default_factory=list)
    updated: dict[int, set[str]] = field(default_factory=dict)
    errors: list[RowError] = field(default_factory=list)


async def _companies(session: AsyncSession, tenant_id: int, names: set[str]) -> dict[str, int]:
    """Company ids by lower-cased name, creating the companies not there yet."""
    if not names:
        return {}
    lowered = {n.lower(): n for n in names}
    found: dict[str, int] = {}
    rows = await session.execute(
        select(Company.id, Company.name)
        .where(Company.tenant_id == tenant_id, func.lower(Company.name).in_(list(lowered)))
        .order_by(Company.id)
    )
    for company_id, name in rows.all():
        found.setdefault(name.lower(), company_id)
    for key, name in lowered.items():
        if key not in found:
            company = Company(tenant_id=tenant_id, name=name, domain=None, attributes={})
            session.add(company)
            await session.flush()
            found[key] = company.id
    return found


async def import_batch(session: AsyncSession, tenant_id: int, rows: Sequence[ContactRow]) -> BatchResult:
    """Create or update the contacts of these validated rows, in the session's transaction."""
    result = BatchResult()
    addresses = {(EMAIL, r.email) for r in rows if r.email} | {(PHONE, r.phone) for r in rows if r.phone}
    owner: dict[tuple[str, str], int | str] = {}
    if addresses:
        # One IN list per kind (the unique index on tenant, kind, address), not an OR per address.
        by_kind: dict[str, list[str]] = {}
        for kind, address in addresses:
            by_kind.setdefault(kind, []).append(address)
        found = await session.execute(
            select(ChannelIdentity.kind, ChannelIdentity.address, ChannelIdentity.contact_id).where(
                ChannelIdentity.tenant_id == tenant_id,
                or_(
                    *(
                        and_(ChannelIdentity.kind == k, ChannelIdentity.address.in_(a))
                        for k, a in by_kind.items()
                    )
                ),
            )
        )
        owner = {(kind, address): contact_id for kind, address, contact_id in found.all()}
    existing_identities = set(owner)
    # Rows grouped by the contact they land on: an existing id, or "new:<n>" for one to create.
    targets: dict[int | str, list[ContactRow]] = {}
    for r in rows:
        keys = [k for k in ((EMAIL, r.email), (PHONE, r.phone)) if k[1]]
        owners = {owner[k] for k in keys if k in owner}
        if len(owners) > 1:
            result.errors.append(
                RowError(
                    r.row,
                    "email",
                    f"{r.email} and {r.phone} belong to two different contacts; merge them first",
                )
            )
            continue
        target: int | str = owners.pop() if owners else f"new:{r.row}"
        for k in keys:
            owner[k] = target  # type: ignore[index]
        targets.setdefault(target, []).append(r)

    def merged(group: list[ContactRow]) -> ContactRow:
        out = ContactRow(group[0].row)
        for r in group:
            out.name = r.name or out.name
            out.email = r.email or out.email
            out.phone = r.phone or out.phone
            out.company = r.company or out.company
            out.lifecycle_stage = r.lifecycle_stage or out.lifecycle_stage
            out.tags = sorted(set(out.tags) | set(r.tags))
            out.attributes.update(r.attributes)
        return out

    values = {t: merged(g) for t, g in targets.items()}
    company_ids = await _companies(session, tenant_id, {v.company for v in values.values() if v.company})
    now = utcnow()
    new_keys = [t for t in values if isinstance(t, str)]
    ids: dict[int | str, int] = {}
    if new_keys:
        inserted = await session.execute(
            insert(Contact).returning(Contact.id, sort_by_parameter_order=True),
            [
                {
                    "tenant_id": tenant_id,
                    "name": values[k].name,
                    "email": values[k].email,
                    "phone": values[k].phone,
                    "attributes": values[k].attributes,
                    "company_id": company_ids.get((values[k].company or "").lower()),
                    "lifecycle_stage": values[k].lifecycle_stage or LifecycleStage.LEAD,
                    "score": 0.0,
                    "created_at": now,
                    "updated_at": now,
                }
                for k in new_keys
            ],
        )
        for key, contact_id in zip(new_keys, inserted.scalars(), strict=True):
            ids[key] = contact_id
            result.created.append(contact_id)
    existing_ids = [t for t in values if isinstance(t, int)]
    if existing_ids:
        contacts = (
            await session.execute(
                select(Contact).where(Contact.tenant_id == tenant_id, Contact.id.in_(existing_ids))
            )
        ).scalars()
        for contact in contacts:
            v = values[contact.id]
            ids[contact.id] = contact.id
            changed: set[str] = set()
            for name in ("name", "email", "phone"):
                new = getattr(v, name)
                if new is not None and new != getattr(contact, name):
                    setattr(contact, name, new)
                    changed.add(name)
            if v.company and company_ids[v.company.lower()] != contact.company_id:
                contact.company_id = company_ids[v.company.lower()]
                changed.add("company_id")
            if v.attributes and {**contact.attributes, **v.attributes} != contact.attributes:
                contact.attributes = {**contact.attributes, **v.attributes}
                changed.add("attributes")
            if v.lifecycle_stage is not None and await set_stage(
                session, contact, v.lifecycle_stage, reason="imported from CSV", user_id=None
            ):
                changed.add("lifecycle_stage")
            result.updated[contact.id] = changed
        await session.flush()
    # New addresses become identities, so later messages from them resolve to the contact.
    identity_rows: list[dict[str, Any]] = [
        {
            "tenant_id": tenant_id,
            "contact_id": ids[target],
            "kind": kind,
            "address": address,
            "match_key": match_key(kind, address),
            "created_at": now,
        }
        for (kind, address), target in owner.items()
        if (kind, address) not in existing_identities and target in ids
    ]
    for row in identity_rows:
        if row["contact_id"] in result.updated:
            result.updated[row["contact_id"]].add(row["kind"])
    if identity_rows:
        await session.execute(insert(ChannelIdentity), identity_rows)
    tagged = {ids[t]: v.tags for t, v in values.items() if v.tags and t in ids}
    if tagged:
        current: dict[int, set[str]] = {}
        for contact_id, tag in (
            await session.execute(
                select(ContactTag.contact_id, ContactTag.tag).where(ContactTag.contact_id.in_(list(tagged)))
            )
        ).all():
            current.setdefault(contact_id, set()).add(tag)
        tag_rows: list[dict[str, Any]] = [
            {"tenant_id": tenant_id, "contact_id": contact_id, "tag": tag}
            for contact_id, tags in tagged.items()
            for tag in tags
            if tag not in current.get(contact_id, set())
        ]
        if tag_rows:
            await session.execute(insert(ContactTag), tag_rows)
            for row in tag_rows:
                if row["contact_id"] in result.updated:
                    result.updated[row["contact_id"]].add("tags")
    return result


class ContactImporter:
    """The background half of an import (the `contacts.import_requested` outbox handler)."""

    def __init__(
        self, db: Database, *, rows_per_run: int = ROWS_PER_RUN, batch_rows: int = BATCH_ROWS
    ) -> None:
        self.db = db
        self.rows_per_run = rows_per_run
        self.batch_rows = batch_rows

    async def on_import_requested(self, event: Event) -> None:
        try:
            await self.run(event.payload.get("import_id"), event.tenant_id)
        except Exception:
            # The outbox retries; on the last tries the job is marked failed rather than left running.
            if event.attempts < GIVE_UP_AFTER:
                raise
            logger.exception("contact import %s failed", event.payload.get("import_id"))
            async with self.db.transaction() as session:
                await session.execute(
                    update(ContactImport)
                    .where(ContactImport.id == event.payload.get("import_id"))
                    .values(status=ImportStatus.FAILED, finished_at=utcnow())
                )

    async def run(self, import_id: Any, tenant_id: int | None) -> None:
        """Import up to `rows_per_run` rows of the job, then queue the rest (or finish it)."""
        async with self.db.sessionmaker() as session:
            job = (
                await session.execute(
                    select(ContactImport).where(
                        ContactImport.id == import_id, ContactImport.tenant_id == tenant_id
                    )
                )
            ).scalar_one_or_none()
            if job is None or job.status not in (ImportStatus.QUEUED, ImportStatus.RUNNING):
                return
            defined = await definitions(session, job.tenant_id)
            region = job.region or (await crm_settings(session, job.tenant_id)).default_region
        header = job.header
        start = job.next_row
        stop = min(start + self.rows_per_run, job.total_rows)
        records = read_rows(job.content, job.delimiter)
        next(records, None)  # the header
        pending: list[tuple[int, int, list[str]]] = []
        for index, (number, record) in enumerate(records):
            if index >= stop:
                break
            if index >= start:
                pending.append((index, number, record))
            if len(pending) >= self.batch_rows:
                if not await self._batch(job, pending, header, defined, region):
                    return
                pending = []
        if pending and not await self._batch(job, pending, header, defined, region):
            return
        async with self.db.transaction() as session:
            current = (
                await session.execute(select(ContactImport).where(ContactImport.id == job.id))
            ).scalar_one()
            if current.next_row >= current.total_rows:
                current.status = ImportStatus.DONE
                current.finished_at = utcnow()
                current.content = ""  # no second copy of the customer data is kept once imported
            else:
                await emit(session, job.tenant_id, (IMPORT_TOPIC, {"import_id": job.id}))

    async def _batch(
        self,
        job: ContactImport,
        records: list[tuple[int, int, list[str]]],
        header: list[str],
        defined: Mapping[str, AttributeDefinition],
        region: str | None,
    ) -> bool:
        valid: list[ContactRow] = []
        errors: list[RowError] = []
        for _, number, record in records:
            cells = {
                column: record[i] if i < len(record) else "" for i, column in enumerate(header) if column
            }
            row, problems = validate_row(number, cells, job.mapping, defined, region)
            errors += problems
            if row is not None:
                valid.append(row)
        first, last = records[0][0], records[-1][0] + 1  # indexes among the data rows
        async with self.db.transaction() as session:
            # Claim the batch: a second runner of the same job (a retried event) finds it taken.
            claimed = await session.execute(
                update(ContactImport)
                .where(ContactImport.id == job.id, ContactImport.next_row == first)
                .values(next_row=last, status=ImportStatus.RUNNING)
                .returning(ContactImport.errors, ContactImport.started_at)
            )
            progress = claimed.first()
            if progress is None:
                return False
            result = await import_batch(session, job.tenant_id, valid)
            errors += result.errors
            reported = list(progress.errors or [])
            position = {column: i for i, column in enumerate(header)}  # errors in the file's column order
            room = MAX_REPORTED_ERRORS - len(reported)
            reported += [
                e.as_dict()
                for e in sorted(errors, key=lambda e: (e.row, position.get(e.column, -1)))[: max(room, 0)]
            ]
            updated = {cid: changed for cid, changed in result.updated.items() if changed}
            await session.execute(
                update(ContactImport)
                .where(ContactImport.id == job.id)
                .values(
                    created_count=ContactImport.created_count + len(result.created),
                    updated_count=ContactImport.updated_count + len(result.updated),
                    error_count=ContactImport.error_count + len({e.row for e in errors}),
                    errors=reported,
                    started_at=progress.started_at or utcnow(),
                )
            )
            await emit(
                session,
                job.tenant_id,
                *(("contact.created", {"contact_id": cid, "source": "import"}) for cid in result.created),
                *(
                    ("contact.updated", {"contact_id": cid, "changed": sorted(changed), "source": "import"})
                    for cid, changed in updated.items()
                ),
            )
        return True


# --- exporting ------------------------------------------------------------------------------------


def safe_cell(value: Any) -> str:
    """A value as a CSV cell a spreadsheet will not run: formula-like text gets a leading `'` (OWASP)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def export_header(attribute_keys: Sequence[str]) -> list[str]:
    return ["id", *FIELDS, "score", "created_at", *(ATTRIBUTE_PREFIX + k for k in attribute_keys)]


def export_row(
    contact: Contact, company: str | None, tags: Sequence[str], attribute_keys: Sequence[str]
) -> list[str]:
    values: list[Any] = [
        contact.id,
        contact.name,
        contact.email,
        contact.phone,
        company,
        ", ".join(tags),
        contact.lifecycle_stage,
        round(contact.score, 2),
        contact.created_at.isoformat(),
    ]
    for key in attribute_keys:
        value = contact.attributes.get(key)
        values.append(str(value).lower() if isinstance(value, bool) else value)
    return [safe_cell(v) for v in values]
