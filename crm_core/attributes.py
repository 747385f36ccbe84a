"""Typed custom attributes: each tenant defines keys and their types; values are checked against them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from crm_core.models import AttributeDefinition


class AttributeType(StrEnum):
    STRING = "string"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATE = "date"
    ENUM = "enum"


MAX_STRING = 2000


def coerce(definition: AttributeDefinition, value: Any) -> Any:
    """The value as stored for this definition (dates as ISO strings); ValueError if it does not fit."""
    kind = AttributeType(definition.type)
    if kind is AttributeType.STRING:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if len(value) > MAX_STRING:
            raise ValueError(f"must be at most {MAX_STRING} characters")
        return value
    if kind is AttributeType.NUMBER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        return value
    if kind is AttributeType.BOOLEAN:
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if kind is AttributeType.DATE:
        if not isinstance(value, str):
            raise ValueError("must be a date, YYYY-MM-DD")
        try:
            return dt.date.fromisoformat(value).isoformat()
        except ValueError:
            raise ValueError("must be a date, YYYY-MM-DD") from None
    if value not in definition.options:
        raise ValueError(f"must be one of {', '.join(map(str, definition.options))}")
    return value


async def definitions(
    session: AsyncSession, tenant_id: int, entity: str = "contact"
) -> dict[str, AttributeDefinition]:
    rows = await session.execute(
        select(AttributeDefinition).where(
            AttributeDefinition.tenant_id == tenant_id, AttributeDefinition.entity == entity
        )
    )
    return {d.key: d for d in rows.scalars()}


def validate_attributes(
    defined: Mapping[str, AttributeDefinition], values: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The values coerced, and the errors by key (None values, i.e. removals, always pass).

    Keys without a definition are kept as given: free-form notes stay possible, and defining a key
    later starts checking it.
    """
    coerced: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for key, value in values.items():
        definition = defined.get(key)
        if value is None or definition is None:
            coerced[key] = value
            continue
        try:
            coerced[key] = coerce(definition, value)
        except ValueError as e:
            errors[key] = str(e)
    return coerced, errors
