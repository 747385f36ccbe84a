"""Contact CSV imports: the uploaded file, its column mapping, progress and per-row errors (0016)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from parley.db import Base, BigId, utcnow


class ImportStatus:
    UPLOADED = "uploaded"  # previewed, waiting for its mapping
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ContactImport(Base):
    """One uploaded CSV of contacts; processed in the background, batch by batch."""

    __tablename__ = "contact_imports"
    __table_args__ = (Index("ix_contact_imports_tenant_id_id", "tenant_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    filename: Mapped[str] = mapped_column(String(255), default="")
    # The file decoded to text (it was size-limited at upload), and how it was read.
    content: Mapped[str] = mapped_column(Text)
    encoding: Mapped[str] = mapped_column(String(20))
    delimiter: Mapped[str] = mapped_column(String(1))
    header: Mapped[list[Any]] = mapped_column(default=list)
    total_rows: Mapped[int] = mapped_column(default=0)
    # Column name -> field ("name", "email", "phone", "company", "tags", "lifecycle_stage",
    # "attributes.<key>"); columns not named are ignored.
    mapping: Mapped[dict[str, Any]] = mapped_column(default=dict)
    region: Mapped[str | None] = mapped_column(String(2))
    status: Mapped[str] = mapped_column(String(20), default=ImportStatus.UPLOADED)
    # Rows before this index (0-based, header excluded) are done; batches commit with it.
    next_row: Mapped[int] = mapped_column(default=0)
    created_count: Mapped[int] = mapped_column(default=0)
    updated_count: Mapped[int] = mapped_column(default=0)
    error_count: Mapped[int] = mapped_column(default=0)
    # [{"row", "column", "error"}], the first MAX_REPORTED_ERRORS of them.
    errors: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
