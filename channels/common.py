"""Small helpers every provider adapter needs: headers, Retry-After, string settings."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from channels.base import (
    ChannelError,
    ConfigurationError,
    FetchedMedia,
    MalformedPayload,
    PermanentDeliveryError,
    TransientDeliveryError,
)


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


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    max_bytes: int,
    what: str,
    headers: Mapping[str, str] | None = None,
    translate: Callable[[int, bytes, CIMultiDictProxy[str]], ChannelError] | None = None,
) -> FetchedMedia:
    """GET a file of at most `max_bytes`, streamed so a lying or missing Content-Length cannot
    make us hold more; HTTP errors go through `translate` (default: 5xx/429 transient, else permanent).

    aiohttp drops the Authorization header when a redirect leaves the URL's origin, so provider
    credentials never reach the storage host a provider redirects to.
    """
    try:
        async with session.get(url, headers=headers) as response:
            if response.status != 200:
                body = await response.content.read(4096)
                if translate is not None:
                    raise translate(response.status, body, response.headers)
                if response.status == 429 or response.status >= 500:
                    raise TransientDeliveryError(
                        f"{what}: HTTP {response.status}",
                        retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                    )
                raise PermanentDeliveryError(
                    f"{what}: HTTP {response.status}", code=f"http_{response.status}"
                )
            if response.content_length is not None and response.content_length > max_bytes:
                raise too_large(what, response.content_length, max_bytes)
            data = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > max_bytes:
                    raise too_large(what, len(data), max_bytes)
            # aiohttp reports application/octet-stream when the server named no type at all.
            content_type = (
                None if response.content_type == "application/octet-stream" else response.content_type
            )
    except (aiohttp.ClientError, TimeoutError) as e:
        raise TransientDeliveryError(f"{what}: download failed: {e!r}") from e
    return FetchedMedia(bytes(data), content_type)


def too_large(what: str, size: int, max_bytes: int) -> PermanentDeliveryError:
    return PermanentDeliveryError(
        f"{what} is {size} bytes, more than the {max_bytes} Parley downloads", code="media_too_large"
    )
