"""Small helpers every provider adapter needs: headers, Retry-After, string settings."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

from channels.base import ConfigurationError, MalformedPayload


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by name, case-insensitively also for a plain dict (aiohttp's are already)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header: either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def optional_str(settings: Mapping[str, Any], key: str) -> str | None:
    """A string setting, stripped; None when absent or blank; ConfigurationError when not a string."""
    value = settings.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(f"{key} must be a string")
    return value.strip() or None


def required_str(settings: Mapping[str, Any], key: str) -> str:
    value = optional_str(settings, key)
    if not value:
        raise ConfigurationError(f"{key} is required")
    return value


# Reading JSON payloads leaf by leaf: every failure names where in the payload it is.


def json_object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise MalformedPayload(f"{where} is not an object")
    return value


def json_optional_object(obj: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any] | None:
    value = obj.get(key)
    return None if value is None else json_object(value, f"{where}.{key}")


def json_objects(
    obj: Mapping[str, Any], key: str, where: str, *, required: bool = False
) -> list[Mapping[str, Any]]:
    value = obj.get(key)
    if value is None:
        if required:
            raise MalformedPayload(f"{where} has no {key}")
        return []
    if not isinstance(value, list):
        raise MalformedPayload(f"{where}.{key} is not a list")
    return [json_object(item, f"{where}.{key}[{i}]") for i, item in enumerate(value)]


def json_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedPayload(f"{where}.{key} is missing or not a string")
    return value
