"""Small helpers every provider adapter needs: headers, Retry-After, string settings."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

from channels.base import ConfigurationError


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
