"""Hostile or broken endpoints (issue 7): every attempt ends as a ``Failed`` value with a clear error,
within the whole-attempt timeout, with a bounded excerpt, and without slowing other attempts.

Drives ``hookstream.sender.http.post_webhook`` directly against real local servers: raw
``asyncio.start_server`` TCP servers for the misbehaviours, aiohttp for well-formed answers.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import orjson
import pytest
import trustme
from aiohttp import web

from hookstream.core.model import DeliveryTask, Failed, Succeeded
from hookstream.core.signing import decode_secret, generate_secret, signature_header
from hookstream.core.webhooks import Webhook
from hookstream.sender.http import make_session, post_webhook
from tests.receiver import Behaviour, Receiver
from tests.support import free_port, wait_for

SECRET = generate_secret()
TIMEOUT_S = 1.0
TIMEOUT_SLACK_S = 1.5
EXCERPT_CAP_BYTES = 4096


# --- fixtures and helpers shared with test_ssrf.py -------------------------------------------------


def make_webhook(url: str) -> Webhook:
    return Webhook(
        id="wh_hostile",
        organization_id="org_hostile",
        url=url,
        event_types=frozenset({"order.created"}),
        store_ids=frozenset({"store_1"}),
        enabled=True,
        key=decode_secret(SECRET),
        previous_key=None,
        previous_key_expires_at=None,
    )


def make_task(event_id: str = "evt_hostile_1") -> DeliveryTask:
    body = orjson.dumps({"id": event_id, "type": "order.created", "created_at": "2024-01-01T00:00:00Z",
                         "organization_id": "org_hostile", "store_id": "store_1", "data": {"n": 1}}).decode()
    return DeliveryTask(
        delivery_id=1,
        webhook_id="wh_hostile",
        organization_id="org_hostile",
        event_id=event_id,
        event_type="order.created",
        store_id="store_1",
        occurred_at="2024-01-01T00:00:00Z",
        attempt=1,
        retry_index=0,
        manual=False,
        body=body,
    )


async def attempt(session: aiohttp.ClientSession, url: str, *, timeout_s: float = TIMEOUT_S,
                  allow_private_networks: bool = True, cap: int = EXCERPT_CAP_BYTES,
                  event_id: str = "evt_hostile_1") -> tuple[Succeeded | Failed, float]:
    """One ``post_webhook`` call; returns the result and the elapsed seconds."""
    started = time.monotonic()
    result = await post_webhook(session, make_webhook(url), make_task(event_id), timeout_s=timeout_s,
                                excerpt_cap_bytes=cap, allow_private_networks=allow_private_networks)
    return result, time.monotonic() - started


@dataclass
class RawRequest:
    head: bytes
    body: bytes

    @property
    def path(self) -> str:
        return self.head.split(b" ", 2)[1].decode()


ServerBehaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    """A raw TCP server on 127.0.0.1 that runs ``behaviour`` after reading each request.

    Records every accepted connection and every complete request, and whether a later write found
    the connection closed by the client (``client_closed``). All handler tasks are cancelled and
    every transport closed on exit, so nothing leaks into the next test.
    """

    behaviour: ServerBehaviour
    read_request: bool = True
    connections: int = 0
    requests: list[RawRequest] = field(default_factory=list)
    client_closed: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        assert self._server is not None
        self._server.close()
        self._stopping.set()
        for task in list(self._tasks):
            await task
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The stream callback task itself is never cancelled (on 3.11 asyncio logs a cancelled
        # callback task as an error); the behaviour runs in an inner task that is cancelled on exit.
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        work = asyncio.create_task(self._run_behaviour(reader, writer))
        stop = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (work, stop):
                t.cancel()
            await asyncio.gather(work, stop, return_exceptions=True)
            writer.transport.abort()
            self._tasks.discard(task)

    async def _run_behaviour(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.read_request:
                head = await reader.readuntil(b"\r\n\r\n")
                match = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
                body = await reader.readexactly(int(match.group(1))) if match else b""
                self.requests.append(RawRequest(head, body))
            await self.behaviour(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.client_closed.set()


async def hang_forever() -> None:
    await asyncio.Event().wait()


async def answer_ok(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    await writer.drain()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(allow_private_networks=True) as s:
        yield s


def assert_failed_in_time(result: Succeeded | Failed, elapsed: float, *, timeout_s: float = TIMEOUT_S) -> Failed:
    assert isinstance(result, Failed), result
    assert result.error, result
    assert elapsed < timeout_s + TIMEOUT_SLACK_S, f"took {elapsed:.2f}s with a {timeout_s}s timeout"
    if result.response_excerpt is not None:
        assert len(result.response_excerpt.encode()) <= EXCERPT_CAP_BYTES
    return result


# --- the baseline: the harness can tell success from failure ----------------------------------------


async def test_healthy_endpoint_succeeds_with_a_signed_post(session) -> None:
    async with Receiver() as receiver:
        result, elapsed = await attempt(session, receiver.url("/hook"))
    assert isinstance(result, Succeeded) and (result.http_status, result.response_excerpt) == (200, "ok")
    assert elapsed < 1.0
    [request] = receiver.requests
    assert request.headers["webhook-id"] == "evt_hostile_1"
    # the full Standard Webhooks signature over id.timestamp.body, with the webhook's key
    expected = signature_header([decode_secret(SECRET)], "evt_hostile_1", int(request.headers["webhook-timestamp"]),
                                request.body)
    assert request.headers["webhook-signature"] == expected


async def test_raw_server_answering_properly_succeeds(session) -> None:
    async with RawServer(answer_ok) as server:
        result, _ = await attempt(session, server.url())
    assert isinstance(result, Succeeded) and (result.http_status, result.response_excerpt) == (200, "ok")
    [request] = server.requests
    assert request.path == "/hook"
    assert b"webhook-signature: v1," in request.head.lower()


# --- hostile endpoints ------------------------------------------------------------------------------


async def test_hang_before_any_response_times_out(session) -> None:
    async def hang(_reader, _writer) -> None:
        await hang_forever()

    async with RawServer(hang) as server:
        result, elapsed = await attempt(session, server.url())
    failed = assert_failed_in_time(result, elapsed)
    assert failed.error == "timeout after 1s"
    assert failed.retryable and failed.sent and failed.http_status is None
    assert elapsed >= TIMEOUT_S * 0.9  # it really waited for the endpoint, then gave up
    assert len(server.requests) == 1


async def test_hang_after_headers_times_out(session) -> None:
    async def headers_then_hang(_reader, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n")
        await writer.drain()
        await hang_forever()

    async with RawServer(headers_then_hang) as server:
        result, elapsed = await attempt(session, server.url())
    failed = assert_failed_in_time(result, elapsed)
    assert failed.error == "timeout after 1s"
    assert failed.retryable
    assert len(server.requests) == 1


async def test_trickled_body_times_out_as_a_whole(session) -> None:
    """1 byte every 200 ms forever: each read makes progress, so only a whole-attempt timeout ends it."""

    async def trickle(_reader, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000000\r\n\r\n")
        await writer.drain()
        while True:
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.2)

    async with RawServer(trickle) as server:
        result, elapsed = await attempt(session, server.url())
    failed = assert_failed_in_time(result, elapsed)
    assert failed.error == "timeout after 1s"
    assert elapsed >= TIMEOUT_S * 0.9


def endless_body(status_line: bytes, *, chunked: bool) -> ServerBehaviour:
    async def send(_reader, writer) -> None:
        framing = b"Transfer-Encoding: chunked\r\n" if chunked else b"Connection: close\r\n"
        writer.write(status_line + b"\r\nContent-Type: text/plain\r\n" + framing + b"\r\n")
        block = b"x" * 65536
        if chunked:
            block = b"%x\r\n" % len(block) + block + b"\r\n"
        while True:  # until the client hangs up (ConnectionError) or the server is torn down
            writer.write(block)
            await writer.drain()

    return send


@pytest.mark.parametrize("chunked", [False, True], ids=["read-until-close", "chunked"])
async def test_endless_2xx_body_reads_the_cap_then_hangs_up_as_success(session, chunked: bool) -> None:
    """Decision (CONTRACT §3: success is any 2xx; bodies are read up to a cap): a 200 whose body
    never ends is a success with the first ``cap`` bytes as the excerpt; the connection is dropped
    right after the cap, so the attempt ends promptly instead of at the timeout."""
    async with RawServer(endless_body(b"HTTP/1.1 200 OK", chunked=chunked)) as server:
        result, elapsed = await attempt(session, server.url(), timeout_s=5.0)
        assert isinstance(result, Succeeded), result
        assert result.http_status == 200
        assert result.response_excerpt == "x" * EXCERPT_CAP_BYTES
        assert elapsed < 1.0, f"an endless body held the attempt for {elapsed:.2f}s"
        # The client really hung up (the connection is not left streaming into a pool).
        await asyncio.wait_for(server.client_closed.wait(), 5.0)


async def test_endless_error_body_is_capped_and_fails_promptly(session) -> None:
    async with RawServer(endless_body(b"HTTP/1.1 500 Internal Server Error", chunked=False)) as server:
        result, elapsed = await attempt(session, server.url(), timeout_s=5.0)
        failed = assert_failed_in_time(result, elapsed, timeout_s=5.0)
        assert failed.http_status == 500 and failed.error == "HTTP 500" and failed.retryable
        assert failed.response_excerpt == "x" * EXCERPT_CAP_BYTES
        assert elapsed < 1.0
        await asyncio.wait_for(server.client_closed.wait(), 5.0)


async def test_small_cap_bounds_the_excerpt(session) -> None:
    async with RawServer(endless_body(b"HTTP/1.1 503 Service Unavailable", chunked=True)) as server:
        result, elapsed = await attempt(session, server.url(), cap=10)
    failed = assert_failed_in_time(result, elapsed)
    assert failed.http_status == 503
    assert failed.response_excerpt == "x" * 10


async def test_huge_header_is_an_invalid_response(session) -> None:
    async def huge_header(_reader, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nX-Huge: " + b"a" * 100_000 + b"\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await hang_forever()

    async with RawServer(huge_header) as server:
        result, elapsed = await attempt(session, server.url())
    failed = assert_failed_in_time(result, elapsed)
    assert failed.error.startswith("invalid HTTP response"), failed.error
    assert elapsed < TIMEOUT_S, "the parser should refuse the header, not wait for the timeout"
    assert len(failed.error) <= 500


async def test_endless_stream_of_headers_is_an_invalid_response(session) -> None:
    """Many small headers, never ending: refused by the header-count limit, not buffered forever."""

    async def endless_headers(_reader, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        n = 0
        while True:
            writer.write(b"".join(b"X-H%d: v\r\n" % (n + i) for i in range(1000)))
            n += 1000
            await writer.drain()

    async with RawServer(endless_headers) as server:
        result, elapsed = await attempt(session, server.url())
    failed = assert_failed_in_time(result, elapsed)
    assert failed.error.startswith("invalid HTTP response"), failed.error
    assert elapsed < TIMEOUT_S


async def test_redirect_is_a_failure_and_location_is_not_requested(session) -> None:
    async with Receiver() as elsewhere, Receiver() as receiver:
        location = elsewhere.url("/elsewhere")
        receiver.set("/hook", Behaviour(status=302, headers={"Location": location}, body="moved"))
        result, elapsed = await attempt(session, receiver.url("/hook"))
        # Proof the Location server works, so "not requested" below means something.
        async with aiohttp.ClientSession() as probe, probe.get(location) as response:
            assert response.status == 200
    failed = assert_failed_in_time(result, elapsed)
    assert failed.http_status == 302
    assert failed.error == "HTTP 302 (redirects are not followed)"
    assert [r.path for r in receiver.requests] == ["/hook"]
    assert [r.path for r in elsewhere.requests] == ["/elsewhere"]  # only the probe's GET


@pytest.mark.parametrize("status", [301, 303, 307, 308])
async def test_every_redirect_status_is_a_failure(session, status: int) -> None:
    async with Receiver() as elsewhere, Receiver() as receiver:
        receiver.set("/hook", Behaviour(status=status, headers={"Location": elsewhere.url("/elsewhere")}))
        result, elapsed = await attempt(session, receiver.url("/hook"))
    failed = assert_failed_in_time(result, elapsed)
    assert failed.http_status == status
    assert elsewhere.requests == []


async def test_close_mid_response_is_a_failure(session) -> None:
    async def close_mid_body(_reader, writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n" + b"y" * 10)
        await writer.drain()
        writer.close()

    async with RawServer(close_mid_body) as server:
        result, elapsed = await attempt(session, server.url())
    failed = assert_failed_in_time(result, elapsed)
    assert failed.retryable and failed.http_status is None
    # A truncated 200 must not count as delivered.
    assert "payload is not completed" in failed.error.lower() or "closed" in failed.error.lower(), failed.error
    assert elapsed < TIMEOUT_S


async def test_close_before_any_response_is_a_failure(session) -> None:
    async def close_at_once(_reader, writer) -> None:
        writer.close()

    async with RawServer(close_at_once) as server:
        result, elapsed = await attempt(session, server.url())
    failed = assert_failed_in_time(result, elapsed)
    assert failed.error.startswith("connection closed by endpoint"), failed.error
    assert failed.retryable
    assert elapsed < TIMEOUT_S


async def test_invalid_http_is_an_invalid_response(session) -> None:
    async def garbage(_reader, writer) -> None:
        writer.write(b"HELLO\r\n\r\n")
        await writer.drain()
        await hang_forever()  # keep the connection open: the parser must refuse, not wait for EOF

    async with RawServer(garbage) as server:
        result, elapsed = await attempt(session, server.url())
    failed = assert_failed_in_time(result, elapsed)
    assert failed.error.startswith("invalid HTTP response"), failed.error
    assert elapsed < TIMEOUT_S


async def test_tls_with_an_untrusted_certificate_is_a_tls_failure(session) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    hits: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]
        url = f"https://127.0.0.1:{port}/hook"
        result, elapsed = await attempt(session, url)
        # The same server is fine for a client that trusts the CA: the failure above is about trust.
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        async with aiohttp.ClientSession() as probe, probe.post(url, data=b"{}", ssl=client_ctx) as response:
            assert response.status == 200
    finally:
        await runner.cleanup()
    failed = assert_failed_in_time(result, elapsed)
    assert "TLS" in failed.error, failed.error
    assert "CERTIFICATE_VERIFY_FAILED" in failed.error or "certificate" in failed.error.lower(), failed.error
    assert hits == ["/hook"]  # only the trusting probe got through


async def test_connection_refused_is_a_connection_failure(session) -> None:
    port = free_port()  # bound then released: nothing listens there
    result, elapsed = await attempt(session, f"http://127.0.0.1:{port}/hook")
    failed = assert_failed_in_time(result, elapsed)
    assert failed.error.startswith("connection error"), failed.error
    assert failed.retryable and failed.sent


# --- hostile endpoints do not harm other deliveries --------------------------------------------------


async def test_hanging_endpoints_do_not_delay_a_healthy_one(session) -> None:
    async def hang(_reader, _writer) -> None:
        await hang_forever()

    hang_timeout_s = 4.0
    async with RawServer(hang) as hostile, Receiver() as healthy:
        hanging = [asyncio.create_task(attempt(session, hostile.url(f"/hang/{i}"), timeout_s=hang_timeout_s,
                                               event_id=f"evt_hang_{i}"))
                   for i in range(10)]
        try:
            await wait_for(lambda: len(hostile.requests) == 10, timeout_s=5, message="10 hanging requests")
            result, elapsed = await attempt(session, healthy.url("/hook"), timeout_s=hang_timeout_s)
            assert isinstance(result, Succeeded) and (result.http_status, result.response_excerpt) == (200, "ok")
            assert elapsed < 1.0, f"healthy attempt took {elapsed:.2f}s behind hanging ones"
            assert not any(t.done() for t in hanging), "the hanging attempts should still be hanging"
        finally:
            outcomes = await asyncio.gather(*hanging)
    for failed, hang_elapsed in outcomes:
        assert isinstance(failed, Failed) and failed.error == "timeout after 4s"
        assert hang_elapsed < hang_timeout_s + TIMEOUT_SLACK_S


async def test_hanging_path_does_not_delay_a_healthy_path_on_the_same_host_and_port(session) -> None:
    """Same host and port: the pool has no per-host cap, so hung connections cannot starve others."""
    hang_timeout_s = 4.0
    async with Receiver() as receiver:
        receiver.set("/hang", Behaviour(mode="hang"))
        hanging = [asyncio.create_task(attempt(session, receiver.url("/hang"), timeout_s=hang_timeout_s,
                                               event_id=f"evt_hang_{i}"))
                   for i in range(10)]
        try:
            await wait_for(lambda: len(receiver.at("/hang")) == 10, timeout_s=5, message="10 hanging requests")
            result, elapsed = await attempt(session, receiver.url("/ok"), timeout_s=hang_timeout_s)
            assert isinstance(result, Succeeded) and (result.http_status, result.response_excerpt) == (200, "ok")
            assert elapsed < 1.0, f"healthy attempt took {elapsed:.2f}s behind hanging ones"
            assert not any(t.done() for t in hanging)
        finally:
            outcomes = await asyncio.gather(*hanging)
    assert all(isinstance(r, Failed) and r.error == "timeout after 4s" for r, _ in outcomes)


async def test_many_endless_bodies_at_once_keep_memory_bounded(session) -> None:
    """20 concurrent endless 200 bodies: each attempt ends after its cap, none buffers the stream."""
    import tracemalloc

    async with RawServer(endless_body(b"HTTP/1.1 200 OK", chunked=False)) as server:
        tracemalloc.start()
        try:
            results = await asyncio.gather(*(attempt(session, server.url(f"/e/{i}"), timeout_s=5.0)
                                             for i in range(20)))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    for result, elapsed in results:
        assert isinstance(result, Succeeded) and len(result.response_excerpt) == EXCERPT_CAP_BYTES
        assert elapsed < 3.0
    # aiohttp pauses reading at its buffer high-water mark; 20 x (cap + buffers) stays far below this.
    assert peak < 64 * 1024 * 1024, f"peak traced memory {peak / 1e6:.1f} MB"

