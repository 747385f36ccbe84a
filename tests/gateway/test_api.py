"""The REST API (/api/v1) on both databases: auth, tenancy, roles, validation, pagination, OpenAPI."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select, update

from crm_core.consent import record_consent
from crm_core.models import ChannelIdentity, Contact
from gateway.api import operations
from gateway.api.permissions import GRANTS, Permission
from gateway.app import create_app
from inbox.models import Conversation, ConversationStatus, Inbox, Message
from parley.crypto import SecretBox
from parley.db import Database, utcnow
from parley.models import ApiToken, OutboxEvent, Role
from parley.settings import Settings
from tests.conftest import SECRET_KEY, TenantAccess, eventually, make_tenant
from tests.fakes.twilio_api import FakeTwilioApi
from tests.gateway.test_privacy import PRIVACY_ROUTES
from tests.routing.test_tasks_api import TASK_ROUTES

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@dataclass
class Api:
    client: TestClient[Any, Any]
    db: Database
    settings: Settings
    fake: FakeTwilioApi
    admin: TenantAccess

    async def call(
        self,
        method: str,
        path: str,
        *,
        who: TenantAccess | None = None,
        body: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Send a request as `who` (the admin by default); return the status and the decoded JSON."""
        sent = dict((who or self.admin).headers if headers is None else headers)
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        async with self.client.request(
            method, f"/api/v1{path}", data=data, params=params, headers=sent
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    def twilio_config(self, name: str = "Support line") -> dict[str, Any]:
        return {
            "name": name,
            "channel": "twilio_sms",
            "settings": {
                "account_sid": self.fake.account_sid,
                "phone_number": "+15017122661",
                "api_base_url": self.fake.base_url,
            },
            "secrets": {"auth_token": self.fake.auth_token},
        }

    async def create_inbox(self, who: TenantAccess | None = None) -> int:
        status, inbox = await self.call("POST", "/inboxes", who=who, body=self.twilio_config())
        assert status == 201, inbox
        return int(inbox["id"])

    async def count(self, model: Any, *where: Any) -> int:
        async with self.db.sessionmaker() as session:
            stmt = select(func.count()).select_from(model).where(*where)
            return int((await session.execute(stmt)).scalar_one())

    async def events(self, topic: str) -> list[dict[str, Any]]:
        async with self.db.sessionmaker() as session:
            rows = await session.execute(
                select(OutboxEvent.payload).where(OutboxEvent.topic == topic).order_by(OutboxEvent.id)
            )
            return [dict(payload) for payload in rows.scalars()]


@pytest_asyncio.fixture
async def api(
    aiohttp_client: ClientFactory, db: Database, settings: Settings, fake_twilio: FakeTwilioApi
) -> AsyncIterator[Api]:
    admin = await make_tenant(db, "acme")
    client = await aiohttp_client(create_app(settings))
    yield Api(client, db, settings, fake_twilio, admin)


async def add_conversation(
    db: Database,
    tenant_id: int,
    inbox_id: int,
    phone: str,
    *,
    status: ConversationStatus = ConversationStatus.OPEN,
    assignee_id: int | None = None,
    contact_id: int | None = None,
) -> tuple[int, int]:
    """A contact reachable at `phone` (reused if given) and a conversation with them; returns both ids."""
    async with db.transaction() as session:
        if contact_id is None:
            contact = Contact(tenant_id=tenant_id, name=f"Customer {phone}", phone=phone, attributes={})
            session.add(contact)
            await session.flush()
            contact_id = contact.id
            identity = ChannelIdentity(
                tenant_id=tenant_id, contact_id=contact_id, kind="phone", address=phone
            )
            session.add(identity)
            await session.flush()
            identity_id = identity.id
        else:
            identity_id = (
                await session.execute(
                    select(ChannelIdentity.id).where(ChannelIdentity.contact_id == contact_id)
                )
            ).scalar_one()
        conversation = Conversation(
            tenant_id=tenant_id,
            inbox_id=inbox_id,
            contact_id=contact_id,
            identity_id=identity_id,
            status=status,
            assignee_id=assignee_id,
            resolved_at=utcnow() if status == ConversationStatus.RESOLVED else None,
        )
        session.add(conversation)
        await session.flush()
        return contact_id, conversation.id


# --- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer prl_not-a-real-token"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
    ],
    ids=["missing", "unknown", "basic", "empty"],
)
async def test_requests_without_a_valid_bearer_token_are_401(api: Api, headers: dict[str, str]) -> None:
    async with api.client.get("/api/v1/conversations", headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert (await response.json())["error"]["code"] == "unauthorized"


async def test_a_revoked_token_is_401(api: Api) -> None:
    assert (await api.call("GET", "/me"))[0] == 200
    async with api.db.transaction() as session:
        await session.execute(update(ApiToken).values(revoked_at=utcnow()))
    status, body = await api.call("GET", "/me")
    assert status == 401
    assert body["error"]["code"] == "unauthorized"


async def test_me_describes_the_principal(api: Api) -> None:
    status, me = await api.call("GET", "/me")
    assert status == 200
    assert me == {
        "user_id": api.admin.user_id,
        "email": "admin@acme.example.com",
        "name": None,
        "role": "admin",
        "presence": "offline",
        "tenant": {"id": api.admin.tenant_id, "name": "acme"},
    }


# --- inboxes ------------------------------------------------------------------------------------


async def test_creating_an_inbox_returns_the_webhook_urls_and_hides_the_secrets(api: Api) -> None:
    status, inbox = await api.call("POST", "/inboxes", body=api.twilio_config())
    assert status == 201, inbox
    inbox_id = inbox["id"]
    assert inbox["webhook_url"] == f"{api.settings.public_url}/webhooks/{inbox_id}"
    assert inbox["status_callback_url"] == f"{api.settings.public_url}/webhooks/{inbox_id}/status"
    assert inbox["secrets_set"] == ["auth_token"]
    assert inbox["settings"]["account_sid"] == api.fake.account_sid
    assert inbox["created_at"].endswith("Z")

    status, listed = await api.call("GET", "/inboxes")
    status_one, fetched = await api.call("GET", f"/inboxes/{inbox_id}")
    assert (status, status_one) == (200, 200)
    assert listed == {"data": [fetched], "next_cursor": None}
    for answer in (inbox, listed, fetched):
        assert api.fake.auth_token not in json.dumps(answer)

    async with api.db.sessionmaker() as session:
        row = (await session.execute(select(Inbox).where(Inbox.id == inbox_id))).scalar_one()
    assert api.fake.auth_token not in row.secrets_encrypted
    assert SecretBox(SECRET_KEY).open(row.secrets_encrypted) == {"auth_token": api.fake.auth_token}
    assert await api.events("inbox.created") == [{"inbox_id": inbox_id, "channel": "twilio_sms"}]


async def test_webhook_urls_follow_the_request_host_without_a_public_url(
    aiohttp_client: ClientFactory, db: Database, settings: Settings, fake_twilio: FakeTwilioApi
) -> None:
    admin = await make_tenant(db, "acme")
    client = await aiohttp_client(create_app(dataclasses.replace(settings, public_url=None)))
    api = Api(client, db, settings, fake_twilio, admin)
    status, inbox = await api.call("POST", "/inboxes", body=api.twilio_config())
    assert status == 201
    host = f"http://{client.host}:{client.port}"
    assert inbox["webhook_url"] == f"{host}/webhooks/{inbox['id']}"


async def test_invalid_channel_config_is_422_and_stores_nothing(api: Api) -> None:
    config = api.twilio_config()
    config["settings"]["account_sid"] = "not-a-sid"
    status, body = await api.call("POST", "/inboxes", body=config)
    assert status == 422
    assert body["error"]["code"] == "invalid_channel_config"
    assert "account_sid" in body["error"]["message"]

    config = api.twilio_config()
    del config["secrets"]
    status, body = await api.call("POST", "/inboxes", body=config)
    assert (status, body["error"]["code"]) == (422, "invalid_channel_config")
    assert "auth_token" in body["error"]["message"]

    assert await api.count(Inbox) == 0


async def test_request_validation_names_the_fields(api: Api) -> None:
    status, body = await api.call(
        "POST", "/inboxes", body={**api.twilio_config(), "channel": "carrier_pigeon"}
    )
    assert (status, body["error"]["code"]) == (422, "validation_error")
    assert "body.channel" in body["error"]["message"]
    assert "twilio_sms" in body["error"]["message"]

    config = api.twilio_config()
    del config["name"]
    status, body = await api.call("POST", "/inboxes", body={**config, "colour": "red"})
    assert status == 422
    assert {d["field"] for d in body["error"]["details"]} == {"body.name", "body.colour"}

    status, body = await api.call("POST", "/inboxes", body=b"{not json")
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    status, body = await api.call("POST", "/inboxes", body=b"")
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    status, body = await api.call("POST", "/inboxes", body=b"[1, 2]")
    assert (status, body["error"]["code"]) == (422, "validation_error")

    # PostgreSQL refuses NUL in text and JSONB: a 422, not a database error.
    status, body = await api.call("POST", "/contacts", body={"name": "Ann", "attributes": {"a\u0000": 1}})
    assert status == 422
    status, body = await api.call("PATCH", "/contacts/1", body={"attributes": {"note": ["ok", "bad\u0000"]}})
    assert (status, body["error"]["details"][0]["field"]) == (422, "body.attributes.note.1")
    status, body = await api.call("GET", "/contacts", params={"q": "a\u0000"})
    assert (status, body["error"]["details"][0]["field"]) == (422, "query.q")

    status, body = await api.call("GET", "/inboxes", params={"colour": "red"})
    assert (status, body["error"]["details"][0]["field"]) == (422, "query.colour")


async def test_patching_an_inbox_merges_and_revalidates_and_deleting_it_removes_its_webhook(api: Api) -> None:
    inbox_id = await api.create_inbox()
    status, inbox = await api.call(
        "PATCH",
        f"/inboxes/{inbox_id}",
        body={"name": "Sales line", "settings": {"phone_number": "+1 415 555 0123"}, "secrets": {"x": "y"}},
    )
    assert status == 200, inbox
    assert inbox["name"] == "Sales line"
    assert inbox["settings"]["phone_number"] == "+14155550123"
    assert inbox["settings"]["account_sid"] == api.fake.account_sid  # kept by the merge
    # Unknown secrets are dropped by the channel's validation; the auth token stays.
    assert inbox["secrets_set"] == ["auth_token"]
    assert (await api.events("inbox.updated"))[0]["changed"] == ["name", "settings"]

    status, body = await api.call("PATCH", f"/inboxes/{inbox_id}", body={"settings": {"phone_number": None}})
    assert (status, body["error"]["code"]) == (422, "invalid_channel_config")
    status, body = await api.call("PATCH", f"/inboxes/{inbox_id}", body={"channel": "other"})
    assert status == 422

    async with api.client.post(f"/webhooks/{inbox_id}", data={}) as response:
        assert response.status == 403  # exists: the unsigned request is refused
    status, _ = await api.call("DELETE", f"/inboxes/{inbox_id}")
    assert status == 204
    assert (await api.call("GET", f"/inboxes/{inbox_id}"))[0] == 404
    assert (await api.call("DELETE", f"/inboxes/{inbox_id}"))[0] == 404
    async with api.client.post(f"/webhooks/{inbox_id}", data={}) as response:
        assert response.status == 404  # the cached adapter was forgotten


async def test_non_numeric_or_huge_ids_are_404(api: Api) -> None:
    for path in (
        "/inboxes/abc",
        "/inboxes/0",
        f"/inboxes/{2**64}",
        "/conversations/1e3",
        "/contacts/-1",
        "/contacts/" + "9" * 5000,
    ):
        status, body = await api.call("GET", path)
        assert (status, body["error"]["code"]) == (404, "not_found"), path


# --- tenancy ------------------------------------------------------------------------------------


async def test_another_tenants_objects_are_404_and_cannot_be_written(api: Api) -> None:
    other = await make_tenant(api.db, "globex")
    other_inbox = await api.create_inbox(who=other)
    other_contact, other_conversation = await add_conversation(
        api.db, other.tenant_id, other_inbox, "+14155550100"
    )
    messages_before = await api.count(Message)

    for method, path, body in [
        ("GET", f"/inboxes/{other_inbox}", None),
        ("PATCH", f"/inboxes/{other_inbox}", {"name": "mine now"}),
        ("DELETE", f"/inboxes/{other_inbox}", None),
        ("GET", f"/contacts/{other_contact}", None),
        ("PATCH", f"/contacts/{other_contact}", {"name": "mine now"}),
        ("GET", f"/conversations/{other_conversation}", None),
        ("PATCH", f"/conversations/{other_conversation}", {"status": "resolved"}),
        ("GET", f"/conversations/{other_conversation}/messages", None),
        ("POST", f"/conversations/{other_conversation}/messages", {"body": "hello from acme"}),
    ]:
        status, answer = await api.call(method, path, body=body)
        assert (status, answer["error"]["code"]) == (404, "not_found"), (method, path)

    assert await api.count(Message) == messages_before
    for path in ("/inboxes", "/contacts", "/conversations"):
        status, page = await api.call("GET", path)
        assert (status, page["data"]) == (200, []), path
    status, page = await api.call("GET", "/conversations", params={"inbox_id": other_inbox})
    assert page["data"] == []
    # ...while the owner still sees everything unchanged.
    status, conversation = await api.call("GET", f"/conversations/{other_conversation}", who=other)
    assert (status, conversation["status"]) == (200, "open")


# --- roles --------------------------------------------------------------------------------------


def test_the_role_table_covers_every_role() -> None:
    assert set(GRANTS) == set(Role)
    assert GRANTS[Role.ADMIN] == frozenset(Permission)
    assert Permission.MANAGE_INBOXES not in GRANTS[Role.AGENT]
    assert Permission.MANAGE_CRM not in GRANTS[Role.AGENT]
    assert GRANTS[Role.BOT_DESIGNER] == {Permission.READ_CONTACTS, Permission.READ_CONVERSATIONS}
    assert GRANTS[Role.MARKETER] == {
        Permission.READ_CONTACTS,
        Permission.READ_CONVERSATIONS,
        Permission.READ_DEALS,
        Permission.MANAGE_SCORING,
        Permission.IMPORT_CONTACTS,  # marketers bring lead lists in (CSV import and export)
    }
    assert [r for r in Role if Permission.MANAGE_WEBHOOKS in GRANTS[r]] == [Role.ADMIN]


async def test_roles_limit_what_a_token_may_do(api: Api) -> None:
    agent = await make_tenant(api.db, "acme", role=Role.AGENT)
    marketer = await make_tenant(api.db, "acme", role=Role.MARKETER)
    bot_designer = await make_tenant(api.db, "acme", role=Role.BOT_DESIGNER)
    supervisor = await make_tenant(api.db, "acme", role=Role.SUPERVISOR)
    inbox_id = await api.create_inbox(who=supervisor)
    _, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")
    message = {"body": "Hi there"}

    forbidden = [
        (agent, "POST", "/inboxes", api.twilio_config()),
        (agent, "PATCH", f"/inboxes/{inbox_id}", {"name": "x"}),
        (agent, "DELETE", f"/inboxes/{inbox_id}", None),
        (marketer, "POST", f"/conversations/{conversation_id}/messages", message),
        (marketer, "PATCH", f"/conversations/{conversation_id}", {"status": "resolved"}),
        (marketer, "POST", "/contacts", {"name": "Ann"}),
        (marketer, "GET", "/inboxes", None),
        (bot_designer, "POST", f"/conversations/{conversation_id}/messages", message),
        (bot_designer, "POST", "/inboxes", api.twilio_config()),
    ]
    for who, method, path, body in forbidden:
        status, answer = await api.call(method, path, who=who, body=body)
        assert (status, answer["error"]["code"]) == (403, "forbidden"), (who, method, path)
    assert await api.count(Message) == 0

    allowed = [
        (agent, "GET", "/inboxes", None, 200),
        (agent, "GET", f"/inboxes/{inbox_id}", None, 200),
        (agent, "PATCH", f"/conversations/{conversation_id}", {"assignee_id": agent.user_id}, 200),
        (agent, "POST", f"/conversations/{conversation_id}/messages", message, 201),
        (agent, "POST", "/contacts", {"name": "Ann"}, 201),
        (marketer, "GET", "/contacts", None, 200),
        (marketer, "GET", f"/conversations/{conversation_id}", None, 200),
        (marketer, "GET", f"/conversations/{conversation_id}/messages", None, 200),
        (bot_designer, "GET", "/conversations", None, 200),
        (bot_designer, "GET", "/me", None, 200),
    ]
    for who, method, path, body, expected in allowed:
        status, answer = await api.call(method, path, who=who, body=body)
        assert status == expected, (who, method, path, answer)


# --- conversations ------------------------------------------------------------------------------


async def test_conversation_list_filters_and_pages_without_gaps_or_overlap(api: Api) -> None:
    agent = await make_tenant(api.db, "acme", role=Role.AGENT)
    inbox_a = await api.create_inbox()
    inbox_b = await api.create_inbox()
    ids = []
    for i in range(7):
        state = ConversationStatus.RESOLVED if i % 3 == 0 else ConversationStatus.OPEN
        _, conversation_id = await add_conversation(
            api.db,
            api.admin.tenant_id,
            inbox_a if i < 5 else inbox_b,
            f"+1415555{i:04d}",
            status=state,
            assignee_id=agent.user_id if i % 2 else None,
        )
        ids.append(conversation_id)

    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        status, page = await api.call("GET", "/conversations", params=params)
        assert status == 200
        pages += 1
        seen += [c["id"] for c in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(ids, reverse=True)  # newest first, each exactly once

    async def filtered(**params: Any) -> list[int]:
        status, page = await api.call("GET", "/conversations", params=params)
        assert status == 200, page
        return [c["id"] for c in page["data"]]

    newest_first = sorted(ids, reverse=True)
    assert await filtered(status="resolved") == [i for n, i in enumerate(ids) if n % 3 == 0][::-1]
    assert await filtered(assignee_id="none") == [i for n, i in enumerate(ids) if n % 2 == 0][::-1]
    assert await filtered(assignee_id=agent.user_id) == [i for n, i in enumerate(ids) if n % 2][::-1]
    assert await filtered(inbox_id=inbox_b) == newest_first[:2]
    assert await filtered(inbox_id=inbox_a, status="open", assignee_id=agent.user_id) == [ids[1]]
    status, first = await api.call("GET", f"/conversations/{ids[0]}")
    assert await filtered(contact_id=first["contact_id"]) == [ids[0]]

    for params in ({"limit": 0}, {"limit": 201}, {"status": "closed"}, {"assignee_id": "nobody"}):
        status, body = await api.call("GET", "/conversations", params=params)
        assert (status, body["error"]["code"]) == (422, "validation_error"), params
    for cursor in ("garbage", "!!", "YTE", "ZA"):  # YTE: an ascending cursor
        status, body = await api.call("GET", "/conversations", params={"cursor": cursor})
        assert (status, body["error"]["code"]) == (400, "invalid_cursor"), cursor


async def test_conversation_detail_includes_the_contact_and_the_last_message(api: Api) -> None:
    inbox_id = await api.create_inbox()
    contact_id, conversation_id = await add_conversation(
        api.db, api.admin.tenant_id, inbox_id, "+14155550100"
    )
    status, detail = await api.call("GET", f"/conversations/{conversation_id}")
    assert status == 200
    assert detail["contact"] == {
        "id": contact_id,
        "name": "Customer +14155550100",
        "email": None,
        "phone": "+14155550100",
    }
    assert detail["last_message"] is None
    await api.call("POST", f"/conversations/{conversation_id}/messages", body={"body": "first"})
    await api.call("POST", f"/conversations/{conversation_id}/messages", body={"body": "second"})
    status, detail = await api.call("GET", f"/conversations/{conversation_id}")
    assert detail["last_message"]["body"] == "second"


async def test_patching_status_and_assignee_writes_a_conversation_updated_event(api: Api) -> None:
    agent = await make_tenant(api.db, "acme", role=Role.AGENT)
    stranger = await make_tenant(api.db, "globex")
    inbox_id = await api.create_inbox()
    _, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")
    path = f"/conversations/{conversation_id}"

    status, conversation = await api.call(
        "PATCH", path, body={"status": "resolved", "assignee_id": agent.user_id}
    )
    assert status == 200, conversation
    assert conversation["status"] == "resolved"
    assert conversation["resolved_at"] is not None
    assert conversation["assignee_id"] == agent.user_id
    [event] = await api.events("conversation.updated")
    assert event["conversation_id"] == conversation_id
    assert event["changes"] == {
        "status": {"old": "open", "new": "resolved"},
        "assignee_id": {"old": None, "new": agent.user_id},
    }
    assert event["changed_by"] == {"type": "user", "id": api.admin.user_id}

    status, conversation = await api.call("PATCH", path, body={"status": "open", "assignee_id": None})
    assert status == 200
    assert (conversation["status"], conversation["resolved_at"], conversation["assignee_id"]) == (
        "open",
        None,
        None,
    )

    # Nothing changes, nothing is announced.
    status, _ = await api.call("PATCH", path, body={"status": "open"})
    assert status == 200
    assert len(await api.events("conversation.updated")) == 2

    status, body = await api.call("PATCH", path, body={"assignee_id": stranger.user_id})
    assert (status, body["error"]["code"]) == (422, "invalid_assignee")
    status, body = await api.call("PATCH", path, body={"status": None})
    assert (status, body["error"]["details"][0]["field"]) == (422, "body.status")
    status, body = await api.call("PATCH", path, body={"status": "closed"})
    assert status == 422
    assert len(await api.events("conversation.updated")) == 2


async def test_reopening_while_another_conversation_is_open_is_a_conflict(api: Api) -> None:
    inbox_id = await api.create_inbox()
    contact_id, old = await add_conversation(
        api.db, api.admin.tenant_id, inbox_id, "+14155550100", status=ConversationStatus.RESOLVED
    )
    _, current = await add_conversation(
        api.db, api.admin.tenant_id, inbox_id, "+14155550100", contact_id=contact_id
    )

    status, body = await api.call("PATCH", f"/conversations/{old}", body={"status": "open"})
    assert (status, body["error"]["code"]) == (409, "conflict")
    assert str(current) in body["error"]["message"]
    status, body = await api.call("POST", f"/conversations/{old}/messages", body={"body": "hello again"})
    assert (status, body["error"]["code"]) == (409, "conflict")
    assert await api.count(Message) == 0
    assert await api.events("conversation.updated") == []

    status, _ = await api.call("PATCH", f"/conversations/{current}", body={"status": "resolved"})
    status, conversation = await api.call("PATCH", f"/conversations/{old}", body={"status": "pending"})
    assert (status, conversation["status"], conversation["resolved_at"]) == (200, "pending", None)


async def test_concurrent_reopens_of_the_same_contacts_conversations_let_one_win(api: Api) -> None:
    inbox_id = await api.create_inbox()
    contact_id, first = await add_conversation(
        api.db, api.admin.tenant_id, inbox_id, "+14155550100", status=ConversationStatus.RESOLVED
    )
    _, second = await add_conversation(
        api.db,
        api.admin.tenant_id,
        inbox_id,
        "+14155550100",
        status=ConversationStatus.RESOLVED,
        contact_id=contact_id,
    )
    supervisor = await make_tenant(api.db, "acme", role=Role.SUPERVISOR)
    # Two users, so the token checks do not queue the requests behind one another's row lock: both
    # may pass the pre-check, and then the unique partial index decides; the loser gets a 409.
    answers = await asyncio.gather(
        api.call("PATCH", f"/conversations/{first}", body={"status": "open"}),
        api.call("PATCH", f"/conversations/{second}", who=supervisor, body={"status": "open"}),
    )
    assert sorted(status for status, _ in answers) == [200, 409]
    assert [body["error"]["code"] for status, body in answers if status == 409] == ["conflict"]
    assert len(await api.events("conversation.updated")) == 1


# --- messages -----------------------------------------------------------------------------------


async def test_posting_a_message_queues_it_and_the_dispatcher_sends_it(api: Api) -> None:
    inbox_id = await api.create_inbox()
    _, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")

    status, message = await api.call(
        "POST",
        f"/conversations/{conversation_id}/messages",
        body={
            "body": "Your order shipped",
            "attachments": [{"url": "https://cdn.example.com/label.png", "content_type": "image/png"}],
        },
    )
    assert status == 201, message
    assert message["status"] == "queued"
    assert (message["direction"], message["sender_type"], message["sender_id"]) == (
        "outbound",
        "user",
        api.admin.user_id,
    )
    assert message["attachments"] == [
        {
            "url": "https://cdn.example.com/label.png",
            "content_type": "image/png",
            "filename": None,
            "size": None,
            "error": None,
        }
    ]
    assert await api.events("message.outbound") == [
        {"message_id": message["id"], "conversation_id": conversation_id, "inbox_id": inbox_id}
    ]
    # The commit woke the dispatcher, which handed the message to (fake) Twilio.
    await eventually(lambda: len(api.fake.messages) == 1)
    [sent] = api.fake.messages.values()
    assert (sent["to"], sent["body"]) == ("+14155550100", "Your order shipped")

    async def listed() -> dict[str, Any]:
        path = f"/conversations/{conversation_id}/messages"
        _, page = await api.call("GET", path, params={"order": "desc"})
        return dict(page["data"][0])

    for _ in range(100):  # the provider's id lands with the "sent" status, just after the fake answered
        latest = await listed()
        if latest["status"] == "sent":
            break
        await asyncio.sleep(0.05)
    assert (latest["status"], latest["provider_message_id"]) == ("sent", sent["sid"])


async def test_messages_list_oldest_first_by_default_with_keyset_pages(api: Api) -> None:
    inbox_id = await api.create_inbox()
    _, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")
    path = f"/conversations/{conversation_id}/messages"
    for i in range(5):
        assert (await api.call("POST", path, body={"body": f"message {i}"}))[0] == 201

    async def read_all(order: str | None) -> list[str]:
        bodies: list[str] = []
        params: dict[str, Any] = {"limit": 2} | ({"order": order} if order else {})
        while True:
            status, page = await api.call("GET", path, params=params)
            assert status == 200, page
            bodies += [m["body"] for m in page["data"]]
            if page["next_cursor"] is None:
                return bodies
            params["cursor"] = page["next_cursor"]

    expected = [f"message {i}" for i in range(5)]
    assert await read_all(None) == expected
    assert await read_all("asc") == expected
    assert await read_all("desc") == expected[::-1]

    _, page = await api.call("GET", path, params={"limit": 2, "order": "desc"})
    status, body = await api.call("GET", path, params={"cursor": page["next_cursor"]})
    assert (status, body["error"]["code"]) == (400, "invalid_cursor")  # a desc cursor used ascending


async def test_a_contact_who_opted_out_cannot_be_messaged_and_nothing_is_stored(api: Api) -> None:
    inbox_id = await api.create_inbox()
    contact_id, conversation_id = await add_conversation(
        api.db, api.admin.tenant_id, inbox_id, "+14155550100"
    )
    async with api.db.transaction() as session:
        await record_consent(
            session,
            tenant_id=api.admin.tenant_id,
            contact_id=contact_id,
            channel="sms",
            granted=False,
            source="keyword:STOP",
        )

    status, body = await api.call(
        "POST", f"/conversations/{conversation_id}/messages", body={"body": "Sale!"}
    )
    assert (status, body["error"]["code"]) == (422, "recipient_opted_out")
    assert "opted out of sms" in body["error"]["message"]
    assert await api.count(Message) == 0
    assert await api.events("message.outbound") == []

    status, contact = await api.call("GET", f"/contacts/{contact_id}")
    assert contact["consents"] == [
        {
            "channel": "sms",
            "purpose": "all",
            "granted": False,
            "source": "keyword:STOP",
            "changed_at": contact["consents"][0]["changed_at"],
        }
    ]


async def test_replying_to_a_resolved_conversation_reopens_it(api: Api) -> None:
    inbox_id = await api.create_inbox()
    _, conversation_id = await add_conversation(
        api.db, api.admin.tenant_id, inbox_id, "+14155550100", status=ConversationStatus.RESOLVED
    )
    status, _ = await api.call(
        "POST", f"/conversations/{conversation_id}/messages", body={"body": "One more thing"}
    )
    assert status == 201
    status, conversation = await api.call("GET", f"/conversations/{conversation_id}")
    assert (conversation["status"], conversation["resolved_at"]) == ("open", None)
    assert conversation["last_message_at"] is not None
    [event] = await api.events("conversation.updated")
    assert event["changes"] == {"status": {"old": "resolved", "new": "open"}}


async def test_message_bodies_are_validated(api: Api) -> None:
    inbox_id = await api.create_inbox()
    _, conversation_id = await add_conversation(api.db, api.admin.tenant_id, inbox_id, "+14155550100")
    path = f"/conversations/{conversation_id}/messages"
    for body, field in [
        ({}, "body"),
        ({"body": "   "}, "body"),
        ({"body": "x" * 4097}, "body.body"),
        ({"body": "hi", "attachments": [{"url": "ftp://example.com/a"}]}, "body.attachments.0.url"),
        ({"body": "hi", "sender": "me"}, "body.sender"),
    ]:
        status, answer = await api.call("POST", path, body=body)
        assert (status, answer["error"]["code"]) == (422, "validation_error"), body
        assert answer["error"]["details"][0]["field"] == field
    # Twilio carries at most 1600 characters.
    status, answer = await api.call("POST", path, body={"body": "x" * 1601})
    assert (status, answer["error"]["code"]) == (422, "message_too_long")
    assert await api.count(Message) == 0
    status, _ = await api.call("POST", path, body={"attachments": [{"url": "https://example.com/a.jpg"}]})
    assert status == 201


# --- contacts -----------------------------------------------------------------------------------


async def test_contacts_are_created_with_e164_phones_and_identities(api: Api) -> None:
    status, contact = await api.call(
        "POST",
        "/contacts",
        body={"name": " Ann Lee ", "email": "Ann@Example.com", "phone": "+1 (415) 555-0123"},
    )
    assert status == 201, contact
    assert (contact["name"], contact["email"], contact["phone"]) == (
        "Ann Lee",
        "ann@example.com",
        "+14155550123",
    )
    status, detail = await api.call("GET", f"/contacts/{contact['id']}")
    assert status == 200
    assert [(i["kind"], i["address"]) for i in detail["identities"]] == [
        ("phone", "+14155550123"),
        ("email", "ann@example.com"),
    ]
    assert detail["consents"] == []

    for body, field in [
        ({"phone": "555-0123"}, "body.phone"),
        ({"phone": "+1 000 000 0000"}, "body.phone"),
        ({"email": "not-an-email"}, "body.email"),
        ({"email": "ann..lee@example.com"}, "body.email"),  # shapes a regex lets through
        ({"email": "ann@example"}, "body.email"),
        ({"name": ""}, "body.name"),
        ({}, "body"),
    ]:
        status, answer = await api.call("POST", "/contacts", body=body)
        assert (status, answer["error"]["details"][0]["field"]) == (422, field), body

    status, answer = await api.call("POST", "/contacts", body={"name": "Impostor", "phone": "+14155550123"})
    assert (status, answer["error"]["code"]) == (409, "conflict")
    assert await api.count(Contact) == 1


async def test_contacts_search_and_patch(api: Api) -> None:
    ids = {}
    for name, email, phone in [
        ("Ann Lee", "ann@example.com", "+14155550101"),
        ("Bob 100% Real", "bob@example.org", "+14155550102"),
        ("Carla", None, "+442079460958"),
    ]:
        status, contact = await api.call(
            "POST", "/contacts", body={"name": name, "email": email, "phone": phone}
        )
        assert status == 201
        ids[name] = contact["id"]

    async def search(**params: Any) -> list[int]:
        status, page = await api.call("GET", "/contacts", params=params)
        assert status == 200, page
        return [c["id"] for c in page["data"]]

    assert await search(q="ann") == [ids["Ann Lee"]]
    assert await search(q="EXAMPLE") == [ids["Bob 100% Real"], ids["Ann Lee"]]
    assert await search(q="100%") == [ids["Bob 100% Real"]]
    assert await search(q="%") == [ids["Bob 100% Real"]]  # a literal %, not a wildcard
    assert await search(q="2079") == [ids["Carla"]]
    assert await search(phone="+44 20 7946 0958") == [ids["Carla"]]
    assert await search(phone="+14155550101") == [ids["Ann Lee"]]
    status, body = await api.call("GET", "/contacts", params={"phone": "12"})
    assert status == 422

    path = f"/contacts/{ids['Carla']}"
    status, contact = await api.call("PATCH", path, body={"attributes": {"plan": "gold", "seats": 3}})
    assert status == 200
    status, contact = await api.call(
        "PATCH",
        path,
        body={"name": "Carla Diaz", "email": "carla@example.com", "attributes": {"seats": None}},
    )
    assert status == 200, contact
    assert (contact["name"], contact["email"], contact["attributes"]) == (
        "Carla Diaz",
        "carla@example.com",
        {"plan": "gold"},
    )
    status, detail = await api.call("GET", path)
    assert ("email", "carla@example.com") in [(i["kind"], i["address"]) for i in detail["identities"]]
    status, body = await api.call("PATCH", path, body={"email": "ann@example.com"})
    assert (status, body["error"]["code"]) == (409, "conflict")
    status, body = await api.call("PATCH", path, body={"phone": "12"})
    assert (status, body["error"]["details"][0]["field"]) == (422, "body.phone")
    assert [e["changed"] for e in await api.events("contact.updated")] == [
        ["attributes"],
        ["name", "email", "attributes"],
    ]
    # A new phone (national numbers read in `region`) is stored as E.164 and becomes an identity.
    status, body = await api.call("PATCH", path, body={"phone": "020 7946 0111", "region": "GB"})
    assert (status, body["phone"]) == (200, "+442079460111"), body
    status, detail = await api.call("GET", path)
    assert ("phone", "+442079460111") in [(i["kind"], i["address"]) for i in detail["identities"]]


# --- the OpenAPI document -----------------------------------------------------------------------

# The CRM's routes (tests/gateway/test_crm_api.py).
CRM_ROUTES = {
    ("get", "/api/v1/contacts/duplicates"),
    ("post", "/api/v1/contacts/{contact_id}/identities"),
    ("get", "/api/v1/contacts/{contact_id}/duplicates"),
    ("post", "/api/v1/contacts/{contact_id}/merge/preview"),
    ("post", "/api/v1/contacts/{contact_id}/merge"),
    ("get", "/api/v1/contacts/{contact_id}/merges"),
    ("get", "/api/v1/contacts/{contact_id}/lifecycle"),
    ("get", "/api/v1/contacts/{contact_id}/score"),
    ("get", "/api/v1/companies"),
    ("post", "/api/v1/companies"),
    ("get", "/api/v1/companies/{company_id}"),
    ("patch", "/api/v1/companies/{company_id}"),
    ("delete", "/api/v1/companies/{company_id}"),
    ("get", "/api/v1/pipelines"),
    ("post", "/api/v1/pipelines"),
    ("get", "/api/v1/pipelines/{pipeline_id}"),
    ("patch", "/api/v1/pipelines/{pipeline_id}"),
    ("delete", "/api/v1/pipelines/{pipeline_id}"),
    ("post", "/api/v1/pipelines/{pipeline_id}/stages"),
    ("patch", "/api/v1/stages/{stage_id}"),
    ("delete", "/api/v1/stages/{stage_id}"),
    ("get", "/api/v1/pipelines/{pipeline_id}/board"),
    ("get", "/api/v1/deals"),
    ("post", "/api/v1/deals"),
    ("post", "/api/v1/conversations/{conversation_id}/deals"),
    ("get", "/api/v1/deals/forecast"),
    ("get", "/api/v1/deals/{deal_id}"),
    ("patch", "/api/v1/deals/{deal_id}"),
    ("post", "/api/v1/deals/{deal_id}/move"),
    ("delete", "/api/v1/deals/{deal_id}"),
    ("get", "/api/v1/crm/settings"),
    ("patch", "/api/v1/crm/settings"),
    ("get", "/api/v1/crm/attributes"),
    ("post", "/api/v1/crm/attributes"),
    ("patch", "/api/v1/crm/attributes/{attribute_id}"),
    ("delete", "/api/v1/crm/attributes/{attribute_id}"),
    ("get", "/api/v1/crm/scoring-rules"),
    ("post", "/api/v1/crm/scoring-rules"),
    ("patch", "/api/v1/crm/scoring-rules/{rule_id}"),
    ("delete", "/api/v1/crm/scoring-rules/{rule_id}"),
    ("get", "/api/v1/users"),
    ("post", "/api/v1/users"),
    ("get", "/api/v1/users/{user_id}"),
    ("patch", "/api/v1/users/{user_id}"),
}

# The conversation actions' routes (tests/gateway/test_conversation_actions_api.py).
ACTION_ROUTES = {
    ("get", "/api/v1/labels"),
    ("post", "/api/v1/labels"),
    ("get", "/api/v1/labels/{label_id}"),
    ("patch", "/api/v1/labels/{label_id}"),
    ("delete", "/api/v1/labels/{label_id}"),
    ("put", "/api/v1/conversations/{conversation_id}/labels"),
    ("post", "/api/v1/conversations/{conversation_id}/merge"),
    ("post", "/api/v1/conversations/{conversation_id}/read"),
    ("post", "/api/v1/conversations/{conversation_id}/unread"),
    ("get", "/api/v1/conversations/counts"),
}


TICKET_ROUTES = {
    ("get", "/api/v1/tickets"),
    ("post", "/api/v1/tickets"),
    ("get", "/api/v1/tickets/{ticket_id}"),
    ("patch", "/api/v1/tickets/{ticket_id}"),
    ("delete", "/api/v1/tickets/{ticket_id}"),
    ("post", "/api/v1/tickets/{ticket_id}/status"),
    ("get", "/api/v1/tickets/{ticket_id}/history"),
    ("post", "/api/v1/tickets/{ticket_id}/conversations"),
    ("delete", "/api/v1/tickets/{ticket_id}/conversations/{conversation_id}"),
    ("post", "/api/v1/conversations/{conversation_id}/tickets"),
    ("get", "/api/v1/csat/settings"),
    ("put", "/api/v1/csat/settings"),
    ("get", "/api/v1/reports/csat"),
}
WEBHOOK_AND_CSV_ROUTES = {
    ("get", "/api/v1/webhooks/event-types"),
    ("get", "/api/v1/webhooks"),
    ("post", "/api/v1/webhooks"),
    ("get", "/api/v1/webhooks/{webhook_id}"),
    ("patch", "/api/v1/webhooks/{webhook_id}"),
    ("delete", "/api/v1/webhooks/{webhook_id}"),
    ("get", "/api/v1/webhooks/{webhook_id}/deliveries"),
    ("get", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}"),
    ("post", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"),
    ("post", "/api/v1/webhooks/{webhook_id}/test"),
    ("get", "/api/v1/contacts/imports"),
    ("post", "/api/v1/contacts/imports"),
    ("get", "/api/v1/contacts/imports/{import_id}"),
    ("post", "/api/v1/contacts/imports/{import_id}/start"),
    ("get", "/api/v1/contacts/imports/{import_id}/errors.csv"),
    ("get", "/api/v1/contacts/export.csv"),
}
# Plain aiohttp handlers (raw CSV in or out), documented by hand rather than declared.
RAW_CSV_ROUTES = 3

COMPOSER_ROUTES = {
    ("post", "/api/v1/conversations/{conversation_id}/notes"),
    ("get", "/api/v1/notifications"),
    ("post", "/api/v1/notifications/{notification_id}/read"),
    ("post", "/api/v1/notifications/read-all"),
    ("get", "/api/v1/canned-responses"),
    ("post", "/api/v1/canned-responses"),
    ("get", "/api/v1/canned-responses/{canned_response_id}"),
    ("patch", "/api/v1/canned-responses/{canned_response_id}"),
    ("delete", "/api/v1/canned-responses/{canned_response_id}"),
    ("post", "/api/v1/conversations/{conversation_id}/canned-responses/{canned_response_id}/render"),
    ("get", "/api/v1/conversations/{conversation_id}/reply-options"),
    ("post", "/api/v1/conversations/{conversation_id}/transcript"),
}


async def test_openapi_document_lists_every_route_and_validates(api: Api) -> None:
    async with api.client.get("/api/v1/openapi.json") as response:  # no token needed
        assert response.status == 200
        document = await response.json()

    served = {
        (route.method.lower(), route.resource.canonical)
        for route in api.client.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/api/v1")
        and route.method != "HEAD"
    }
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert served <= documented
    assert (
        {
            ("get", "/api/v1/inboxes"),
            ("post", "/api/v1/inboxes"),
            ("get", "/api/v1/inboxes/{inbox_id}"),
            ("patch", "/api/v1/inboxes/{inbox_id}"),
            ("delete", "/api/v1/inboxes/{inbox_id}"),
            ("get", "/api/v1/contacts"),
            ("post", "/api/v1/contacts"),
            ("get", "/api/v1/contacts/{contact_id}"),
            ("patch", "/api/v1/contacts/{contact_id}"),
            ("get", "/api/v1/conversations"),
            ("get", "/api/v1/conversations/{conversation_id}"),
            ("patch", "/api/v1/conversations/{conversation_id}"),
            ("get", "/api/v1/conversations/{conversation_id}/messages"),
            ("post", "/api/v1/conversations/{conversation_id}/messages"),
            ("post", "/api/v1/conversations/{conversation_id}/typing"),
            ("get", "/api/v1/me"),
            ("put", "/api/v1/me/presence"),
            ("get", "/api/v1/teams"),
            ("post", "/api/v1/teams"),
            ("delete", "/api/v1/teams/{team_id}"),
            ("put", "/api/v1/teams/{team_id}/members/{user_id}"),
            ("delete", "/api/v1/teams/{team_id}/members/{user_id}"),
            ("get", "/api/v1/teams/{team_id}/routing"),
            ("put", "/api/v1/teams/{team_id}/routing"),
            ("get", "/api/v1/agents/{user_id}/profile"),
            ("put", "/api/v1/agents/{user_id}/profile"),
            ("get", "/api/v1/inboxes/{inbox_id}/routing"),
            ("put", "/api/v1/inboxes/{inbox_id}/routing"),
            ("put", "/api/v1/conversations/{conversation_id}/routing"),
            ("post", "/api/v1/conversations/{conversation_id}/assignment"),
            ("get", "/api/v1/conversations/{conversation_id}/queue"),
            ("get", "/api/v1/queue"),
            ("get", "/api/v1/search"),
            ("get", "/api/v1/sla/calendars"),
            ("post", "/api/v1/sla/calendars"),
            ("get", "/api/v1/sla/calendars/{calendar_id}"),
            ("put", "/api/v1/sla/calendars/{calendar_id}"),
            ("delete", "/api/v1/sla/calendars/{calendar_id}"),
            ("get", "/api/v1/sla/policies"),
            ("post", "/api/v1/sla/policies"),
            ("get", "/api/v1/sla/policies/{policy_id}"),
            ("put", "/api/v1/sla/policies/{policy_id}"),
            ("delete", "/api/v1/sla/policies/{policy_id}"),
            ("get", "/api/v1/conversations/{conversation_id}/sla"),
            ("get", "/api/v1/contacts/{contact_id}/timeline"),
            ("get", "/api/v1/companies/{company_id}/timeline"),
            ("get", "/api/v1/priority-scoring"),
            ("put", "/api/v1/priority-scoring"),
            ("post", "/api/v1/conversations/{conversation_id}/priority/dry-run"),
            ("get", "/api/v1/openapi.json"),
            ("post", "/webhooks/{inbox_id}"),
            ("post", "/webhooks/{inbox_id}/status"),
        }
        | CRM_ROUTES
        | ACTION_ROUTES
        | COMPOSER_ROUTES
        | TASK_ROUTES
        | TICKET_ROUTES
        | WEBHOOK_AND_CSV_ROUTES
        | PRIVACY_ROUTES
        == documented
    )
    # Everything but the document itself and the raw CSV routes is declared once.
    assert len(operations()) == len(served) - 1 - RAW_CSV_ROUTES

    schemas = document["components"]["schemas"]
    for op in operations():
        operation = document["paths"][op.full_path][op.method.lower()]
        if op.body_model is not None:
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            assert ref == f"#/components/schemas/{op.body_model.__name__}"
            assert schemas[op.body_model.__name__]["additionalProperties"] is False
        if op.response_model is not None:
            assert str(op.status) in operation["responses"]
        assert "401" in operation["responses"]
    assert {
        "InboxCreate",
        "InboxUpdate",
        "ContactCreate",
        "ContactUpdate",
        "ConversationUpdate",
        "MessageCreate",
        "ErrorResponse",
        "ConversationStatus",
    } <= set(schemas)
    listing = document["paths"]["/api/v1/conversations"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {
        "limit",
        "cursor",
        "status",
        "inbox_id",
        "assignee_id",
        "contact_id",
        "view",
        "channel",
        "team_id",
        "label",
        "priority",
        "sort",
    }
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (`prl_…`).",
    }
    assert document["security"] == [{"bearerAuth": []}]
    assert document["paths"]["/webhooks/{inbox_id}"]["post"]["security"] == []
    refs = {m for m in json.dumps(document).split('"') if m.startswith("#/components/")}
    for ref in refs:
        kind, name = ref.split("/")[2:]
        assert name in document["components"][kind], ref

    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(document)


async def test_unknown_api_paths_and_methods_answer_json_errors(api: Api) -> None:
    status, body = await api.call("GET", "/nothing-here")
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = await api.call("PUT", "/inboxes")
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")
