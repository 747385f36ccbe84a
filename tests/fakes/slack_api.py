"""A local stand-in for Slack's Web API, speaking its wire format, plus helpers to sign and post events.

Point the adapter at it (`api_base_url` = `FakeSlackApi.base_url`) so slack_sdk's own request
building, bearer auth, response validation and SlackApiError run in the tests. Like Slack, the fake
answers HTTP 200 with `{"ok": false, "error": …}` for most failures, and 429 with Retry-After when
rate limited.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import hmac
import itertools
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlencode

import aiohttp
import pytest_asyncio
from aiohttp import web

from tests.fakes.server import serve_on_loopback

DEFAULT_BOT_TOKEN = "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy"
DEFAULT_SIGNING_SECRET = "8f742231b10e8888abcd99cccddd85a5"
TEAM_ID = "T061EG9R6"
APP_ID = "A0MDYCDME"
BOT_ID = "B0LAN0Z88"
BOT_USER_ID = "U0LAN0Z89"
# The customers in the fixtures, and the support channel the app was added to.
USER_ID = "U061F7AUR"
OTHER_USER_ID = "U0G9QF9C6"
CHANNEL_ID = "C0LAN2Q65"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "slack"

MAX_TEXT_LENGTH = 40000
MAX_SECTION_TEXT_LENGTH = 3000
MAX_BUTTON_TEXT_LENGTH = 75
MAX_BUTTON_VALUE_LENGTH = 2000

_CHANNEL = re.compile(r"[CDG][A-Z0-9]{2,39}")
_USER = re.compile(r"[UW][A-Z0-9]{2,39}")
_TS = re.compile(r"[0-9]+\.[0-9]+")


@dataclass(frozen=True, slots=True)
class _Failure:
    error: str | None
    status: int
    retry_after: int | None


@dataclass(frozen=True, slots=True)
class WebApiCall:
    """One request the fake received: the method as named in the URL and its arguments.

    Arguments come from the query, a form or a JSON body, as the SDK sends them (chat.postMessage
    as JSON, conversations.open as query parameters).
    """

    method: str
    params: dict[str, Any]
    content_type: str
    token: str = field(repr=False, default="")


class PostResult(NamedTuple):
    status: int
    text: str
    content_type: str

    def json(self) -> Any:
        return json.loads(self.text)


class SlackError(Exception):
    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


Handler = Callable[["FakeSlackApi", dict[str, Any]], dict[str, Any]]


class FakeSlackApi:
    """`POST /api/<method>` on 127.0.0.1 for the Web API methods Parley calls."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_BOT_TOKEN,
        signing_secret: str = DEFAULT_SIGNING_SECRET,
        team_id: str = TEAM_ID,
    ) -> None:
        self.token = token
        self.signing_secret = signing_secret
        self.team_id = team_id
        self.base_url = ""
        self.requests: list[WebApiCall] = []
        # Every message the fake posted, as Slack stores it (what chat.postMessage answers with).
        self.messages: list[dict[str, Any]] = []
        self._ts = itertools.count(1)
        self._failures: list[_Failure] = []
        self._delays: list[float] = []
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.origin = ""
        # Files shared in Slack, by path under /files-pri/: (bytes, mimetype).
        self.files: dict[str, tuple[bytes, str]] = {}

    def add_file(self, data: bytes, name: str, mimetype: str) -> str:
        """A file as if shared in Slack; returns its `url_private`."""
        path = f"{self.team_id}-F{secrets.token_hex(5).upper()}/{name}"
        self.files[path] = (data, mimetype)
        return f"{self.origin}/files-pri/{path}"

    async def _file(self, request: web.Request) -> web.Response:
        """`url_private`: the file with the bot token; without it Slack answers 200 with its login page."""
        authorization = request.headers.get("Authorization", "")
        if not secrets.compare_digest(authorization, f"Bearer {self.token}"):
            return web.Response(
                text="<!DOCTYPE html><html><title>Slack</title>Sign in</html>", content_type="text/html"
            )
        found = self.files.get(request.match_info["path"])
        if found is None:
            return web.Response(status=404, text="file not found")
        return web.Response(body=found[0], content_type=found[1])

    async def start(self) -> str:
        """Serve on a random port; returns the base URL to use as `api_base_url`."""
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._handle)
        app.router.add_get("/files-pri/{path:.+}", self._file)
        self._stopping = asyncio.Event()
        self._runner, origin = await serve_on_loopback(app)
        self.origin = origin
        self.base_url = f"{origin}/api/"
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()  # releases requests held by delay_next()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def fail_next(
        self, error: str | None, status: int = 200, *, retry_after: int | None = None, times: int = 1
    ) -> None:
        """Answer the next `times` calls with `{"ok": false, "error": error}` (an HTML page if None)."""
        self._failures.extend([_Failure(error, status, retry_after)] * times)

    def delay_next(self, seconds: float) -> None:
        """Hold the next call for `seconds` before answering (timeout tests)."""
        self._delays.append(seconds)

    def calls(self, method: str) -> list[WebApiCall]:
        return [call for call in self.requests if call.method == method]

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        try:
            params, content_type = await _read_params(request)
        except ValueError:
            return _error("invalid_json")
        authorization = request.headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else ""
        token = token or str(params.pop("token", ""))
        self.requests.append(WebApiCall(method, params, content_type, token))

        handler = _METHODS.get(method)
        if handler is None:
            return _error("unknown_method", status=404)
        if not token:
            return _error("not_authed")
        if not secrets.compare_digest(token.encode(), self.token.encode()):
            return _error("invalid_auth")
        if self._delays:
            delay = self._delays.pop(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        if self._failures:
            failure = self._failures.pop(0)
            if failure.error is None:
                return web.Response(
                    status=failure.status,
                    text="<html><body>Server error</body></html>",
                    content_type="text/html",
                )
            headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else None
            return _error(failure.error, status=failure.status, headers=headers)
        try:
            result = handler(self, params)
        except SlackError as e:
            return _error(e.error)
        return web.json_response({"ok": True, **result})

    # --- methods ------------------------------------------------------------------------------

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": "https://acme.slack.com/",
            "team": "Acme",
            "user": "parley",
            "team_id": self.team_id,
            "user_id": BOT_USER_ID,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        users = str(params.get("users") or "")
        if not users:
            raise SlackError("users_list_not_supplied")
        ids = users.split(",")
        if len(ids) != 1 or not _USER.fullmatch(ids[0]):
            raise SlackError("user_not_found")
        # One DM channel per user, as Slack keeps it.
        return {"channel": {"id": f"D{ids[0][1:]}"}}

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        if not isinstance(channel, str) or not channel:
            raise SlackError("channel_not_found")
        if not _CHANNEL.fullmatch(channel):
            raise SlackError("channel_not_found")
        text = params.get("text")
        blocks = params.get("blocks")
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        if not (isinstance(text, str) and text.strip()) and not blocks:
            raise SlackError("no_text")
        if isinstance(text, str) and len(text) > MAX_TEXT_LENGTH:
            raise SlackError("msg_too_long")
        if blocks is not None:
            _check_blocks(blocks)
        thread_ts = params.get("thread_ts")
        if thread_ts is not None and (not isinstance(thread_ts, str) or not _TS.fullmatch(thread_ts)):
            raise SlackError("invalid_thread_ts")

        n = next(self._ts)
        ts = f"{1700000000 + n // 10000}.{(n % 10000) * 100:06d}"
        message: dict[str, Any] = {
            "type": "message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "app_id": APP_ID,
            "text": text or "",
            "ts": ts,
            "team": self.team_id,
            "bot_profile": {"id": BOT_ID, "app_id": APP_ID, "name": "Parley", "team_id": self.team_id},
        }
        if thread_ts is not None:
            message["thread_ts"] = thread_ts
            message["parent_user_id"] = USER_ID
        if blocks:
            message["blocks"] = blocks
        self.messages.append({**message, "channel": channel})
        return {"channel": channel, "ts": ts, "message": message}


_METHODS: Mapping[str, Handler] = {
    "auth.test": FakeSlackApi._auth_test,
    "conversations.open": FakeSlackApi._conversations_open,
    "chat.postMessage": FakeSlackApi._chat_post_message,
}


def _check_blocks(blocks: Any) -> None:
    """Slack refuses blocks beyond its Block Kit limits with `invalid_blocks`."""
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 50:
        raise SlackError("invalid_blocks")
    action_ids: set[str] = set()
    for block in blocks:
        if not isinstance(block, dict):
            raise SlackError("invalid_blocks")
        if block.get("type") == "section":
            text = block.get("text")
            if not isinstance(text, dict) or not isinstance(text.get("text"), str):
                raise SlackError("invalid_blocks")
            if not 1 <= len(text["text"]) <= MAX_SECTION_TEXT_LENGTH:
                raise SlackError("invalid_blocks")
        elif block.get("type") == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 1 <= len(elements) <= 25:
                raise SlackError("invalid_blocks")
            for element in elements:
                if not isinstance(element, dict) or element.get("type") != "button":
                    raise SlackError("invalid_blocks")
                label = element.get("text")
                value = element.get("value")
                action_id = element.get("action_id")
                if not isinstance(label, dict) or label.get("type") != "plain_text":
                    raise SlackError("invalid_blocks")
                if (
                    not isinstance(label.get("text"), str)
                    or not 1 <= len(label["text"]) <= MAX_BUTTON_TEXT_LENGTH
                ):
                    raise SlackError("invalid_blocks")
                if value is not None and (not isinstance(value, str) or len(value) > MAX_BUTTON_VALUE_LENGTH):
                    raise SlackError("invalid_blocks")
                if not isinstance(action_id, str) or action_id in action_ids:
                    raise SlackError("invalid_blocks")  # action ids are unique within a message
                action_ids.add(action_id)
        else:
            raise SlackError("invalid_blocks")


async def _read_params(request: web.Request) -> tuple[dict[str, Any], str]:
    params: dict[str, Any] = dict(request.query)
    content_type = request.content_type
    if content_type == "application/json":
        body = await request.json()
        if isinstance(body, dict):
            params.update(body)
    elif content_type == "application/x-www-form-urlencoded":
        params.update({k: str(v) for k, v in (await request.post()).items()})
    return params, content_type


def _error(error: str, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"ok": False, "error": error}, status=status, headers=headers)


# --- what Slack posts to the app ------------------------------------------------------------------


def load_fixture(name: str) -> dict[str, Any]:
    """The JSON in `tests/fixtures/slack/<name>.json` (block_actions fixtures hold the decoded payload)."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def sign(
    body: bytes, signing_secret: str = DEFAULT_SIGNING_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    """The headers Slack signs a request with: `v0=` HMAC-SHA256 of `v0:<timestamp>:<body>`."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(signing_secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256)
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest.hexdigest()}"}


def message_event(
    text: str,
    *,
    ts: str,
    thread_ts: str | None = None,
    user: str = USER_ID,
    channel: str = CHANNEL_ID,
    channel_type: str = "channel",
    event_id: str | None = None,
    team_id: str = TEAM_ID,
    **fields: Any,
) -> dict[str, Any]:
    """An `event_callback` envelope around a user's `message` event."""
    event: dict[str, Any] = {
        "type": "message",
        "channel": channel,
        "user": user,
        "text": text,
        "ts": ts,
        "event_ts": ts,
        "channel_type": channel_type,
        "team": team_id,
        "client_msg_id": f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(6)}",
        **fields,
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
        event["parent_user_id"] = USER_ID
    return {
        "token": "ZZZZZZWSxiZZZ2yIvs3peJ",
        "team_id": team_id,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{secrets.token_hex(5).upper()}",
        "event_time": int(float(ts)),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": "4-eyJldCI6Im1lc3NhZ2UiLCJ0aWQiOiJUMDYxRUc5UjYiLCJhaWQiOiJBME1EWUNETUUifQ",
    }


def bot_message_event(message: Mapping[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    """The `message` event Slack sends the app for a message the fake posted (its own reply)."""
    event = {k: v for k, v in message.items() if k != "channel"}
    envelope = message_event(str(message["text"]), ts=str(message["ts"]), event_id=event_id)
    envelope["event"] = {**event, "channel": message["channel"], "event_ts": message["ts"]}
    return envelope


def block_actions_payload(
    message: Mapping[str, Any], value: str, *, user: str = USER_ID, team_id: str = TEAM_ID
) -> dict[str, Any]:
    """`user` clicking the button with `value` on `message` (one the fake posted, with its blocks)."""
    clicked = None
    block_id = ""
    for block in message.get("blocks", ()):
        for element in block.get("elements", ()):
            if element.get("value") == value:
                clicked, block_id = element, block.get("block_id", "")
    if clicked is None:
        raise ValueError(f"no button with value {value!r} on the message")
    container: dict[str, Any] = {
        "type": "message",
        "message_ts": message["ts"],
        "channel_id": message["channel"],
        "is_ephemeral": False,
    }
    if "thread_ts" in message:
        container["thread_ts"] = message["thread_ts"]
    action_ts = f"{int(time.time())}.{secrets.randbelow(10**6):06d}"
    return {
        "type": "block_actions",
        "user": {"id": user, "username": "ada", "name": "ada", "team_id": team_id},
        "api_app_id": APP_ID,
        "token": "ZZZZZZWSxiZZZ2yIvs3peJ",
        "container": container,
        "trigger_id": f"{secrets.randbelow(10**12)}.{secrets.randbelow(10**12)}.{secrets.token_hex(16)}",
        "team": {"id": team_id, "domain": "acme"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": message["channel"], "name": "support"},
        "message": copy.deepcopy({k: v for k, v in message.items() if k != "channel"}),
        "state": {"values": {}},
        "response_url": f"https://hooks.slack.com/actions/{team_id}/{secrets.randbelow(10**12)}/x",
        "actions": [
            {
                "action_id": clicked["action_id"],
                "block_id": block_id,
                "text": clicked["text"],
                "value": value,
                "type": "button",
                "action_ts": action_ts,
            }
        ],
    }


def event_body(envelope: Any) -> bytes:
    """An Events API body: the envelope as JSON."""
    return envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()


def interactivity_body(payload: Any) -> bytes:
    """An interactivity body: the payload's JSON in the `payload` field of a form."""
    return urlencode({"payload": json.dumps(payload)}).encode()


async def post_signed(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    content_type: str = "application/json",
    signing_secret: str = DEFAULT_SIGNING_SECRET,
    timestamp: int | None = None,
    headers: Mapping[str, str] | None = None,
    signed: bool = True,
) -> PostResult:
    """POST `body` as Slack does: signed (unless `signed` is False), plus any extra `headers`."""
    sent = {"Content-Type": content_type, "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)"}
    if signed:
        sent |= sign(body, signing_secret, timestamp)
    sent |= dict(headers or {})
    async with session.post(url, data=body, headers=sent) as response:
        return PostResult(response.status, await response.text(), response.content_type)


@pytest_asyncio.fixture
async def fake_slack() -> AsyncIterator[FakeSlackApi]:
    api = FakeSlackApi()
    await api.start()
    try:
        yield api
    finally:
        await api.stop()
