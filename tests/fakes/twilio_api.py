"""A local stand-in for Twilio's Messages API, speaking its wire format, plus webhook-signing helpers.

Point the real SDK at it (`api_base_url` = `FakeTwilioApi.base_url`) so the SDK's own request
building, basic auth and error parsing run in the tests. It carries SMS and WhatsApp (`whatsapp:`
addresses, Content API templates as `ContentSid` / `ContentVariables`) as Twilio does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

import aiohttp
import pytest_asyncio
from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from tests.fakes.server import serve_on_loopback

API_VERSION = "2010-04-01"
DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
DEFAULT_AUTH_TOKEN = "fake-twilio-auth-token-0123456789"
# A sender Twilio would pick from a Messaging Service's pool (Twilio's documented test number).
POOL_NUMBER = "+15005550006"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
WHATSAPP = "whatsapp:"
_CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}")

# GSM 03.38 basic character set: bodies made only of these are 160 characters a segment,
# anything else is sent as UCS-2 (70 a segment).
_GSM7 = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)

Params = Mapping[str, str] | Iterable[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    code: int | None
    message: str
    retry_after: float | None


class PostResult(NamedTuple):
    status: int
    text: str
    content_type: str


class FakeTwilioApi:
    """`POST/GET /2010-04-01/Accounts/{AccountSid}/Messages[/{Sid}].json` on 127.0.0.1."""

    def __init__(self, account_sid: str = DEFAULT_ACCOUNT_SID, auth_token: str = DEFAULT_AUTH_TOKEN) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.base_url = ""
        self.requests: list[dict[str, list[str]]] = []
        self.messages: dict[str, dict[str, Any]] = {}
        self._status_callbacks: dict[str, str] = {}
        self._failures: list[_Failure] = []
        self._delays: list[float] = []
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        # Media customers "sent", by MediaSid: (bytes, content type). Twilio redirects the media
        # URL to short-lived storage, which the fake serves under /media-storage/.
        self.media: dict[str, tuple[bytes, str]] = {}
        self.media_requests: list[tuple[str, str | None]] = []
        # The storage origin: the same server on a second port, as Twilio's media lives on another host.
        self.storage_url = ""

    def add_media(self, data: bytes, content_type: str, message_sid: str | None = None) -> str:
        """A file as if a customer had sent it by MMS/WhatsApp; returns its MediaUrl."""
        media_sid = "ME" + secrets.token_hex(16)
        self.media[media_sid] = (data, content_type)
        message_sid = message_sid or "MM" + secrets.token_hex(16)
        messages = f"{self.base_url}/{API_VERSION}/Accounts/{self.account_sid}/Messages"
        return f"{messages}/{message_sid}/Media/{media_sid}"

    def add_recording(self, data: bytes) -> str:
        """A call recording; returns its RecordingUrl (Twilio serves `<url>.mp3` as audio/mpeg)."""
        recording_sid = "RE" + secrets.token_hex(16)
        self.media[recording_sid] = (data, "audio/mpeg")
        return f"{self.base_url}/{API_VERSION}/Accounts/{self.account_sid}/Recordings/{recording_sid}"

    async def _recording(self, request: web.Request) -> web.Response:
        self.media_requests.append((request.path, request.headers.get("Authorization")))
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        found = self.media.get(request.match_info["recording_sid"])
        if found is None:
            return _error(404, 20404, "The requested resource was not found")
        return web.Response(body=found[0], content_type=found[1])

    async def _media(self, request: web.Request) -> web.Response:
        self.media_requests.append((request.path, request.headers.get("Authorization")))
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        if request.match_info["media_sid"] not in self.media:
            return _error(404, 20404, "The requested resource was not found")
        raise web.HTTPFound(f"{self.storage_url}/media-storage/{request.match_info['media_sid']}")

    async def _media_storage(self, request: web.Request) -> web.Response:
        self.media_requests.append((request.path, request.headers.get("Authorization")))
        data, content_type = self.media[request.match_info["media_sid"]]
        return web.Response(body=data, content_type=content_type)

    async def start(self) -> str:
        """Serve on a random port; returns the base URL to use as `api_base_url`."""
        app = web.Application()
        prefix = f"/{API_VERSION}/Accounts/{{account_sid}}"
        app.router.add_post(f"{prefix}/Messages.json", self._create_message)
        app.router.add_get(f"{prefix}/Messages/{{sid}}.json", self._fetch_message)
        app.router.add_get(f"{prefix}/Messages/{{sid}}/Media/{{media_sid}}", self._media)
        app.router.add_get("/media-storage/{media_sid}", self._media_storage)
        app.router.add_get(f"{prefix}/Recordings/{{recording_sid}}.mp3", self._recording)
        self._stopping = asyncio.Event()
        self._runner, self.base_url = await serve_on_loopback(app)
        storage = web.TCPSite(self._runner, "127.0.0.1", 0)
        await storage.start()
        self.storage_url = f"http://127.0.0.1:{self._runner.addresses[1][1]}"
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
        *,
        code: int | None = None,
        message: str = "The request could not be completed",
        retry_after: float | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` create calls with a Twilio error body (and Retry-After if given)."""
        self._failures.extend([_Failure(status, code, message, retry_after)] * times)

    def delay_next(self, seconds: float) -> None:
        """Hold the next create call for `seconds` before answering (timeout tests)."""
        self._delays.append(seconds)

    async def send_status(self, sid: str, status: str, *, error_code: int | None = None) -> int:
        """POST a signed status callback for message `sid`; returns the HTTP status Parley answered."""
        resource = self.messages[sid]
        url = self._status_callbacks.get(sid)
        if url is None:
            raise LookupError(f"message {sid} was created without a StatusCallback")
        resource["status"] = status
        resource["date_updated"] = _rfc2822_now()
        params: dict[str, str] = {}
        if error_code is not None:
            resource["error_code"] = error_code
            params["ErrorCode"] = str(error_code)
        on_whatsapp = resource["to"].startswith(WHATSAPP)
        if on_whatsapp:
            params["ChannelPrefix"] = "whatsapp"
        params.update(
            {
                "SmsSid": sid,
                "SmsStatus": status,
                "MessageStatus": status,
                "To": resource["to"],
                "MessageSid": sid,
                "AccountSid": self.account_sid,
                "From": resource["from"] or (WHATSAPP + POOL_NUMBER if on_whatsapp else POOL_NUMBER),
                "ApiVersion": API_VERSION,
            }
        )
        if on_whatsapp:
            params["ChannelToAddress"] = resource["to"].removeprefix(WHATSAPP)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        result = await post_signed(self._session, url, params, self.auth_token)
        return result.status

    async def _create_message(self, request: web.Request) -> web.Response:
        form = await request.post()
        params: dict[str, list[str]] = {}
        for key, value in form.items():
            params.setdefault(key, []).append(str(value))
        self.requests.append(params)

        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        if request.match_info["account_sid"] != self.account_sid:
            return _error(404, 20404, "The requested resource was not found")
        if self._delays:
            delay = self._delays.pop(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        if self._failures:
            failure = self._failures.pop(0)
            headers = (
                {"Retry-After": _seconds(failure.retry_after)} if failure.retry_after is not None else {}
            )
            return _error(failure.status, failure.code, failure.message, headers)

        def first(name: str) -> str | None:
            values = params.get(name)
            return values[0] if values else None

        to, sender, service = first("To"), first("From"), first("MessagingServiceSid")
        body, media = first("Body") or "", params.get("MediaUrl", [])
        content_sid, content_variables = first("ContentSid"), first("ContentVariables")
        if not to:
            return _error(400, 21604, "A 'To' phone number is required.")
        if not sender and not service:
            return _error(400, 21603, "A 'From' phone number is required.")
        if sender and sender.startswith(WHATSAPP) != to.startswith(WHATSAPP):
            return _error(400, 21910, "Invalid From and To pair. From and To should be of the same channel")
        if content_sid is not None:
            if not _CONTENT_SID.fullmatch(content_sid):
                return _error(400, 21655, "The ContentSid is Invalid")
            if content_variables is not None and not _json_object(content_variables):
                return _error(400, 21656, "The ContentVariables Parameter is invalid")
        elif not body and not media:
            return _error(400, 21602, "Message body is required.")

        sid = "SM" + secrets.token_hex(16)
        now = _rfc2822_now()
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json"
        resource: dict[str, Any] = {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            # With a Messaging Service the sender is picked later, and the message starts "accepted".
            "from": sender,
            "messaging_service_sid": service,
            "num_media": str(len(media)),
            "num_segments": "0" if service and not sender else str(_segments(body)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued" if sender else "accepted",
            "subresource_uris": {
                "media": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}/Media.json",
                "feedback": f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}/Feedback.json",
            },
            "to": to,
            "uri": uri,
        }
        self.messages[sid] = resource
        callback = first("StatusCallback")
        if callback:
            self._status_callbacks[sid] = callback
        return web.json_response(resource, status=201)

    async def _fetch_message(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, 20003, "Authenticate")
        resource = self.messages.get(request.match_info["sid"])
        if request.match_info["account_sid"] != self.account_sid or resource is None:
            return _error(404, 20404, "The requested resource was not found")
        return web.json_response(resource)

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            return False
        return secrets.compare_digest(user, self.account_sid) and secrets.compare_digest(
            password, self.auth_token
        )


def sign(url: str, params: Params, auth_token: str) -> str:
    """The X-Twilio-Signature Twilio would send for a POST of `params` to `url`."""
    return str(RequestValidator(auth_token).compute_signature(url, MultiDict(_pairs(params))))


async def post_signed(
    session: aiohttp.ClientSession,
    url: str,
    params: Params,
    auth_token: str,
    *,
    signature: str | None = None,
) -> PostResult:
    """POST `params` form-encoded (order kept) as Twilio does, signed unless `signature` is given."""
    pairs = _pairs(params)
    headers = {"X-Twilio-Signature": signature if signature is not None else sign(url, pairs, auth_token)}
    async with session.post(url, data=pairs, headers=headers) as response:
        return PostResult(response.status, await response.text(), response.content_type)


def load_fixture(name: str, channel: str = "twilio_sms") -> list[tuple[str, str]]:
    """The ordered form pairs of `tests/fixtures/<channel>/<name>.txt`."""
    body = (FIXTURES / channel / f"{name}.txt").read_text(encoding="utf-8").strip()
    return parse_qsl(body, keep_blank_values=True, strict_parsing=True)


@pytest_asyncio.fixture
async def fake_twilio() -> AsyncIterator[FakeTwilioApi]:
    api = FakeTwilioApi()
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


def _pairs(params: Params) -> list[tuple[str, str]]:
    if isinstance(params, Mapping):
        return list(params.items())
    return list(params)


def _error(
    status: int, code: int | None, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = {
        "code": code if code is not None else status,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code if code is not None else status}",
        "status": status,
    }
    return web.json_response(body, status=status, headers=headers)


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _rfc2822_now() -> str:
    return format_datetime(datetime.now(UTC).replace(microsecond=0))


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _segments(body: str) -> int:
    if not body:
        return 1
    single, multi = (160, 153) if set(body) <= _GSM7 else (70, 67)
    return 1 if len(body) <= single else -(-len(body) // multi)
