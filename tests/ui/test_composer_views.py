"""The composer's server side through the aiohttp client, on SQLite and PostgreSQL: what the composer
offers per channel and reply window, agents' uploads (sniffed, limited, tenant-scoped), the people
to @mention, and the bell's notifications."""

from __future__ import annotations

import dataclasses
import html
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from crm_core.consent import record_consent
from gateway.app import create_app
from gateway.ui.composer_views import sniff_content_type
from inbox.models import Conversation
from parley.db import Database
from parley.models import OutboxEvent, Role
from parley.settings import Settings
from tests.conftest import TenantAccess, make_tenant
from tests.fakes.twilio_api import FakeTwilioApi
from tests.ui.composer_support import (
    CONTENT_SID,
    WHATSAPP_TEMPLATES,
    BrowserSession,
    make_conversation,
    make_inbox,
    web_session,
)

MAX_BYTES = 64 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64


@dataclass
class Workspace:
    client: TestClient[Any, Any]
    db: Database
    admin: TenantAccess
    agent_id: int
    admin_web: BrowserSession
    sms_conversation: int
    fake: FakeTwilioApi

    async def get(self, path: str, web: BrowserSession | None = None) -> tuple[int, str]:
        async with self.client.get(
            path, cookies=(web or self.admin_web).cookies, allow_redirects=False
        ) as response:
            return response.status, await response.text()

    async def upload(
        self,
        conversation_id: int,
        data: bytes,
        *,
        filename: str = "photo.png",
        content_type: str = "image/png",
        web: BrowserSession | None = None,
        csrf: bool = True,
    ) -> tuple[int, Any]:
        who = web or self.admin_web
        form = aiohttp.FormData()
        form.add_field("file", data, filename=filename, content_type=content_type)
        headers = {"X-CSRF-Token": who.csrf} if csrf else {}
        async with self.client.post(
            f"/ui/conversations/{conversation_id}/uploads", data=form, cookies=who.cookies, headers=headers
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text.startswith("{") else text

    async def api(self, method: str, path: str, body: Any = None, web: BrowserSession | None = None) -> Any:
        """The REST API as the page's JavaScript calls it: session cookie plus CSRF header."""
        who = web or self.admin_web
        async with self.client.request(
            method, f"/api/v1{path}", json=body, cookies=who.cookies, headers={"X-CSRF-Token": who.csrf}
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None


@pytest.fixture
def small_media(settings: Settings) -> Settings:
    return dataclasses.replace(settings, media_max_bytes=MAX_BYTES)


@pytest_asyncio.fixture
async def workspace(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    db: Database,
    small_media: Settings,
    public_port: int,
    fake_twilio: FakeTwilioApi,
) -> AsyncIterator[Workspace]:
    admin = await make_tenant(db, "acme", email="ada.admin@acme.example.com")
    agent = await _add_user(db, admin.tenant_id, "bob.agent@acme.example.com", "Bob Builder")
    inbox = await make_inbox(db, admin.tenant_id, "twilio_sms", fake_twilio)
    conversation = await make_conversation(db, admin.tenant_id, inbox)
    client = await aiohttp_client(
        create_app(small_media), server_kwargs={"port": public_port, "host": "127.0.0.1"}
    )
    yield Workspace(client, db, admin, agent, await web_session(db, admin.user_id), conversation, fake_twilio)


async def _add_user(db: Database, tenant_id: int, email: str, name: str, role: Role = Role.AGENT) -> int:
    from parley.auth import hash_password
    from parley.models import User

    async with db.transaction() as session:
        user = User(
            tenant_id=tenant_id, email=email, password_hash=hash_password("x" * 12), role=role, name=name
        )
        session.add(user)
        await session.flush()
        return user.id


def attribute(page: str, name: str) -> str:
    found = re.search(rf'{name}="([^"]*)"', page)
    assert found is not None, f"no {name} in the page"
    return html.unescape(found.group(1))


# --- what the composer offers --------------------------------------------------------------------


async def test_sms_composer_replies_with_files_and_notes(workspace: Workspace) -> None:
    status, page = await workspace.get(f"/compose/{workspace.sms_conversation}")
    assert status == 200
    assert attribute(page, "data-can-reply") == "true"
    assert attribute(page, "data-media") == "true"
    assert attribute(page, "data-mode") == "reply"
    assert 'id="composer-text"' in page and 'id="composer-file"' in page
    assert 'data-composer-mode="note"' in page
    assert "Window closes" not in page  # SMS has no reply window
    # The bell is in the top bar of every page, with its script.
    assert "data-bell-button" in page and "/ui/static/bell.js" in page
    # The fragment the page swaps in when the state changes is the composer alone.
    status, fragment = await workspace.get(f"/ui/conversations/{workspace.sms_conversation}/composer")
    assert status == 200
    assert fragment.lstrip().startswith("<section") or "<html" not in fragment
    assert 'id="composer"' in fragment


async def test_whatsapp_outside_the_window_offers_templates_prefilled_from_the_contact(
    workspace: Workspace,
) -> None:
    inbox = await make_inbox(
        workspace.db,
        workspace.admin.tenant_id,
        "twilio_whatsapp",
        workspace.fake,
        phone_number="+14155238886",
        templates=WHATSAPP_TEMPLATES,
    )
    closed = await make_conversation(
        workspace.db,
        workspace.admin.tenant_id,
        inbox,
        last_inbound_ago=timedelta(hours=30),
        phone="+14155550111",
    )
    status, page = await workspace.get(f"/ui/conversations/{closed}/composer")
    assert status == 200
    assert attribute(page, "data-template-mode") == "true"
    assert attribute(page, "data-can-reply") == "false"
    assert f'data-name="{CONTENT_SID}"' in page
    assert "Send template" in page
    # `first_name` matches a contact field: prefilled; `2` does not: left for the agent.
    assert re.search(r'data-variable="first_name" value="Ann"', page)
    assert re.search(r'data-variable="2" value=""', page)
    assert "24 hours" in page  # the reason, for a person

    open_ = await make_conversation(
        workspace.db,
        workspace.admin.tenant_id,
        inbox,
        last_inbound_ago=timedelta(hours=21),
        phone="+14155550122",
    )
    status, page = await workspace.get(f"/ui/conversations/{open_}/composer")
    assert attribute(page, "data-template-mode") == "false"
    assert attribute(page, "data-can-reply") == "true"
    assert "data-closes-at" in page
    assert re.search(r"Window closes in .*>2 h 59 min<|>3 h 0 min<", page), page


async def test_a_phone_line_explains_that_only_notes_are_possible(workspace: Workspace) -> None:
    inbox = await make_inbox(workspace.db, workspace.admin.tenant_id, "twilio_voice")
    conversation = await make_conversation(
        workspace.db, workspace.admin.tenant_id, inbox, phone="+14155550133"
    )
    status, page = await workspace.get(f"/ui/conversations/{conversation}/composer")
    assert status == 200
    assert attribute(page, "data-can-reply") == "false"
    assert attribute(page, "data-mode") == "note"
    assert "cannot carry a written reply" in page and "A private note still works." in page
    assert "carries no files" in page


async def test_an_opted_out_contact_cannot_be_replied_to_but_notes_work(workspace: Workspace) -> None:
    async with workspace.db.transaction() as session:
        contact_id = (
            await session.execute(
                select(Conversation.contact_id).where(Conversation.id == workspace.sms_conversation)
            )
        ).scalar_one()
        await record_consent(
            session,
            tenant_id=workspace.admin.tenant_id,
            contact_id=contact_id,
            channel="sms",
            granted=False,
            source="test",
        )
    status, page = await workspace.get(f"/ui/conversations/{workspace.sms_conversation}/composer")
    assert status == 200
    assert attribute(page, "data-can-reply") == "false"
    assert attribute(page, "data-template-mode") == "false"
    assert "opted out of sms messages" in page and "A private note still works." in page


async def test_another_tenants_conversation_is_not_found_and_roles_are_checked(
    workspace: Workspace,
) -> None:
    other = await make_tenant(workspace.db, "globex")
    other_inbox = await make_inbox(workspace.db, other.tenant_id, "twilio_sms", workspace.fake)
    theirs = await make_conversation(workspace.db, other.tenant_id, other_inbox)
    assert (await workspace.get(f"/compose/{theirs}"))[0] == 404
    assert (await workspace.get(f"/ui/conversations/{theirs}/composer"))[0] == 404
    assert (await workspace.get("/ui/conversations/99999999/composer"))[0] == 404
    status, body = await workspace.upload(theirs, PNG)
    assert status == 404 and body["error"]["code"] == "not_found"

    marketer = await _add_user(
        workspace.db, workspace.admin.tenant_id, "mia@acme.example.com", "Mia", Role.MARKETER
    )
    marketer_web = await web_session(workspace.db, marketer)
    # Marketers read conversations but do not write in them: no box, no uploads.
    status, page = await workspace.get(f"/compose/{workspace.sms_conversation}", marketer_web)
    assert status == 200
    assert "can read this conversation but not write" in page and 'id="composer-text"' not in page
    status, _ = await workspace.upload(workspace.sms_conversation, PNG, web=marketer_web)
    assert status == 403
    # Not signed in: the sign-in page.
    async with workspace.client.get(f"/compose/{workspace.sms_conversation}", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"].startswith("/login")


# --- uploads ---------------------------------------------------------------------------------------


async def test_an_upload_is_stored_with_the_type_its_bytes_show(workspace: Workspace) -> None:
    # Declared as HTML, it is a PNG: stored and served as an image.
    status, stored = await workspace.upload(
        workspace.sms_conversation, PNG, filename="../../etc/photo.png", content_type="text/html"
    )
    assert status == 201, stored
    assert stored["content_type"] == "image/png"
    assert stored["filename"] == "photo.png"
    assert stored["size"] == len(PNG)
    assert stored["url"].startswith(
        f"http://127.0.0.1:{workspace.client.port}/media/{workspace.admin.tenant_id}/"
    )
    path = stored["url"].split(str(workspace.client.port), 1)[1]
    async with workspace.client.get(path) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/png"
        assert await response.read() == PNG

    # Declared as a PNG, it is a page with a script: stored as text, served as a download.
    page = b"<html><script>alert(1)</script></html>"
    status, stored = await workspace.upload(workspace.sms_conversation, page, content_type="image/png")
    assert status == 201
    assert stored["content_type"] == "text/plain"
    path = stored["url"].split(str(workspace.client.port), 1)[1]
    async with workspace.client.get(path) as response:
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.headers["Content-Disposition"].startswith("attachment")


async def test_uploads_are_limited_checked_and_refused_where_files_cannot_go(workspace: Workspace) -> None:
    status, body = await workspace.upload(workspace.sms_conversation, b"\xff\xd8\xff" + b"x" * MAX_BYTES)
    assert status == 413 and body["error"]["code"] == "attachment_too_large"
    status, _ = await workspace.upload(workspace.sms_conversation, PNG, csrf=False)
    assert status == 403
    status, body = await workspace.upload(workspace.sms_conversation, b"")
    assert status == 400
    slack = await make_inbox(workspace.db, workspace.admin.tenant_id, "slack")
    conversation = await make_conversation(
        workspace.db, workspace.admin.tenant_id, slack, kind="slack", address="U123", phone="+14155550144"
    )
    status, body = await workspace.upload(conversation, PNG)
    assert status == 422 and body["error"]["code"] == "media_unsupported"
    assert "cannot carry files" in body["error"]["message"]


def test_sniffing_names_common_files_and_distrusts_the_rest() -> None:
    assert sniff_content_type(PNG) == "image/png"
    assert sniff_content_type(b"\xff\xd8\xff\xe0rest") == "image/jpeg"
    assert sniff_content_type(b"%PDF-1.7\n") == "application/pdf"
    assert sniff_content_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_content_type(b"\x00\x00\x00\x18ftypmp42") == "video/mp4"
    assert sniff_content_type("Grüße, order #12\n".encode()) == "text/plain"
    assert sniff_content_type(b"<svg onload=alert(1)>") == "text/plain"
    assert sniff_content_type(b"\x00\x01\x02binary") == "application/octet-stream"


# --- @mentions and the bell ------------------------------------------------------------------------


async def test_people_to_mention_are_this_workspaces_active_users(workspace: Workspace) -> None:
    other = await make_tenant(workspace.db, "globex", email="bobby@globex.example.com")
    assert other.user_id
    await _add_user(workspace.db, workspace.admin.tenant_id, "carol@acme.example.com", "Carol Bobson")
    status, body = await workspace.get("/ui/composer/people?q=bob")
    assert status == 200
    people = json.loads(body)["data"]
    # Bob by handle, Carol by last name; Globex's bobby never.
    assert sorted(p["handle"] for p in people) == ["bob.agent", "carol"]
    status, body = await workspace.get("/ui/composer/people")
    handles = {p["handle"]: p for p in json.loads(body)["data"]}
    assert set(handles) == {"ada.admin", "bob.agent", "carol"}
    assert handles["ada.admin"]["me"] is True


async def test_a_mention_in_a_note_lights_the_other_agents_bell(workspace: Workspace) -> None:
    note = "Can you check this? @Bob.Agent <script>alert(1)</script>"
    status, added = await workspace.api(
        "POST", f"/conversations/{workspace.sms_conversation}/notes", {"body": note}
    )
    assert status == 201, added
    assert added["private"] is True and added["notified_user_ids"] == [workspace.agent_id]
    async with workspace.db.sessionmaker() as session:
        outbound = (
            await session.execute(
                select(func.count()).select_from(OutboxEvent).where(OutboxEvent.topic == "message.outbound")
            )
        ).scalar_one()
    assert outbound == 0  # a note is never queued for the customer

    bob = await web_session(workspace.db, workspace.agent_id)
    status, listed = await workspace.api("GET", "/notifications?limit=1", web=bob)
    assert status == 200 and listed["unread_count"] == 1
    status, panel = await workspace.get("/ui/notifications", bob)
    assert status == 200
    assert "Ada" not in panel or "mentioned you" in panel
    assert "mentioned you" in panel
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in panel and "<script>alert" not in panel
    href = attribute(panel, "href")
    assert href == f"/inbox/c/{workspace.sms_conversation}#m{added['id']}"
    notification_id = attribute(panel, "data-notification-id")
    status, _ = await workspace.api("POST", f"/notifications/{notification_id}/read", web=bob)
    assert status == 200
    status, listed = await workspace.api("GET", "/notifications?limit=1", web=bob)
    assert listed["unread_count"] == 0
    # The author's own bell stays dark; their panel says so.
    status, panel = await workspace.get("/ui/notifications")
    assert "Nothing yet" in panel
