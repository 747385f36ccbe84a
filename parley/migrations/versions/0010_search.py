"""search: full-text indexes over message bodies and contacts (PostgreSQL GIN, SQLite FTS5)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-24 10:20:00

None of these objects is in the SQLAlchemy models: `parley.migrate.include_name` keeps them out of
the models/migrations comparison (everything here is named `search_*` / `ix_search_*`).

PostgreSQL: a text search configuration `parley_search`, `simple` (no stemming, no stop words:
customers write in many languages, and an English stemmer would mangle the others) with `unaccent`
in front, so "cafe" finds "café" as SQLite's `unicode61 remove_diacritics` tokenizer does; a
generated `messages.search_vector` column and GIN indexes over it (contacts: an expression index).
SQLite: FTS5 external-content tables kept in step by triggers.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Keep in step with inbox.search (which builds the same expressions for the planner to match).
MESSAGE_VECTOR = "to_tsvector('parley_search'::regconfig, body)"
CONTACT_VECTOR = (
    "to_tsvector('parley_search'::regconfig, "
    "coalesce(name, '') || ' ' || coalesce(email, '') || ' ' || coalesce(phone, ''))"
)

_SQLITE_UP = [
    # remove_diacritics 2 also folds letters whose diacritic is a separate code point.
    "CREATE VIRTUAL TABLE search_messages USING fts5("
    "body, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2')",
    "CREATE VIRTUAL TABLE search_contacts USING fts5("
    "name, email, phone, content='contacts', content_rowid='id', tokenize='unicode61 remove_diacritics 2')",
    "INSERT INTO search_messages(search_messages) VALUES ('rebuild')",
    "INSERT INTO search_contacts(search_contacts) VALUES ('rebuild')",
    # External content: FTS5 keeps only the index, so every change to the source rows is mirrored.
    # 'delete' must be given the old values exactly as they were indexed.
    """CREATE TRIGGER search_messages_insert AFTER INSERT ON messages BEGIN
        INSERT INTO search_messages(rowid, body) VALUES (new.id, new.body);
    END""",
    """CREATE TRIGGER search_messages_delete AFTER DELETE ON messages BEGIN
        INSERT INTO search_messages(search_messages, rowid, body) VALUES ('delete', old.id, old.body);
    END""",
    """CREATE TRIGGER search_messages_update AFTER UPDATE OF body ON messages BEGIN
        INSERT INTO search_messages(search_messages, rowid, body) VALUES ('delete', old.id, old.body);
        INSERT INTO search_messages(rowid, body) VALUES (new.id, new.body);
    END""",
    """CREATE TRIGGER search_contacts_insert AFTER INSERT ON contacts BEGIN
        INSERT INTO search_contacts(rowid, name, email, phone)
        VALUES (new.id, new.name, new.email, new.phone);
    END""",
    """CREATE TRIGGER search_contacts_delete AFTER DELETE ON contacts BEGIN
        INSERT INTO search_contacts(search_contacts, rowid, name, email, phone)
        VALUES ('delete', old.id, old.name, old.email, old.phone);
    END""",
    """CREATE TRIGGER search_contacts_update AFTER UPDATE OF name, email, phone ON contacts BEGIN
        INSERT INTO search_contacts(search_contacts, rowid, name, email, phone)
        VALUES ('delete', old.id, old.name, old.email, old.phone);
        INSERT INTO search_contacts(rowid, name, email, phone)
        VALUES (new.id, new.name, new.email, new.phone);
    END""",
]

_SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS search_contacts_update",
    "DROP TRIGGER IF EXISTS search_contacts_delete",
    "DROP TRIGGER IF EXISTS search_contacts_insert",
    "DROP TRIGGER IF EXISTS search_messages_update",
    "DROP TRIGGER IF EXISTS search_messages_delete",
    "DROP TRIGGER IF EXISTS search_messages_insert",
    "DROP TABLE IF EXISTS search_contacts",
    "DROP TABLE IF EXISTS search_messages",
]

_POSTGRESQL_UP = [
    # Both trusted: the database owner may create them.
    "CREATE EXTENSION IF NOT EXISTS unaccent",
    # btree_gin lets one GIN index hold tenant_id beside the words, so a search reads only its own
    # tenant's postings instead of every tenant's matches filtered afterwards.
    "CREATE EXTENSION IF NOT EXISTS btree_gin",
    "CREATE TEXT SEARCH CONFIGURATION parley_search (COPY = simple)",
    "ALTER TEXT SEARCH CONFIGURATION parley_search "
    "ALTER MAPPING FOR hword, hword_part, word WITH unaccent, simple",
    # A stored vector rather than an expression index: ranking (ts_rank) and phrase rechecks read
    # the vector of every matching row, and recomputing it from the body cost ~20 µs a row (60 ms for
    # a word in 3,000 of a tenant's messages, bench/inbox.py); stored, the body is parsed once, on write.
    f"ALTER TABLE messages ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ({MESSAGE_VECTOR}) STORED",
    "CREATE INDEX ix_search_messages_body ON messages USING gin (tenant_id, search_vector)",
    f"CREATE INDEX ix_search_contacts ON contacts USING gin (tenant_id, {CONTACT_VECTOR})",
    # Contacts by company name: a trigram index like the contacts' own (migration 0006).
    "CREATE INDEX ix_search_companies_name_trgm ON companies USING gin (name gin_trgm_ops)",
    # Identity addresses by substring (the "matching identity" of a contact result).
    "CREATE INDEX ix_search_channel_identities_address_trgm ON channel_identities "
    "USING gin (address gin_trgm_ops)",
]

_POSTGRESQL_DOWN = [
    "DROP INDEX IF EXISTS ix_search_channel_identities_address_trgm",
    "DROP INDEX IF EXISTS ix_search_companies_name_trgm",
    "DROP INDEX IF EXISTS ix_search_contacts",
    "DROP INDEX IF EXISTS ix_search_messages_body",
    "ALTER TABLE messages DROP COLUMN IF EXISTS search_vector",
    "DROP TEXT SEARCH CONFIGURATION IF EXISTS parley_search",
    # The extensions stay, as pg_trgm does in 0006: they may predate this migration or serve others.
]


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_UP, "postgresql": _POSTGRESQL_UP}.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": _SQLITE_DOWN, "postgresql": _POSTGRESQL_DOWN}.get(dialect, []):
        op.execute(statement)
