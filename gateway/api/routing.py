"""Declaring API routes once: the aiohttp route and the OpenAPI operation both come from the declaration.

A route is a handler decorated with its method, path and required permission:

    @routes.get("/inboxes/{inbox_id}", allow=Permission.READ_INBOXES)
    async def get_inbox(call: ApiRequest, *, inbox_id: int) -> InboxOut:
        \"\"\"Get an inbox.\"\"\"

The rest is read off the handler: its docstring is the summary, a `{name}` in the path is the
keyword argument `name: int`, `body: SomeModel` is the JSON request body, `query: SomeModel` the
query string, and the return annotation the response body (`None`: 204 No Content). Every call
runs in one database transaction together with the token check; events asked for with
`notify_after_commit` are dispatched only once it has committed.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, get_type_hints

from aiohttp import web
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.api.permissions import Permission, allows
from gateway.api.schemas import MAX_ID, ErrorBody, ErrorDetail, ErrorResponse
from gateway.errors import ApiError, NotFound
from gateway.keys import DB, DIRECTORY, NOTIFIER, SETTINGS
from parley.auth import Principal, authenticate_token
from parley.sessions import SESSION_COOKIE, csrf_matches, resume_session

API_PREFIX = "/api/v1"

Handler = Callable[..., Awaitable[BaseModel | None]]
H = TypeVar("H", bound=Handler)

_PATH_PARAM = re.compile(r"\{(\w+)\}")


class ApiRequest:
    """One authenticated API call: who is asking, the transaction it runs in, what to do after commit."""

    __slots__ = ("_after", "_forget", "_notify", "principal", "request", "session")

    def __init__(self, request: web.Request, principal: Principal, session: AsyncSession) -> None:
        self.request = request
        self.principal = principal
        self.session = session
        self._notify = False
        self._forget: list[int] = []
        self._after: list[Callable[[], Awaitable[None]]] = []

    @property
    def tenant_id(self) -> int:
        return self.principal.tenant_id

    @property
    def app(self) -> web.Application:
        return self.request.app

    def public_url(self) -> str:
        """Where providers and clients reach this gateway: PARLEY_PUBLIC_URL, else this request's host."""
        configured = self.app[SETTINGS].public_url
        return configured.rstrip("/") if configured else f"{self.request.scheme}://{self.request.host}"

    def notify_after_commit(self) -> None:
        """Wake the outbox dispatcher once the transaction has committed (events were written)."""
        self._notify = True

    def forget_inbox_after_commit(self, inbox_id: int) -> None:
        """Drop the cached channel adapter of an inbox that was created, changed or deleted."""
        self._forget.append(inbox_id)

    def after_commit(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run `step` after the commit, before answering; an ApiError it raises becomes the answer.

        For slow outside calls (sending mail) that must not hold the transaction (on SQLite, the
        write lock) open while they wait.
        """
        self._after.append(step)

    async def _after_commit(self) -> None:
        for inbox_id in self._forget:
            await self.app[DIRECTORY].forget(inbox_id)
        if self._notify:
            self.app[NOTIFIER].notify()
        for step in self._after:
            await step()


@dataclass(frozen=True, slots=True)
class Operation:
    """One declared route: everything needed to serve it and to document it."""

    method: str
    path: str
    summary: str
    description: str
    tag: str
    permission: Permission | None
    status: int
    errors: tuple[int, ...]
    handler: Handler
    path_params: tuple[str, ...]
    body_model: type[BaseModel] | None
    query_model: type[BaseModel] | None
    response_model: type[BaseModel] | None

    @property
    def full_path(self) -> str:
        return API_PREFIX + self.path

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


@dataclass(slots=True)
class RouteTable:
    """The routes of one resource, collected by decorators and added to the app by `setup_api`."""

    tag: str
    operations: list[Operation] = field(default_factory=list)

    def get(self, path: str, *, allow: Permission | None, errors: Iterable[int] = ()) -> Callable[[H], H]:
        return self._route("GET", path, allow=allow, status=200, errors=errors)

    def post(
        self, path: str, *, allow: Permission | None, status: int = 201, errors: Iterable[int] = ()
    ) -> Callable[[H], H]:
        return self._route("POST", path, allow=allow, status=status, errors=errors)

    def patch(self, path: str, *, allow: Permission | None, errors: Iterable[int] = ()) -> Callable[[H], H]:
        return self._route("PATCH", path, allow=allow, status=200, errors=errors)

    def put(self, path: str, *, allow: Permission | None, errors: Iterable[int] = ()) -> Callable[[H], H]:
        return self._route("PUT", path, allow=allow, status=200, errors=errors)

    def delete(self, path: str, *, allow: Permission | None, errors: Iterable[int] = ()) -> Callable[[H], H]:
        return self._route("DELETE", path, allow=allow, status=204, errors=errors)

    def _route(
        self, method: str, path: str, *, allow: Permission | None, status: int, errors: Iterable[int]
    ) -> Callable[[H], H]:
        def register(handler: H) -> H:
            path_params, body, query, response = _read_signature(handler, path)
            doc = inspect.getdoc(handler)
            if not doc:
                raise TypeError(f"{handler.__qualname__}: the docstring is the operation's summary; add one")
            summary, _, description = doc.partition("\n")
            self.operations.append(
                Operation(
                    method=method,
                    path=path,
                    summary=summary.strip().rstrip("."),
                    description=description.strip(),
                    tag=self.tag,
                    permission=allow,
                    status=204 if response is None else status,
                    errors=tuple(sorted(set(errors))),
                    handler=handler,
                    path_params=path_params,
                    body_model=body,
                    query_model=query,
                    response_model=response,
                )
            )
            return handler

        return register


def _model(handler: Handler, name: str, hint: Any) -> type[BaseModel]:
    if not (isinstance(hint, type) and issubclass(hint, BaseModel)):
        raise TypeError(f"{handler.__qualname__}: `{name}` must be annotated with a pydantic model")
    return hint


def _read_signature(
    handler: Handler, path: str
) -> tuple[tuple[str, ...], type[BaseModel] | None, type[BaseModel] | None, type[BaseModel] | None]:
    """Path parameters, body, query and response models as the handler's signature declares them."""
    where = handler.__qualname__
    hints = get_type_hints(handler)
    params = list(inspect.signature(handler).parameters.values())
    if not params or hints.get(params[0].name) is not ApiRequest:
        raise TypeError(f"{where}: the first parameter must be `call: ApiRequest`")
    path_params = tuple(_PATH_PARAM.findall(path))
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    for param in params[1:]:
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(f"{where}: `{param.name}` must be keyword-only (after `*`)")
        hint = hints.get(param.name)
        if param.name in path_params:
            if hint is not int:
                raise TypeError(f"{where}: path parameter `{param.name}` must be an int")
        elif param.name == "body":
            body = _model(handler, "body", hint)
        elif param.name == "query":
            query = _model(handler, "query", hint)
        else:
            raise TypeError(f"{where}: `{param.name}` is not a path parameter, `body` or `query`")
    missing = set(path_params) - {p.name for p in params}
    if missing:
        raise TypeError(f"{where}: no parameter for {sorted(missing)} in {path}")
    returned = hints.get("return")
    response = None if returned is type(None) else _model(handler, "return", returned)
    return path_params, body, query, response


# --- serving ------------------------------------------------------------------------------------


class _InvalidRequest(Exception):
    def __init__(self, details: list[ErrorDetail]) -> None:
        super().__init__("; ".join(f"{d.field}: {d.message}" for d in details))
        self.details = details


def field_errors(errors: dict[str, str], *, type: str = "value_error") -> Exception:
    """A 422 `validation_error` naming each field at fault, for checks a handler makes against stored data."""
    return _InvalidRequest([ErrorDetail(field=f, message=m, type=type) for f, m in errors.items()])


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: list[ErrorDetail] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = ErrorResponse(error=ErrorBody(code=code, message=message, details=details))
    return web.Response(
        text=body.model_dump_json(exclude_none=True),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _unauthorized(message: str) -> web.Response:
    return error_response(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _validate(model: type[BaseModel], data: Any, where: str) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _InvalidRequest(
            [
                ErrorDetail(
                    field=".".join([where, *(str(part) for part in err["loc"])]),
                    message=err["msg"],
                    type=err["type"],
                )
                for err in e.errors(include_url=False)
            ]
        ) from None


def _nul_at(data: Any, where: str) -> str | None:
    """Where in decoded JSON (or a query) a NUL character sits: PostgreSQL text and JSONB refuse it."""
    if isinstance(data, str):
        return where if "\x00" in data else None
    if isinstance(data, dict):
        items: Iterable[tuple[Any, Any]] = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return None
    for key, value in items:
        found = _nul_at(key, where) or _nul_at(value, f"{where}.{key}")
        if found:
            return found
    return None


def _no_nul(data: Any, where: str) -> Any:
    found = _nul_at(data, where)
    if found is not None:
        raise _InvalidRequest(
            [ErrorDetail(field=found, message="NUL characters are not allowed", type="nul")]
        )
    return data


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _arguments(op: Operation, request: web.Request, raw_body: bytes) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for name in op.path_params:
        value = request.match_info[name]
        if not (value.isascii() and value.isdigit() and len(value) <= 19 and 0 < int(value) <= MAX_ID):
            raise NotFound(name.removesuffix("_id"))
        kwargs[name] = int(value)
    if op.query_model is not None:
        kwargs["query"] = _validate(op.query_model, _no_nul(dict(request.query), "query"), "query")
    if op.body_model is not None:
        try:
            data = json.loads(raw_body, parse_constant=_reject_constant)
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ApiError(400, "invalid_json", f"The request body is not valid JSON: {e}") from None
        kwargs["body"] = _validate(op.body_model, _no_nul(data, "body"), "body")
    return kwargs


def _view(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def view(request: web.Request) -> web.StreamResponse:
        token = _bearer_token(request)
        cookie = request.cookies.get(SESSION_COOKIE) if token is None else None
        if token is None and not cookie:
            return _unauthorized("Send an API token: `Authorization: Bearer <token>`.")
        # Read before the transaction: a slow client must not hold a database lock while uploading.
        raw_body = await request.read() if op.body_model is not None else b""
        try:
            async with request.app[DB].transaction() as session:
                if token is not None:
                    principal = await authenticate_token(session, token)
                    if principal is None:
                        return _unauthorized("The API token is unknown or was revoked.")
                else:
                    # The web UI's own scripts: the session cookie, plus its CSRF token to change anything.
                    assert cookie is not None
                    signed_in = await resume_session(session, cookie)
                    if signed_in is None:
                        return _unauthorized("The session ended; sign in again.")
                    if request.method not in ("GET", "HEAD") and not csrf_matches(
                        request.app[SETTINGS].secret_key,
                        signed_in.token_hash,
                        request.headers.get("X-CSRF-Token", ""),
                    ):
                        raise ApiError(403, "csrf", "Send the page's CSRF token in the X-CSRF-Token header.")
                    principal = signed_in.principal
                if op.permission is not None and not allows(principal.role, op.permission):
                    raise ApiError(
                        403, "forbidden", f"The {principal.role} role lacks the {op.permission} permission."
                    )
                call = ApiRequest(request, principal, session)
                result = await op.handler(call, **_arguments(op, request, raw_body))
        except _InvalidRequest as e:
            return error_response(422, "validation_error", str(e), details=e.details)
        except IntegrityError:
            raise ApiError(
                409, "conflict", "The change conflicts with the current state; reload and retry."
            ) from None
        await call._after_commit()
        if result is None:
            return web.Response(status=204)
        return web.Response(text=result.model_dump_json(), status=op.status, content_type="application/json")

    return view


def add_routes(app: web.Application, operations: Sequence[Operation]) -> None:
    """Register every declared operation with the app's router."""
    for op in operations:
        app.router.add_route(op.method, op.full_path, _view(op), name=op.operation_id)
