"""The API's error shape and JSON responses.

Every error answers ``{"error": {"code", "message", "field"?}}``. Handlers raise :class:`ApiError`;
the middleware in ``middleware.py`` turns it (and aiohttp's own HTTP exceptions) into that shape.

=====  ======================  ================================================================
HTTP   code                    when
=====  ======================  ================================================================
400    invalid_json            the body is not a JSON object
400    invalid_cursor          ``cursor`` is not one this API handed out (``field`` = "cursor")
401    unauthorized            no ``Authorization: Bearer <key>``, or a key that is not valid
404    not_found               no such resource in the caller's organization (never 403)
405    method_not_allowed      the path exists, the method does not
409    conflict                the resource already exists, or its state forbids the action
413    payload_too_large       the body is over MAX_BODY_BYTES
422    validation_error        a field or query parameter is invalid (``field`` names it)
500    internal_error          a bug; logged with its traceback, details never sent
=====  ======================  ================================================================
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

JSON_CONTENT_TYPE = "application/json"
# Datetimes from PostgreSQL are aware UTC values; OPT_UTC_Z writes them as RFC 3339 with "Z".
_ORJSON_OPTIONS = orjson.OPT_UTC_Z

_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answer; ``field`` names the offending body field or query parameter, if any."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}


def field_error(field: str, message: str) -> ApiError:
    """A 422 naming ``field``; the message starts with the field so it reads well on its own."""
    return ApiError(422, "validation_error", f"{field}: {message}", field=field)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=_ORJSON_OPTIONS)


def json_response(value: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(value), status=status, content_type=JSON_CONTENT_TYPE, headers=headers)


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def error_response(error: ApiError) -> web.Response:
    return json_response(error_body(error.code, error.message, error.field), status=error.status,
                         headers=error.headers)


def from_http_exception(exc: web.HTTPException) -> ApiError:
    """aiohttp's own errors (unknown route, wrong method, body too large) in the API's shape."""
    status = exc.status
    code = _CODE_BY_STATUS.get(status, "error" if status >= 400 else "redirect")
    message = exc.reason or code
    if status == 404:
        message = "no such route"
    elif status == 413:
        message = "request body is too large"
    headers = {}
    if status == 405 and "Allow" in exc.headers:
        headers["Allow"] = exc.headers["Allow"]
    return ApiError(status, code, message, headers=headers)
