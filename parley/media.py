"""The media store: files customers and agents exchange (email attachments, chat uploads), on local disk.

A stored file's key is `<tenant id>/<128 random bits>`: the URL is a capability, as in Slack or
Chatwoot, so an `<img>` in the agent's browser or the chat widget can load it without a token,
and nobody can enumerate another tenant's files. Beside each file a small JSON sidecar keeps the
name and type it came with; `GET /media/{key}` serves it with headers that stop a browser from
running it (see `gateway/app.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_KEY = re.compile(r"^[0-9]{1,18}/[A-Za-z0-9_-]{22}$")
MEDIA_PATH = "/media/"


class MediaTooLarge(ValueError):
    """The file is over the store's size limit."""


@dataclass(frozen=True, slots=True)
class StoredMedia:
    key: str
    url: str
    size: int
    content_type: str | None
    filename: str | None
    sha256: str


class MediaStore:
    """Files under `root`, at most `max_bytes` each; `base_url` makes their URLs absolute."""

    def __init__(self, root: Path, max_bytes: int, *, base_url: str | None = None) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.base_url = (base_url or "").rstrip("/")

    def url(self, key: str) -> str:
        return f"{self.base_url}{MEDIA_PATH}{key}"

    async def put(
        self, tenant_id: int, data: bytes, *, filename: str | None, content_type: str | None
    ) -> StoredMedia:
        """Store one file; `MediaTooLarge` if it is over the limit."""
        if len(data) > self.max_bytes:
            raise MediaTooLarge(f"{len(data)} bytes is over the {self.max_bytes}-byte limit for a file")
        key = f"{tenant_id}/{secrets.token_urlsafe(16)}"
        stored = StoredMedia(
            key=key,
            url=self.url(key),
            size=len(data),
            content_type=_clean(content_type, 200),
            filename=safe_filename(filename),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        meta = {"content_type": stored.content_type, "filename": stored.filename, "sha256": stored.sha256}
        await asyncio.to_thread(self._write, key, data, json.dumps(meta).encode())
        return stored

    def _write(self, key: str, data: bytes, meta: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        # The sidecar first and each file renamed into place: a crash leaves no file without its type.
        for target, content in ((path.with_suffix(".json"), meta), (path, data)):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise FileNotFoundError(key)
        return self.root / key

    async def read(self, key: str) -> bytes:
        """The file's bytes; `FileNotFoundError` for an unknown or malformed key."""
        return await asyncio.to_thread(self._path(key).read_bytes)

    async def describe(self, key: str) -> dict[str, Any]:
        """The sidecar: `content_type`, `filename`, `sha256`."""
        raw = await asyncio.to_thread(self._path(key).with_suffix(".json").read_bytes)
        meta: dict[str, Any] = json.loads(raw)
        return meta

    async def delete(self, key: str) -> bool:
        """Remove a file and its sidecar; False if it was not there (deleting twice is harmless)."""

        def unlink() -> bool:
            path = self._path(key)
            existed = path.exists()
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
            return existed

        try:
            return await asyncio.to_thread(unlink)
        except FileNotFoundError:  # a malformed key names no file
            return False

    def key_of(self, url: str) -> str | None:
        """The key of a URL this store handed out, or None for anybody else's URL."""
        path = url.removeprefix(self.base_url) if self.base_url else url
        key = path.removeprefix(MEDIA_PATH) if path.startswith(MEDIA_PATH) else None
        return key if key is not None and _KEY.match(key) else None


def safe_filename(name: str | None) -> str | None:
    """A file name without directories or control characters, at most 200 characters."""
    if not name:
        return None
    base = re.split(r"[\\/]", name)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip().lstrip(".")
    return base[:200] or None


def _clean(value: str | None, limit: int) -> str | None:
    return value.strip().lower()[:limit] or None if value else None
