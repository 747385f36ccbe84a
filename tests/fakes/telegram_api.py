"""A local stand-in for the Telegram Bot API, speaking its wire format, plus helpers to post updates.

Point python-telegram-bot at it (`api_base_url` = `FakeTelegramApi.base_url`) so PTB's own request
encoding, error parsing and exception mapping run in the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import mimetypes
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import pytest_asyncio
from aiohttp import web

from tests.fakes.server import serve_on_loopback

DEFAULT_BOT_TOKEN = "7000000001:AAHfakeTelegramBotToken_0123456789-abcd"
DEFAULT_WEBHOOK_SECRET = "parley-webhook-secret_0123456789"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
# The customer in the fixtures: in a private chat, the chat id is the user id.
USER_ID = 123456789
USER: dict[str, Any] = {
    "id": USER_ID,
    "is_bot": False,
    "first_name": "Ada",
    "last_name": "Lovelace",
    "username": "ada_l",
    "language_code": "en",
}
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "telegram"

MAX_TEXT_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
MAX_CALLBACK_DATA_BYTES = 64


@dataclass(frozen=True, slots=True)
class _Failure:
    error_code: int
    description: str
    retry_after: int | None
    migrate_to_chat_id: int | None


@dataclass(frozen=True, slots=True)
class BotApiCall:
    """One request the fake received: the method as named in the URL and its parameters.

    Form and multipart values are strings, as sent; objects among them (`reply_markup`) are
    JSON-serialised, which `json` decodes.
    """

    method: str
    params: dict[str, Any]
    content_type: str
    token: str = field(repr=False, default="")

    def json(self, name: str) -> Any:
        value = self.params[name]
        return json.loads(value) if isinstance(value, str) else value


class PostResult(NamedTuple):
    status: int
    text: str
    content_type: str

    def json(self) -> Any:
        return json.loads(self.text)


Handler = Callable[["FakeTelegramApi", dict[str, Any]], Any]


class BotApiError(Exception):
    def __init__(self, error_code: int, description: str) -> None:
        super().__init__(description)
        self.error_code = error_code
        self.description = description


class FakeTelegramApi:
    """`POST /bot<token>/<method>` on 127.0.0.1 for the methods Parley calls."""

    def __init__(self, token: str = DEFAULT_BOT_TOKEN) -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.base_url = ""
        self.requests: list[BotApiCall] = []
        # Every Message object the fake answered with, in order.
        self.messages: list[dict[str, Any]] = []
        self.answered_callback_queries: list[str] = []
        # Files customers "sent", by file_id: (bytes, file_path) as getFile reports them.
        self.files: dict[str, tuple[bytes, str]] = {}
        self.file_downloads: list[str] = []
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._failures: list[_Failure] = []
        self._delays: list[float] = []
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def bot_user(self) -> dict[str, Any]:
        return {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": "Acme Support",
            "username": "acme_support_bot",
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def start(self) -> str:
        """Serve on a random port; returns the base URL to use as `api_base_url`."""
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{file_path:.+}", self._download)
        self._stopping = asyncio.Event()
        self._runner, self.base_url = await serve_on_loopback(app)
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()  # releases requests held by delay_next()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def fail_next(
        self,
        error_code: int,
        description: str,
        *,
        retry_after: int | None = None,
        migrate_to_chat_id: int | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` method calls with Telegram's error object, with its `parameters`."""
        self._failures.extend([_Failure(error_code, description, retry_after, migrate_to_chat_id)] * times)

    def delay_next(self, seconds: float) -> None:
        """Hold the next method call for `seconds` before answering (timeout tests)."""
        self._delays.append(seconds)

    def add_file(self, data: bytes, file_path: str) -> str:
        """A file as if a customer had sent it; returns its file_id for an update's photo/document."""
        file_id = f"AgACAgQAAxkBAAI{secrets.token_hex(12)}"
        self.files[file_id] = (data, file_path)
        return file_id

    def calls(self, method: str) -> list[BotApiCall]:
        """The requests made to `method` (compared case-insensitively, as Telegram does)."""
        return [call for call in self.requests if call.method.lower() == method.lower()]

    async def _handle(self, request: web.Request) -> web.Response:
        token, method = request.match_info["token"], request.match_info["method"]
        try:
            params, content_type = await _read_params(request)
        except ValueError:
            return _error(400, "Bad Request: can't parse JSON object")
        self.requests.append(BotApiCall(method, params, content_type, token))

        if not secrets.compare_digest(token, self.token):
            # Telegram: 401 for a well-formed token it does not know, 404 for anything else.
            if ":" in token and token.split(":", 1)[0].isdigit():
                return _error(401, "Unauthorized")
            return _error(404, "Not Found")
        handler = _METHODS.get(method.lower())
        if handler is None:
            return _error(404, "Not Found")
        if self._delays:
            delay = self._delays.pop(0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        if self._failures:
            failure = self._failures.pop(0)
            return _error(
                failure.error_code, failure.description, failure.retry_after, failure.migrate_to_chat_id
            )
        try:
            result = handler(self, params)
        except BotApiError as e:
            return _error(e.error_code, e.description)
        return web.json_response({"ok": True, "result": result})

    async def _download(self, request: web.Request) -> web.Response:
        """`GET /file/bot<token>/<file_path>`: what getFile pointed at (Telegram answers 404 otherwise)."""
        self.file_downloads.append(request.match_info["file_path"])
        if not secrets.compare_digest(request.match_info["token"], self.token):
            return _error(404, "Not Found")
        for data, file_path in self.files.values():
            if file_path == request.match_info["file_path"]:
                return web.Response(body=data, content_type="application/octet-stream")
        return _error(404, "Not Found")

    # --- methods ------------------------------------------------------------------------------

    def _get_me(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.bot_user

    def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = _chat_id(params)
        text = _str(params, "text")
        if not text.strip():
            raise BotApiError(400, "Bad Request: message text is empty")
        if len(text) > MAX_TEXT_LENGTH:
            raise BotApiError(400, "Bad Request: message is too long")
        return self._new_message(chat_id, params, {"text": text})

    def _send_photo(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = _chat_id(params)
        photo = _file(params, "photo")
        fields: dict[str, Any] = {
            "photo": [
                _photo_size(photo, "s", 90, 68, 1342),
                _photo_size(photo, "m", 320, 240, 20731),
                _photo_size(photo, "x", 1280, 960, 84216),
            ]
        }
        return self._new_message(chat_id, params, fields | _caption(params))

    def _send_document(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = _chat_id(params)
        document = _file(params, "document")
        name = PurePosixPath(urlsplit(document).path).name if "://" in document else "file"
        file_id = _file_id(document, "doc")
        fields: dict[str, Any] = {
            "document": {
                "file_name": name,
                "mime_type": mimetypes.guess_type(name)[0] or "application/octet-stream",
                "file_id": file_id,
                "file_unique_id": file_id[-12:],
                "file_size": 48213,
            }
        }
        return self._new_message(chat_id, params, fields | _caption(params))

    def _get_file(self, params: dict[str, Any]) -> dict[str, Any]:
        file_id = _str(params, "file_id")
        if file_id not in self.files:
            raise BotApiError(400, "Bad Request: invalid file_id")
        data, file_path = self.files[file_id]
        if len(data) > 20 * 1024 * 1024:
            raise BotApiError(400, "Bad Request: file is too big")
        return {
            "file_id": file_id,
            "file_unique_id": file_id[-12:],
            "file_size": len(data),
            "file_path": file_path,
        }

    def _answer_callback_query(self, params: dict[str, Any]) -> bool:
        query_id = _str(params, "callback_query_id")
        if not query_id:
            raise BotApiError(
                400, "Bad Request: query is too old and response timeout expired or query ID is invalid"
            )
        self.answered_callback_queries.append(query_id)
        return True

    def _new_message(self, chat_id: int, params: dict[str, Any], content: dict[str, Any]) -> dict[str, Any]:
        counter = self._message_ids.setdefault(chat_id, itertools.count(5001))
        chat: dict[str, Any] = (
            {"id": chat_id, "first_name": USER["first_name"], "type": "private"}
            if chat_id > 0
            else {"id": chat_id, "title": "Group", "type": "supergroup"}
        )
        message: dict[str, Any] = {
            "message_id": next(counter),
            "from": self.bot_user,
            "chat": chat,
            "date": int(time.time()),
            **content,
        }
        markup = _reply_markup(params)
        if markup is not None:
            message["reply_markup"] = markup
        self.messages.append(message)
        return message


_METHODS: Mapping[str, Handler] = {
    "getme": FakeTelegramApi._get_me,
    "sendmessage": FakeTelegramApi._send_message,
    "sendphoto": FakeTelegramApi._send_photo,
    "senddocument": FakeTelegramApi._send_document,
    "answercallbackquery": FakeTelegramApi._answer_callback_query,
    "getfile": FakeTelegramApi._get_file,
}


async def _read_params(request: web.Request) -> tuple[dict[str, Any], str]:
    """The parameters in any of the ways the Bot API accepts them: query, form, multipart or JSON."""
    params: dict[str, Any] = dict(request.query)
    content_type = request.content_type
    if content_type == "application/json":
        body = await request.json()
        if isinstance(body, dict):
            params.update(body)
    elif content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        for key, value in (await request.post()).items():
            if isinstance(value, web.FileField):
                params[key] = {"filename": value.filename, "size": len(value.file.read())}
            else:
                params[key] = str(value)
    return params, content_type


def _error(
    error_code: int,
    description: str,
    retry_after: int | None = None,
    migrate_to_chat_id: int | None = None,
) -> web.Response:
    """Telegram's error object; `parameters` says how to retry (ResponseParameters)."""
    body: dict[str, Any] = {"ok": False, "error_code": error_code, "description": description}
    parameters = {"retry_after": retry_after, "migrate_to_chat_id": migrate_to_chat_id}
    if any(v is not None for v in parameters.values()):
        body["parameters"] = {k: v for k, v in parameters.items() if v is not None}
    return web.json_response(body, status=error_code)


def _str(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if value is None:
        raise BotApiError(400, f'Bad Request: parameter "{name}" is required')
    return str(value)


def _chat_id(params: dict[str, Any]) -> int:
    try:
        return int(_str(params, "chat_id"))
    except ValueError:
        raise BotApiError(400, "Bad Request: chat not found") from None


def _file(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if isinstance(value, dict):  # uploaded in a multipart body
        return f"upload://multipart/{value['filename']}"
    if not isinstance(value, str) or not value:
        raise BotApiError(400, f"Bad Request: there is no {name} in the request")
    if "://" in value and not value.startswith(("http://", "https://")):
        raise BotApiError(400, "Bad Request: wrong HTTP URL specified")
    return value


def _file_id(value: str, salt: str) -> str:
    if "://" not in value:
        return value  # sent by file_id: Telegram answers with the same file
    return f"{salt}-{secrets.token_hex(8)}"


def _photo_size(photo: str, size: str, width: int, height: int, file_size: int) -> dict[str, Any]:
    file_id = f"{_file_id(photo, 'photo')}-{size}" if "://" in photo else photo
    return {
        "file_id": file_id,
        "file_unique_id": f"u-{file_id[-10:]}",
        "file_size": file_size,
        "width": width,
        "height": height,
    }


def _caption(params: dict[str, Any]) -> dict[str, Any]:
    caption = params.get("caption")
    if caption is None:
        return {}
    if len(str(caption)) > MAX_CAPTION_LENGTH:
        raise BotApiError(400, "Bad Request: message caption is too long")
    return {"caption": str(caption)}


def _reply_markup(params: dict[str, Any]) -> dict[str, Any] | None:
    raw = params.get("reply_markup")
    if raw is None:
        return None
    try:
        markup = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        raise BotApiError(400, "Bad Request: can't parse reply keyboard markup JSON object") from None
    keyboard = markup.get("inline_keyboard") if isinstance(markup, dict) else None
    if not isinstance(keyboard, list) or not all(isinstance(row, list) for row in keyboard):
        raise BotApiError(
            400, "Bad Request: can't parse inline keyboard button: InlineKeyboardButton must be an Object"
        )
    for row in keyboard:
        for button in row:
            if not isinstance(button, dict) or not isinstance(button.get("text"), str) or not button["text"]:
                raise BotApiError(
                    400, "Bad Request: can't parse inline keyboard button: Text must be non-empty"
                )
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= MAX_CALLBACK_DATA_BYTES:
                raise BotApiError(400, "Bad Request: BUTTON_DATA_INVALID")
    return {"inline_keyboard": keyboard}


# --- updates, as Telegram posts them to the webhook -----------------------------------------------


def load_fixture(name: str) -> dict[str, Any]:
    """The Update in `tests/fixtures/telegram/<name>.json`."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    return data


def text_update(update_id: int, text: str, *, user: Mapping[str, Any] = USER) -> dict[str, Any]:
    """A private-chat text message from `user`."""
    chat = {k: user[k] for k in ("id", "first_name", "last_name", "username") if k in user}
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id % 100000,
            "from": dict(user),
            "chat": {**chat, "type": "private"},
            "date": int(time.time()),
            "text": text,
        },
    }


def callback_query_update(
    update_id: int, message: Mapping[str, Any], data: str, *, user: Mapping[str, Any] = USER
) -> dict[str, Any]:
    """`user` pressing the inline button with callback `data` under `message` (a Message the bot sent)."""
    return {
        "update_id": update_id,
        "callback_query": {
            "id": str(5302153791827364 * 100 + update_id % 100),
            "from": dict(user),
            "message": copy.deepcopy(dict(message)),
            "chat_instance": "-5218450127361872213",
            "data": data,
        },
    }


async def post_update(
    session: aiohttp.ClientSession, url: str, update: Any, *, secret: str | None = DEFAULT_WEBHOOK_SECRET
) -> PostResult:
    """POST `update` as Telegram does: JSON, with the secret token header unless `secret` is None."""
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[SECRET_HEADER] = secret
    body = update if isinstance(update, bytes) else json.dumps(update).encode()
    async with session.post(url, data=body, headers=headers) as response:
        return PostResult(response.status, await response.text(), response.content_type)


@pytest_asyncio.fixture
async def fake_telegram() -> AsyncIterator[FakeTelegramApi]:
    api = FakeTelegramApi()
    await api.start()
    try:
        yield api
    finally:
        await api.stop()
