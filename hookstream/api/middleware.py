"""Cross-cutting request handling: one DEBUG log line and a metric per request, errors in the API's
shape, and API-key authentication of everything under ``/v1``.

Keys are never logged: the log line carries the method, the path (no query string, no headers),
the status and the duration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from prometheus_client import Counter, Histogram

from hookstream.api.errors import ApiError, error_response, field_error, from_http_exception
from hookstream.core.errors import describe, is_transient
from hookstream.core.orgs import authenticate

log = logging.getLogger("hookstream.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ORG_KEY = web.RequestKey("organization_id", str)
AUTH_PREFIX = "/v1"
MAX_API_KEY_CHARS = 256
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"})

API_REQUESTS = Counter("hookstream_api_requests_total", "Admin API requests by route and status",
                       ["method", "route", "status"])
API_REQUEST_DURATION = Histogram(
    "hookstream_api_request_duration_seconds", "Admin API request duration",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


def route_label(request: web.Request) -> str:
    """The route template (``/v1/webhooks/{id}``), never the raw path: labels stay low-cardinality."""
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def observe_and_shape_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(from_http_exception(exc))
    except asyncpg.DataError as exc:
        # A value PostgreSQL cannot store or compare (bad encoding, out of range): the client's input.
        log.info("rejected a value PostgreSQL refused in %s %s: %s", request.method, route_label(request),
                 type(exc).__name__)
        response = error_response(ApiError(422, "invalid_value", "a value in the request cannot be stored"))
    except Exception as exc:
        if is_transient(exc):  # the database is down, restarting or overloaded: the client may retry
            log.warning("PostgreSQL unavailable while serving %s %s (%s)", request.method, route_label(request),
                        describe(exc))
            response = error_response(ApiError(503, "unavailable", "the database is unavailable; try again",
                                               headers={"Retry-After": "1"}))
        else:
            log.exception("unhandled error in %s %s", request.method, route_label(request))
            response = error_response(ApiError(500, "internal_error", "internal error"))
    elapsed = time.perf_counter() - started
    method = request.method if request.method in _KNOWN_METHODS else "other"
    API_REQUESTS.labels(method, route_label(request), str(response.status)).inc()
    API_REQUEST_DURATION.observe(elapsed)
    log.debug("%s %s -> %d (%.1f ms)", request.method, request.path, response.status, elapsed * 1000)
    return response


def bearer_key(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or len(key) > MAX_API_KEY_CHARS:
        return None
    # Keys are printable ASCII; anything else (bytes aiohttp kept as surrogates, control characters)
    # is simply not a key: 401, never an encoding error.
    if not (key.isascii() and key.isprintable()):
        return None
    return key


def make_auth_middleware(pool: asyncpg.Pool):
    @web.middleware
    async def require_api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path != AUTH_PREFIX and not path.startswith(AUTH_PREFIX + "/"):
            return await handler(request)
        key = bearer_key(request)
        challenge = {"WWW-Authenticate": 'Bearer realm="hookstream"'}
        if key is None:
            raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <api key>'",
                           headers=challenge)
        async with pool.acquire() as conn:
            org_id = await authenticate(conn, key)
        if org_id is None:
            raise ApiError(401, "unauthorized", "invalid API key", headers=challenge)
        # U+0000 cannot be in any stored id or value: such a path names nothing, such a query is invalid.
        if any("\x00" in value for value in request.match_info.values()):
            raise ApiError(404, "not_found", "no such resource")
        for name, value in request.query.items():
            if "\x00" in value or "\x00" in name:
                raise field_error(name.replace("\x00", ""), "must not contain the NUL character (U+0000)")
        request[ORG_KEY] = org_id
        return await handler(request)

    return require_api_key


def org_of(request: web.Request) -> str:
    return request[ORG_KEY]
