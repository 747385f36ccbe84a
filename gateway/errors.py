"""JSON errors, `{"error": {"code", "message"}}`, for everything the gateway answers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error with an HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class NotFound(ApiError):
    def __init__(self, what: str = "resource") -> None:
        super().__init__(404, "not_found", f"{what} not found")


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every failure into a JSON error; a database failure is a 503 so providers retry."""
    try:
        return await handler(request)
    except ApiError as e:
        return json_error(e.status, e.code, e.message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return json_error(e.status, _HTTP_CODES.get(e.status, "http_error"), e.reason)
    except SQLAlchemyError:
        logger.exception("database error on %s %s", request.method, request.path)
        return json_error(503, "database_unavailable", "The database could not complete the request; retry.")
