"""Keyset pagination on ids: stable under inserts, and as fast on page 1000 as on page 1."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from gateway.api.schemas import PageQuery
from gateway.errors import ApiError

T = TypeVar("T")

_PREFIX = {False: "a", True: "d"}


def encode_cursor(last_id: int, *, descending: bool) -> str:
    """An opaque cursor pointing after `last_id`, remembering the order it was taken in."""
    return base64.urlsafe_b64encode(f"{_PREFIX[descending]}{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, descending: bool) -> int:
    """The id a cursor points after; 400 `invalid_cursor` unless `encode_cursor` made it for this order."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    digits = text[1:]
    if text[:1] != _PREFIX[descending] or not digits.isdigit() or len(digits) > 19:
        raise ApiError(
            400, "invalid_cursor", "The cursor is not one this endpoint returned (for this order)."
        )
    return int(digits)


async def fetch_page(
    session: AsyncSession,
    stmt: Select[T],
    key: InstrumentedAttribute[Any],
    page: PageQuery,
    *,
    descending: bool = True,
) -> tuple[Sequence[T], str | None]:
    """One page of `stmt` ordered by `key`, and the cursor of the next page (None on the last)."""
    if page.cursor is not None:
        after = decode_cursor(page.cursor, descending=descending)
        stmt = stmt.where(key < after if descending else key > after)
    stmt = stmt.order_by(key.desc() if descending else key.asc()).limit(page.limit + 1)
    rows = (await session.execute(stmt)).scalars().all()
    if len(rows) <= page.limit:
        return rows, None
    rows = rows[: page.limit]
    return rows, encode_cursor(getattr(rows[-1], key.key), descending=descending)
