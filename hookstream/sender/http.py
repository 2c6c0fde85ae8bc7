"""One HTTP attempt: sign, POST with a whole-attempt timeout, never follow redirects, read a capped excerpt.

Every way an attempt can go wrong comes back as a :class:`Failed` value, never as an exception.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import ssl
import zlib
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from hookstream import __version__
from hookstream.core.errors import describe
from hookstream.core.model import AttemptResult, DeliveryTask, Failed, ResponseHeaders, SentRequest, Succeeded
from hookstream.core.netguard import PublicOnlyResolver, UnsafeEndpointError, check_connect_host
from hookstream.core.retry import RETRY_AFTER_STATUSES, is_retryable_status, parse_retry_after_s
from hookstream.core.signing import signature_header
from hookstream.core.text import storable_text
from hookstream.core.webhooks import Webhook

USER_AGENT = f"hookstream/{__version__}"
MAX_ERROR_CHARS = 500
# What is kept of a response's headers for the attempt's detail view: the endpoint chooses them, so
# they are capped in number and size (aiohttp itself refuses a header line over 8 KiB).
MAX_RESPONSE_HEADERS = 32
MAX_HEADER_NAME_BYTES = 100
MAX_HEADER_VALUE_BYTES = 300


def make_session(*, allow_private_networks: bool) -> aiohttp.ClientSession:
    """The one shared session: keep-alive pool, public-only resolver, no proxies from the environment.

    No connection limits here: per-webhook concurrency is capped by the endpoint gates, and a
    per-host cap would let one hanging webhook starve healthy webhooks on the same host.
    """
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=0,
        resolver=PublicOnlyResolver(allow_private_networks=allow_private_networks),
        ttl_dns_cache=30,
        enable_cleanup_closed=True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # The whole-attempt timeout is enforced around each request (asyncio.timeout in post_webhook);
        # a second timer inside aiohttp per request would only cost CPU.
        timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None),
        trust_env=False,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    )


def build_headers(task: DeliveryTask, webhook: Webhook, body: bytes, now: dt.datetime) -> dict[str, str]:
    timestamp = int(now.timestamp())
    return {
        "content-type": "application/json",
        "webhook-id": task.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(webhook.signing_keys(now), task.event_id, timestamp, body),
        "user-agent": USER_AGENT,
        # Only the excerpt is kept, so compression buys nothing; an endpoint that compresses anyway
        # has its excerpt decompressed within the cap (read_excerpt).
        "accept-encoding": "identity",
    }


async def read_excerpt(response: aiohttp.ClientResponse, cap_bytes: int) -> tuple[str, bool]:
    """Up to ``cap_bytes`` of the body as text PostgreSQL can store, and whether the whole body was read.

    The body is the endpoint's, so hostile: a gzip or deflate body (sent though we ask for identity)
    is decompressed, but never to more than ``cap_bytes`` (a zip bomb costs nothing); the text is
    then made valid (see :func:`hookstream.core.text.storable_text`).
    """
    chunks: list[bytes] = []
    remaining = cap_bytes
    complete = False
    while remaining > 0:
        chunk = await response.content.read(remaining)
        if not chunk:
            complete = True
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    else:
        complete = response.content.at_eof()
    raw = b"".join(chunks)
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        raw = decompress_bounded(raw, encoding, cap_bytes)
    return storable_text(raw, cap_bytes), complete


def decompress_bounded(raw: bytes, encoding: str, cap_bytes: int) -> bytes:
    """At most ``cap_bytes`` of the decompressed body; what cannot be decompressed stays as it came."""
    # wbits: 16+MAX_WBITS reads a gzip header, MAX_WBITS a zlib stream, -MAX_WBITS raw deflate
    # (servers disagree on what "deflate" means, so both are tried).
    candidates = (16 + zlib.MAX_WBITS,) if encoding != "deflate" else (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    for wbits in candidates:
        try:
            out = zlib.decompressobj(wbits).decompress(raw, cap_bytes)
        except zlib.error:
            continue
        return out
    return raw


def capture_headers(headers: Any) -> ResponseHeaders:
    """The first ``MAX_RESPONSE_HEADERS`` response headers, each name and value cut to its cap and
    made storable (valid UTF-8 without U+0000: they go into jsonb)."""
    captured: list[tuple[str, str]] = []
    for name, value in headers.items():
        if len(captured) == MAX_RESPONSE_HEADERS:
            break
        captured.append((storable_text(name, MAX_HEADER_NAME_BYTES).lower(),
                         storable_text(value, MAX_HEADER_VALUE_BYTES)))
    return tuple(captured)


def storable_error(error: str) -> str:
    """An error message as storable text: exception texts can quote the endpoint's bytes."""
    return storable_text(error, MAX_ERROR_CHARS)


def _storable_errors(attempt: Callable[..., Awaitable[AttemptResult]]) -> Callable[..., Awaitable[AttemptResult]]:
    """Exception texts can quote the endpoint's bytes: the error of a Failed result is made storable."""
    @functools.wraps(attempt)
    async def wrapper(*args: Any, **kwargs: Any) -> AttemptResult:
        result = await attempt(*args, **kwargs)
        if isinstance(result, Failed):
            result = dataclasses.replace(result, error=storable_error(result.error))
        return result

    return wrapper


@_storable_errors
async def post_webhook(
    session: aiohttp.ClientSession,
    webhook: Webhook,
    task: DeliveryTask,
    *,
    timeout_s: float,
    excerpt_cap_bytes: int,
    allow_private_networks: bool,
) -> AttemptResult:
    """Make one signed POST; any 2xx is success, everything else (3xx included) a failure. Never
    raises for anything the endpoint does; every text in the result is storable."""
    body = task.body.encode()
    request: SentRequest | None = None
    try:
        check_connect_host(urlsplit(webhook.url).hostname or "", allow_private_networks=allow_private_networks)
        headers = build_headers(task, webhook, body, dt.datetime.now(dt.UTC))
        request = SentRequest(webhook.url, headers)
        async with asyncio.timeout(timeout_s):
            async with session.post(webhook.url, data=body, headers=headers, allow_redirects=False) as response:
                response_headers = capture_headers(response.headers)
                excerpt, complete = await read_excerpt(response, excerpt_cap_bytes)
                if not complete:
                    response.close()  # an endless or oversized body: drop the connection, keep the excerpt
                status = response.status
                if 200 <= status < 300:
                    return Succeeded(http_status=status, response_excerpt=excerpt or None, request=request,
                                     response_headers=response_headers)
                retry_after = None
                if status in RETRY_AFTER_STATUSES:
                    retry_after = parse_retry_after_s(response.headers.get("Retry-After"))
                error = f"HTTP {status}"
                if 300 <= status < 400:
                    error += " (redirects are not followed)"
                return Failed(retryable=is_retryable_status(status), error=error, http_status=status,
                              response_excerpt=excerpt or None, retry_after_s=retry_after, request=request,
                              response_headers=response_headers)
    except UnsafeEndpointError as exc:
        return Failed(retryable=False, error=f"unsafe endpoint: {exc}"[:MAX_ERROR_CHARS], sent=False)
    except TimeoutError:
        return Failed(retryable=True, error=f"timeout after {timeout_s:g}s", request=request)
    except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
        return Failed(retryable=True, error="TLS error: " + describe(exc, MAX_ERROR_CHARS), request=request)
    except aiohttp.ClientConnectorError as exc:
        cause = exc.os_error if isinstance(exc.os_error, UnsafeEndpointError) else None
        if cause is not None:
            return Failed(retryable=False, error=f"unsafe endpoint: {cause}"[:MAX_ERROR_CHARS], sent=False)
        return Failed(retryable=True, error="connection error: " + describe(exc, MAX_ERROR_CHARS), request=request)
    except aiohttp.ServerDisconnectedError as exc:
        return Failed(retryable=True, error="connection closed by endpoint: " + describe(exc, MAX_ERROR_CHARS),
                      request=request)
    except aiohttp.ClientResponseError as exc:
        return Failed(retryable=True, error="invalid HTTP response: " + describe(exc, MAX_ERROR_CHARS),
                      request=request)
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return Failed(retryable=True, error="request failed: " + describe(exc, MAX_ERROR_CHARS), request=request)
