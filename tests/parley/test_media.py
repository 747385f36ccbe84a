"""The media store: files kept per tenant under capability keys, served so a browser never runs them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from channels.base import Address, Attachment, DeliveryStatus, InboundMessage
from gateway.app import create_app
from gateway.keys import MEDIA
from inbox.media_fetch import store_inline_attachments
from parley.media import MediaStore, MediaTooLarge, safe_filename
from parley.settings import Settings


@pytest.fixture
def store(tmp_path: Path) -> MediaStore:
    return MediaStore(tmp_path / "media", max_bytes=1000, base_url="https://parley.example")


async def test_a_stored_file_reads_back_with_its_name_and_type(store: MediaStore) -> None:
    media = await store.put(
        7, b"%PDF-1.7 hello", filename="../../etc/Invoice 42.pdf", content_type="Application/PDF"
    )

    assert media.key.startswith("7/") and media.url == f"https://parley.example/media/{media.key}"
    assert media.filename == "Invoice 42.pdf" and media.content_type == "application/pdf"
    assert media.size == 14
    assert await store.read(media.key) == b"%PDF-1.7 hello"
    assert (await store.describe(media.key))["filename"] == "Invoice 42.pdf"
    assert store.key_of(media.url) == media.key
    # Two uploads of the same bytes are two files: keys are random, never derived from content.
    assert (await store.put(7, b"%PDF-1.7 hello", filename=None, content_type=None)).key != media.key


async def test_a_file_over_the_limit_is_refused_and_nothing_is_written(store: MediaStore) -> None:
    with pytest.raises(MediaTooLarge, match="1001 bytes"):
        await store.put(1, b"x" * 1001, filename="big.bin", content_type=None)
    assert not (store.root).exists() or not any(store.root.rglob("*"))


@pytest.mark.parametrize("key", ["../secret", "7/../../etc/passwd", "7", "x/AAAAAAAAAAAAAAAAAAAAAA", ""])
async def test_keys_outside_the_store_are_unknown(store: MediaStore, key: str) -> None:
    with pytest.raises(FileNotFoundError):
        await store.read(key)
    assert store.key_of(f"https://parley.example/media/{key}") is None


def test_file_names_lose_directories_and_control_characters() -> None:
    assert safe_filename("C:\\Users\\me\\report.docx") == "report.docx"
    assert safe_filename("..\x00hidden\x1b.txt") == "hidden.txt"
    assert safe_filename("   ") is None
    assert safe_filename(None) is None


async def test_inline_attachments_are_stored_and_oversized_ones_stay_listed(store: MediaStore) -> None:
    message = InboundMessage(
        provider_message_id="m1",
        sender=Address("email", "ana@example.com"),
        recipient=None,
        text="two files",
        attachments=(
            Attachment(url="", filename="small.txt", content_type="text/plain", data=b"hello"),
            Attachment(url="", filename="huge.zip", content_type="application/zip", data=b"z" * 5000),
            Attachment(url="https://cdn.example/already.png", content_type="image/png"),
        ),
    )
    status = DeliveryStatus(provider_message_id="m0", status="delivered")

    stored = await store_inline_attachments(store, 3, [status, message])

    assert stored[0] is status
    small, huge, remote = stored[1].attachments  # type: ignore[union-attr]
    assert small.data is None and small.size == 5 and small.url.startswith("https://parley.example/media/3/")
    assert await store.read(store.key_of(small.url) or "") == b"hello"
    assert huge.url == "" and huge.size == 5000 and huge.data is None and huge.filename == "huge.zip"
    assert remote.url == "https://cdn.example/already.png"


async def test_the_gateway_serves_files_without_letting_a_browser_run_them(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], settings: Settings
) -> None:
    client = await aiohttp_client(create_app(settings))
    store = client.app[MEDIA]
    photo = await store.put(1, b"\x89PNG fake", filename="photo.png", content_type="image/png")
    svg = await store.put(1, b"<svg onload=alert(1)>", filename="évil name.svg", content_type="image/svg+xml")

    response = await client.get(f"/media/{photo.key}")
    assert response.status == 200 and await response.read() == b"\x89PNG fake"
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Disposition"].startswith("inline")
    assert response.headers["X-Content-Type-Options"] == "nosniff"

    response = await client.get(f"/media/{svg.key}")
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Content-Disposition"] == "attachment; filename*=UTF-8''%C3%A9vil%20name.svg"
    assert "sandbox" in response.headers["Content-Security-Policy"]

    assert (await client.get("/media/1/AAAAAAAAAAAAAAAAAAAAAA")).status == 404
    assert (await client.get(f"/media/2/{photo.key.split('/')[1]}")).status == 404  # another tenant's path
