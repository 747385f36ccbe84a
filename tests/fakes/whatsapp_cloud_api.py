"""A local stand-in for Meta's Graph API (WhatsApp Cloud API), speaking its wire format, plus webhook helpers.

Point the adapter at it (`api_base_url` = `FakeWhatsAppCloudApi.base_url`) so its request building,
bearer auth and Graph error handling run in the tests. Like Meta, the fake can also call Parley:
the GET verification of a callback URL and signed status webhooks for the messages it accepted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

import aiohttp
import pytest_asyncio
from aiohttp import web

from tests.fakes.server import serve_on_loopback

DEFAULT_WABA_ID = "102290129340398"
DEFAULT_PHONE_NUMBER_ID = "106540352242922"
DEFAULT_DISPLAY_PHONE_NUMBER = "15550783881"
DEFAULT_ACCESS_TOKEN = "EAAJB-fake-system-user-access-token-0123456789"
DEFAULT_APP_SECRET = "fake-meta-app-secret-0123456789abcdef"
DEFAULT_VERIFY_TOKEN = "parley-meta-verify-token"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "whatsapp_cloud"

_MEDIA_TYPES = ("image", "video", "audio", "document", "sticker")
_CAPTIONED = ("image", "video", "document")
_TYPES = frozenset({*_MEDIA_TYPES, "text", "interactive", "template", "location", "contacts", "reaction"})


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    code: int
    message: str
    details: str | None
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class _Media:
    data: bytes
    mime_type: str
    report_size: bool


class PostResult(NamedTuple):
    status: int
    text: str
    content_type: str


class FakeWhatsAppCloudApi:
    """`POST /{version}/{phone_number_id}/messages` and the media endpoints, on 127.0.0.1."""

    def __init__(
        self,
        *,
        phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
        display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER,
        waba_id: str = DEFAULT_WABA_ID,
        access_token: str = DEFAULT_ACCESS_TOKEN,
        app_secret: str = DEFAULT_APP_SECRET,
        verify_token: str = DEFAULT_VERIFY_TOKEN,
    ) -> None:
        self.phone_number_id = phone_number_id
        self.display_phone_number = display_phone_number
        self.waba_id = waba_id
        self.access_token = access_token
        self.app_secret = app_secret
        self.verify_token = verify_token
        self.base_url = ""
        self.webhook_url: str | None = None
        # Every body POSTed to /messages, accepted or not, in order.
        self.requests: list[Any] = []
        # Accepted messages by wamid.
        self.messages: dict[str, dict[str, Any]] = {}
        self.media: dict[str, _Media] = {}
        self.media_requests: list[str] = []
        self._failures: list[_Failure] = []
        self._delays: list[float] = []
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> str:
        """Serve on a random port; returns the base URL to use as `api_base_url`."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/whatsapp_business/attachments/", self._media_bytes)
        app.router.add_post(r"/{version:v\d+\.\d+}/{phone_number_id}/messages", self._send_message)
        app.router.add_get(r"/{version:v\d+\.\d+}/{media_id}", self._media_info)
        self._stopping = asyncio.Event()
        self._runner, self.base_url = await serve_on_loopback(app)
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()  # releases requests held by delay_next()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def fail_next(
        self,
        status: int,
        code: int,
        message: str,
        retry_after: float | None = None,
        *,
        details: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` sends with a Graph error (and Retry-After if given)."""
        self._failures.extend([_Failure(status, code, message, details, retry_after)] * times)

    def delay_next(self, seconds: float) -> None:
        """Hold the next send for `seconds` before answering (timeout tests)."""
        self._delays.append(seconds)

    def add_media(self, data: bytes, mime_type: str, *, report_size: bool = True) -> str:
        """Store a file a customer "sent"; returns its media id. Without `report_size`, no size is told."""
        media_id = str(secrets.randbelow(10**15) + 10**15)
        self.media[media_id] = _Media(data, mime_type, report_size)
        return media_id

    def subscribe(self, url: str) -> None:
        """The callback URL Meta posts webhooks to, as set in the app's WhatsApp configuration."""
        self.webhook_url = url

    async def verify_webhook(
        self, url: str | None = None, *, verify_token: str | None = None, challenge: str | None = None
    ) -> tuple[int, str, str]:
        """Meta's GET when a callback URL is saved: returns Parley's status, body and content type."""
        target = url or self._subscribed()
        query = {
            "hub.mode": "subscribe",
            "hub.challenge": challenge or str(secrets.randbelow(10**9)),
            "hub.verify_token": self.verify_token if verify_token is None else verify_token,
        }
        async with self._client().get(f"{target}?{urlencode(query)}") as response:
            return response.status, await response.text(), response.content_type

    async def send_status(
        self,
        wamid: str,
        status: str,
        *,
        error_code: int | None = None,
        error_title: str = "",
        details: str = "",
    ) -> int:
        """POST a signed status webhook for an accepted message; returns the HTTP status Parley answered."""
        sent = self.messages[wamid]
        entry: dict[str, Any] = {
            "id": wamid,
            "status": status,
            "timestamp": str(int(time.time())),
            "recipient_id": sent["wa_id"],
        }
        if status in ("sent", "delivered"):
            entry["pricing"] = {
                "billable": True,
                "pricing_model": "PMP",
                "type": "regular",
                "category": "service",
            }
        if error_code is not None:
            entry["errors"] = [
                {
                    "code": error_code,
                    "title": error_title,
                    "message": error_title,
                    "error_data": {"details": details},
                    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
                }
            ]
        sent["status"] = status
        payload = webhook_payload(
            {"statuses": [entry]},
            phone_number_id=self.phone_number_id,
            display_phone_number=self.display_phone_number,
            waba_id=self.waba_id,
        )
        return (await self.deliver(payload)).status

    async def deliver(
        self, payload: Mapping[str, Any] | bytes, *, signature: str | None = None
    ) -> PostResult:
        """POST a webhook to the subscribed URL, signed with the app secret as Meta signs it."""
        return await post_webhook(
            self._client(), self._subscribed(), payload, self.app_secret, signature=signature
        )

    def _subscribed(self) -> str:
        if self.webhook_url is None:
            raise LookupError("no callback URL: call subscribe(url) first")
        return self.webhook_url

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _send_message(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.requests.append(body)

        if not self._authorised(request):
            return _oauth_error()
        if request.match_info["phone_number_id"] != self.phone_number_id:
            return _error(
                400,
                100,
                f"Unsupported post request. Object with ID '{request.match_info['phone_number_id']}' does "
                "not exist, cannot be loaded due to missing permissions, or does not support this operation.",
                subcode=33,
            )
        if self._delays:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._delays.pop(0))
        if self._failures:
            failure = self._failures.pop(0)
            headers = (
                {"Retry-After": _seconds(failure.retry_after)} if failure.retry_after is not None else {}
            )
            return _error(
                failure.status, failure.code, failure.message, details=failure.details, headers=headers
            )
        problem = _invalid(body)
        if problem is not None:
            return _error(400, 100, "(#100) Invalid parameter", details=problem)

        to = body["to"]
        wamid = "wamid." + base64.b64encode(b"\x15\x02\x00\x11\x18\x12" + secrets.token_bytes(18)).decode()
        wa_id = re.sub(r"\D", "", to)
        self.messages[wamid] = {"payload": body, "wa_id": wa_id, "status": "accepted"}
        sent: dict[str, Any] = {"id": wamid}
        if body["type"] == "template":
            sent["message_status"] = "accepted"
        return web.json_response(
            {"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": wa_id}], "messages": [sent]}
        )

    async def _media_info(self, request: web.Request) -> web.Response:
        self.media_requests.append(request.path)
        if not self._authorised(request):
            return _oauth_error()
        if self._failures:  # fail_next() applies to whichever Graph call comes next
            failure = self._failures.pop(0)
            return _error(failure.status, failure.code, failure.message, details=failure.details)
        media_id = request.match_info["media_id"]
        media = self.media.get(media_id)
        if media is None:
            return _error(
                400,
                100,
                f"Unsupported get request. Object with ID '{media_id}' does not exist, cannot be loaded due "
                "to missing permissions, or does not support this operation.",
                subcode=33,
            )
        info: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "url": f"{self.base_url}/whatsapp_business/attachments/?"
            + urlencode({"mid": media_id, "ext": int(time.time()), "hash": secrets.token_urlsafe(12)}),
            "mime_type": media.mime_type,
            "sha256": base64.b64encode(hashlib.sha256(media.data).digest()).decode(),
            "id": media_id,
        }
        if media.report_size:
            info["file_size"] = len(media.data)
        return web.json_response(info)

    async def _media_bytes(self, request: web.Request) -> web.StreamResponse:
        self.media_requests.append(request.path_qs)
        if not self._authorised(request):
            return _oauth_error()
        media = self.media.get(request.query.get("mid", ""))
        if media is None:
            return web.Response(status=404, text="Not Found")
        if media.report_size:
            return web.Response(body=media.data, content_type=media.mime_type.split(";")[0])
        # Chunked, with no Content-Length: the client learns the size only by reading.
        response = web.StreamResponse(headers={"Content-Type": media.mime_type.split(";")[0]})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(media.data), 1024 * 1024):
            await response.write(media.data[start : start + 1024 * 1024])
        await response.write_eof()
        return response

    def _authorised(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(
            token.encode(), self.access_token.encode()
        )


def sign_body(body: bytes, app_secret: str) -> str:
    """The X-Hub-Signature-256 Meta sends for `body`."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def encode(payload: Mapping[str, Any]) -> bytes:
    """A payload as Meta serialises it: compact JSON, non-ASCII escaped."""
    return json.dumps(payload, separators=(",", ":")).encode()


async def post_webhook(
    session: aiohttp.ClientSession,
    url: str,
    payload: Mapping[str, Any] | bytes,
    app_secret: str,
    *,
    signature: str | None = None,
    signed: bool = True,
) -> PostResult:
    """POST a webhook body as Meta does: signed, unless `signed` is false or a `signature` is given."""
    body = payload if isinstance(payload, bytes) else encode(payload)
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    elif signed:
        headers["X-Hub-Signature-256"] = sign_body(body, app_secret)
    async with session.post(url, data=body, headers=headers) as response:
        return PostResult(response.status, await response.text(), response.content_type)


def load_fixture(name: str) -> bytes:
    """The raw bytes of `tests/fixtures/whatsapp_cloud/<name>.json`: what gets signed."""
    return (FIXTURES / f"{name}.json").read_bytes()


def fixture_payload(name: str) -> dict[str, Any]:
    """`tests/fixtures/whatsapp_cloud/<name>.json` decoded, to vary before posting."""
    payload: dict[str, Any] = json.loads(load_fixture(name))
    return payload


def webhook_payload(
    value: Mapping[str, Any],
    *,
    field: str = "messages",
    phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
    display_phone_number: str = DEFAULT_DISPLAY_PHONE_NUMBER,
    waba_id: str = DEFAULT_WABA_ID,
) -> dict[str, Any]:
    """A WhatsApp Business Account webhook with one change carrying `value`."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": waba_id,
                "changes": [
                    {
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": display_phone_number,
                                "phone_number_id": phone_number_id,
                            },
                            **value,
                        },
                        "field": field,
                    }
                ],
            }
        ],
    }


def inbound_payload(
    *messages: Mapping[str, Any],
    contacts: Iterable[tuple[str, str]] = (("16505551234", "Sheena Nelson"),),
    phone_number_id: str = DEFAULT_PHONE_NUMBER_ID,
) -> dict[str, Any]:
    """A webhook carrying customers' `messages`, with the (wa_id, profile name) `contacts`."""
    return webhook_payload(
        {
            "contacts": [{"profile": {"name": name}, "wa_id": wa_id} for wa_id, name in contacts],
            "messages": list(messages),
        },
        phone_number_id=phone_number_id,
    )


def text_message(body: str, *, wamid: str | None = None, wa_id: str = "16505551234") -> dict[str, Any]:
    """One inbound text message, as it appears in `value.messages`."""
    return {
        "from": wa_id,
        "id": wamid or new_wamid(),
        "timestamp": str(int(time.time())),
        "type": "text",
        "text": {"body": body},
    }


def button_reply_message(
    button_id: str, title: str, *, context_wamid: str, wa_id: str = "16505551234"
) -> dict[str, Any]:
    """The customer pressed reply button `button_id` of our message `context_wamid`."""
    return {
        "context": {"from": DEFAULT_DISPLAY_PHONE_NUMBER, "id": context_wamid},
        "from": wa_id,
        "id": new_wamid(),
        "timestamp": str(int(time.time())),
        "type": "interactive",
        "interactive": {"type": "button_reply", "button_reply": {"id": button_id, "title": title}},
    }


def new_wamid() -> str:
    return "wamid." + base64.b64encode(b"\x15\x02\x00\x12\x18\x14" + secrets.token_bytes(20)).decode()


@pytest_asyncio.fixture
async def fake_whatsapp_cloud() -> AsyncIterator[FakeWhatsAppCloudApi]:
    api = FakeWhatsAppCloudApi()
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


def _invalid(body: Any) -> str | None:
    """What Meta would reject in a Messages API body, or None."""
    if not isinstance(body, dict):
        return "The request body is not a JSON object"
    if body.get("messaging_product") != "whatsapp":
        return "Param messaging_product must be 'whatsapp'"
    if body.get("recipient_type", "individual") != "individual":
        return "Param recipient_type must be 'individual'"
    to = body.get("to")
    if not isinstance(to, str) or not re.fullmatch(r"\+?\d{6,16}", to):
        return "Param to must be a phone number"
    kind = body.get("type", "text")
    if kind not in _TYPES:
        return f"Param type must be one of {sorted(_TYPES)}"
    content = body.get(kind)
    if not isinstance(content, dict):
        return f"Param {kind} is required for type {kind}"
    if kind == "text":
        text = content.get("body")
        if not isinstance(text, str) or not text.strip() or len(text) > 4096:
            return "Param text['body'] must be 1 to 4096 characters"
        return None
    if kind in _MEDIA_TYPES:
        if ("link" in content) == ("id" in content):
            return f"Param {kind} must have exactly one of 'link' or 'id'"
        if "caption" in content and (kind not in _CAPTIONED or len(content["caption"]) > 1024):
            return f"Param {kind}['caption'] is not allowed or too long"
        return None
    if kind == "interactive":
        return _invalid_interactive(content)
    if kind == "template":
        language = content.get("language")
        if not isinstance(content.get("name"), str) or not isinstance(language, dict):
            return "Param template must have a name and a language"
        if not isinstance(language.get("code"), str):
            return "Param template['language']['code'] is required"
        return None
    return None


def _invalid_interactive(interactive: Mapping[str, Any]) -> str | None:
    body = interactive.get("body")
    if not isinstance(body, dict) or not isinstance(body.get("text"), str) or len(body["text"]) > 1024:
        return "Param interactive['body']['text'] must be at most 1024 characters"
    action = interactive.get("action")
    if not isinstance(action, dict):
        return "Param interactive['action'] is required"
    if interactive.get("type") == "button":
        buttons = action.get("buttons")
        if not isinstance(buttons, list) or not 1 <= len(buttons) <= 3:
            return "Param interactive['action']['buttons'] must have 1 to 3 buttons"
        titles = []
        for button in buttons:
            reply = button.get("reply") if isinstance(button, dict) else None
            if button.get("type") != "reply" or not isinstance(reply, dict):
                return "Buttons must be of type reply"
            if not 1 <= len(reply.get("title", "")) <= 20 or not 1 <= len(reply.get("id", "")) <= 256:
                return "Button title must be 1 to 20 characters, id 1 to 256"
            titles.append(reply["title"])
        if len(set(titles)) != len(titles):
            return "Button titles must be unique"
        return None
    if interactive.get("type") == "list":
        if not 1 <= len(action.get("button", "")) <= 20:
            return "Param interactive['action']['button'] must be 1 to 20 characters"
        sections = action.get("sections")
        if not isinstance(sections, list) or not 1 <= len(sections) <= 10:
            return "Param interactive['action']['sections'] must have 1 to 10 sections"
        rows = [row for section in sections for row in section.get("rows", [])]
        if not 1 <= len(rows) <= 10:
            return "A list has 1 to 10 rows in all"
        for row in rows:
            if not 1 <= len(row.get("title", "")) <= 24 or not 1 <= len(row.get("id", "")) <= 200:
                return "Row title must be 1 to 24 characters, id 1 to 200"
            if len(row.get("description", "")) > 72:
                return "Row description must be at most 72 characters"
        return None
    return "Param interactive['type'] must be button or list"


def _oauth_error() -> web.Response:
    return web.json_response(
        {
            "error": {
                "message": "Invalid OAuth access token - Cannot parse access token",
                "type": "OAuthException",
                "code": 190,
                "fbtrace_id": _trace_id(),
            }
        },
        status=401,
    )


def _error(
    status: int,
    code: int,
    message: str,
    *,
    details: str | None = None,
    subcode: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if details is not None:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    error["fbtrace_id"] = _trace_id()
    return web.json_response({"error": error}, status=status, headers=headers)


def _trace_id() -> str:
    return "A" + secrets.token_urlsafe(16)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
