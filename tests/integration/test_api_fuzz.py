"""The admin API under fuzzing (issue 7, "Bad input"; CONTRACT §5): a real `hookstream api` process,
its real PostgreSQL, and schemathesis generating requests from ``hookstream/schemas/openapi.json``.

For every operation of the document, valid and invalid requests (positive and negative generation),
with random and with real resource ids: never a 5xx, and every response conforms to the document
(status code, content type, body schema); every error has the shape ``{"error": {"code", "message"}}``.
Then the explicit cases: bodies over 1 MiB, malformed JSON, wrong content types, no key, and another
organization's key on every resource path.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import io
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from hookstream import resources
from hookstream.core.orgs import create_organization
from tests.support import ApiOrg, wait_for

pytestmark = pytest.mark.integration

OPENAPI_PATH = Path(str(resources.OPENAPI))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Per operation, per generation mode, per id source: about 24 operations x 2 x (1 or 2) x this many requests.
MAX_EXAMPLES = 12
MAX_BODY_BYTES = 1024 * 1024
REQUEST_TIMEOUT_S = 10
# No sender runs here, and the fixture's Kafka is real: /readyz may answer 503 while a broker is slow.
NO_2XX_EXPECTED = frozenset({"GET /readyz"})
VALID_BODIES = {"POST /v1/webhooks": {"url": "http://127.0.0.1:9/hook", "event_types": ["order.created"],
                                      "store_ids": ["s1"]},
                "POST /v1/filters/test": {"filter": 'data.order.currency == "USD"', "event_type": "order.created"},
                "POST /v1/webhooks/{webhook_id}/recover": {"since": "2026-01-01T00:00:00Z"}}


@dataclass
class Server:
    base_url: str
    a: ApiOrg
    b: ApiOrg
    # Resources of organization A, for path parameters
    store_id: str
    webhook_id: str
    event_id: str
    webhook_secret: str
    recovery_id: str


async def call(session: aiohttp.ClientSession, method: str, url: str, *, headers: dict[str, str] | None = None,
               data: Any = None) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON body or the raw bytes)."""
    async with session.request(method, url, headers=headers, data=data) as response:
        raw = await response.read()
        body: Any = raw
        if response.content_type == "application/json" and raw:
            body = orjson.loads(raw)
        return response.status, dict(response.headers), body


def assert_error_shape(status: int, body: Any, context: Any) -> None:
    assert isinstance(body, dict), (context, status, body)
    assert set(body) == {"error"}, (context, status, body)
    error = body["error"]
    assert isinstance(error, dict) and set(error) <= {"code", "message", "field"}, (context, status, body)
    assert isinstance(error["code"], str) and error["code"], (context, status, body)
    assert isinstance(error["message"], str) and error["message"], (context, status, body)


@pytest.fixture
async def server(db, spawn, hs_env) -> AsyncIterator[Server]:
    """`hookstream api` on its own port; organization A with a store, a webhook and one delivery
    (a test send, left pending: no sender runs here), organization B with a store and a webhook."""
    a = ApiOrg(*await create_organization(db, "A"))
    b = ApiOrg(*await create_organization(db, "B"))
    process = spawn("api")
    base_url = f"http://{hs_env['HOOKSTREAM_API_LISTEN']}"

    async with aiohttp.ClientSession() as session:
        async def healthy() -> bool:
            if process.proc.poll() is not None:
                raise AssertionError(f"hookstream api exited:\n{process.output()}")
            try:
                status, _, _ = await call(session, "GET", f"{base_url}/healthz")
            except aiohttp.ClientError:
                return False
            return status == 200

        await wait_for(healthy, timeout_s=30, message="hookstream api to listen")
        for org, store in ((a, "a_only"), (a, "s1"), (b, "s1")):
            status, _, body = await call(session, "POST", f"{base_url}/v1/stores", headers=org.headers,
                                         data=orjson.dumps({"id": store, "name": store}))
            assert status == 201, body
        hook = {"url": "http://127.0.0.1:9/hook", "event_types": ["order.created"], "store_ids": ["s1"]}
        status, _, created = await call(session, "POST", f"{base_url}/v1/webhooks", headers=a.headers,
                                        data=orjson.dumps(hook))
        assert status == 201, created
        status, _, other = await call(session, "POST", f"{base_url}/v1/webhooks", headers=b.headers,
                                      data=orjson.dumps(hook))
        assert status == 201, other
        status, _, sent = await call(session, "POST", f"{base_url}/v1/webhooks/{created['id']}/test",
                                     headers=a.headers)
        assert status == 202, sent
        # an attempt of that delivery (recorded as a sender would), and a recovery, to read back
        await db.execute("INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, http_status, outcome,"
                         " request_url, request_headers, response_headers)"
                         " SELECT id, 1, now(), 3, 500, 'failed', 'http://127.0.0.1:9/hook', '{\"a\": \"b\"}',"
                         " '[[\"c\", \"d\"]]' FROM deliveries WHERE event_id = $1", sent["event_id"])
        status, _, recovery = await call(session, "POST", f"{base_url}/v1/webhooks/{created['id']}/recover",
                                         headers=a.headers, data=orjson.dumps({"since": "2000-01-01T00:00:00Z",
                                                                               "until": "2000-01-02T00:00:00Z"}))
        assert status == 202, recovery
    yield Server(base_url, a, b, "a_only", created["id"], sent["event_id"], created["secret"], recovery["id"])


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def real_path_parameters(server: Server) -> dict[str, str]:
    return {"webhook_id": server.webhook_id, "event_id": server.event_id, "store_id": server.store_id,
            "path": "app.js", "attempt": "1", "recovery_id": server.recovery_id}


async def test_every_operation_conforms_to_the_openapi_document(server, http):
    schema = schemathesis.openapi.from_path(OPENAPI_PATH)
    real = real_path_parameters(server)
    failures: list[str] = []
    operations = 0
    started = time.monotonic()

    statuses: dict[str, collections.Counter] = {}
    # DELETEs last: a DELETE of A's real webhook would otherwise leave every later operation on it a 404.
    found = sorted((result.ok() for result in schema.get_all_operations()), key=lambda op: op.method.upper() == "DELETE")
    for operation in found:
        operations += 1
        names = {p.name for p in operation.path_parameters}
        seen = statuses.setdefault(operation.label, collections.Counter())
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies = [operation.as_strategy(generation_mode=mode)]
            if names:
                strategies.append(operation.as_strategy(
                    generation_mode=mode, path_parameters={n: real[n] for n in names if n in real}))
            if mode is GenerationMode.POSITIVE and operation.label in VALID_BODIES:
                # a valid body the generator cannot invent (an endpoint that resolves, a store that exists)
                strategies.append(st.just(operation.Case(body=VALID_BODIES[operation.label],
                                                         path_parameters={n: real[n] for n in names} or None,
                                                         media_type="application/json")))
            failures += fuzz(operation.label, mode, st.one_of(strategies), server, http, seen)

    print(f"fuzzed {operations} operations in {time.monotonic() - started:.1f}s")
    assert operations >= 20
    assert not failures, "\n\n".join(failures[:20])
    # each operation really ran at least once (a fuzzer that only ever met 404s or 422s proves little)
    never_ok = {label: dict(seen) for label, seen in statuses.items()
                if not any(200 <= status < 300 for status in seen) and label not in NO_2XX_EXPECTED}
    assert not never_ok, f"operations that never answered 2xx: {never_ok}"


def fuzz(label: str, mode: GenerationMode, strategy, server: Server, http: requests.Session,
         seen: collections.Counter) -> list[str]:
    """Run MAX_EXAMPLES generated cases; return one description per failing case (never raises for them)."""
    failures: list[str] = []

    @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case) -> None:
        if len(failures) >= 3:  # enough to show what is wrong with this operation
            return
        response = case.call(base_url=server.base_url, session=http, headers=server.a.headers,
                             timeout=REQUEST_TIMEOUT_S)
        problems = []
        try:
            case.validate_response(response, checks=CHECKS, headers=server.a.headers)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis's FailureGroup is a BaseExceptionGroup
            problems.append(str(exc))
        status = response.status_code
        seen[status] += 1
        if status >= 400 and label != "GET /readyz":
            try:
                assert_error_shape(status, response.json(), label)
            except (AssertionError, ValueError) as exc:
                problems.append(f"error shape: {exc}")
        if problems:
            request = response.request
            failures.append(f"{label} [{mode.value}] {request.method} {request.url} body={request.body!r:.300}"
                            f" -> {status} {response.text[:300]!r}\n" + "\n".join(p[:1500] for p in problems))

    try:
        run()
    except Unsatisfiable:
        # Nothing in this operation can be made invalid (no parameters, no body): no negative cases.
        assert mode is GenerationMode.NEGATIVE, label
    return failures


# ----------------------------------------------------------------------------------------------
# Explicit cases


def body_routes(server: Server) -> list[tuple[str, str]]:
    return [("POST", "/v1/stores"), ("POST", "/v1/webhooks"), ("PATCH", f"/v1/webhooks/{server.webhook_id}")]


def every_v1_route(server: Server) -> list[tuple[str, str]]:
    hook, event = server.webhook_id, server.event_id
    return [
        ("GET", "/v1/event-types"),
        ("GET", "/v1/stores"), ("POST", "/v1/stores"), ("GET", f"/v1/stores/{server.store_id}"),
        ("GET", "/v1/webhooks"), ("POST", "/v1/webhooks"),
        ("GET", f"/v1/webhooks/{hook}"), ("PATCH", f"/v1/webhooks/{hook}"), ("DELETE", f"/v1/webhooks/{hook}"),
        ("POST", f"/v1/webhooks/{hook}/rotate-secret"), ("POST", f"/v1/webhooks/{hook}/test"),
        ("GET", f"/v1/webhooks/{hook}/events"),
        ("GET", f"/v1/webhooks/{hook}/events/{event}/attempts"),
        ("POST", f"/v1/webhooks/{hook}/events/{event}/redeliver"),
    ]


def resource_routes(server: Server) -> list[tuple[str, str, bytes | None]]:
    """Every route naming one of A's resources, with a body that would be valid for its owner."""
    hook, event = server.webhook_id, server.event_id
    return [
        ("GET", f"/v1/stores/{server.store_id}", None),
        ("GET", f"/v1/webhooks/{hook}", None),
        ("PATCH", f"/v1/webhooks/{hook}", orjson.dumps({"description": "taken over", "enabled": False})),
        ("POST", f"/v1/webhooks/{hook}/rotate-secret", None),
        ("POST", f"/v1/webhooks/{hook}/test", None),
        ("GET", f"/v1/webhooks/{hook}/events", None),
        ("GET", f"/v1/webhooks/{hook}/events/{event}/attempts", None),
        ("POST", f"/v1/webhooks/{hook}/events/{event}/redeliver", None),
        ("DELETE", f"/v1/webhooks/{hook}", None),  # last: it must not delete A's webhook either
    ]


async def test_oversized_malformed_and_mistyped_bodies_get_4xx_with_the_error_shape(server):
    huge = b'{"name": "' + b"x" * (MAX_BODY_BYTES + 1) + b'"}'

    async def chunks():
        for start in range(0, len(huge), 64 * 1024):
            yield huge[start:start + 64 * 1024]
            await asyncio.sleep(0)

    json_type = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for method, path in body_routes(server):
            url = server.base_url + path
            headers = {**server.a.headers, **json_type}
            # Over 1 MiB, with a Content-Length and streamed without one (chunked).
            for data in (io.BytesIO(huge), chunks()):
                status, _, body = await call(session, method, url, headers=headers, data=data)
                assert status == 413, (method, path, status, body)
                assert_error_shape(status, body, (method, path))
                assert body["error"]["code"] == "payload_too_large"
            for malformed in (b"{", b'{"name": }', b"\xff\xfe{}", b'{"a":1}garbage', b"", b"   ", b"null",
                              b"[]", b'"text"', b"NaN", b'{"a":' * 5000 + b"1" + b"}" * 5000):
                status, _, body = await call(session, method, url, headers=headers, data=malformed)
                assert status == 400, (method, path, malformed[:40], status, body)
                assert_error_shape(status, body, (method, path, malformed[:40]))
                assert body["error"]["code"] == "invalid_json"
            # Not JSON at all, under other content types: a 4xx in the API's shape.
            for content_type, data in (("application/x-www-form-urlencoded", b"name=x&id=y"),
                                       ("multipart/form-data; boundary=zz",
                                        b'--zz\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n--zz--\r\n'),
                                       ("text/plain", b"hello"), ("application/xml", b"<store/>")):
                status, _, body = await call(session, method, url, data=data,
                                             headers={**server.a.headers, "Content-Type": content_type})
                assert 400 <= status < 500, (method, path, content_type, status, body)
                assert_error_shape(status, body, (method, path, content_type))
        # A JSON body under a wrong content type: accepted or refused, but never a 5xx or a bad shape.
        status, _, body = await call(session, "POST", server.base_url + "/v1/stores", data=b'{"name": "plain"}',
                                     headers={**server.a.headers, "Content-Type": "text/plain"})
        assert status in (201, 400, 415), (status, body)
        if status != 201:
            assert_error_shape(status, body, "text/plain JSON")
        # Unknown routes and methods under /v1 answer in the same shape.
        for method, path in (("GET", "/v1/nope"), ("PUT", "/v1/stores"), ("DELETE", "/v1/stores"),
                             ("POST", f"/v1/webhooks/{server.webhook_id}/events")):
            status, _, body = await call(session, method, server.base_url + path, headers=server.a.headers)
            assert status in (404, 405), (method, path, status, body)
            assert_error_shape(status, body, (method, path))


async def test_every_route_without_a_valid_key_is_401(server):
    bad_authorizations = [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", f"Token {server.a.key}",
                          "Bearer hsk_not_a_real_key", f"Bearer {server.a.key}x", f"Bearer {server.a.key[:-1]}",
                          "Bearer " + "k" * 4000, "Bearer \u00e9\u00e9"]
    async with aiohttp.ClientSession() as session:
        for method, path in every_v1_route(server):
            for authorization in bad_authorizations:
                headers = {} if authorization is None else {"Authorization": authorization}
                data = orjson.dumps({"name": "x"}) if method in ("POST", "PATCH") else None
                status, response_headers, body = await call(session, method, server.base_url + path,
                                                            headers=headers, data=data)
                context = (method, path, (authorization or "")[:40])
                assert status == 401, (context, status, body)
                assert_error_shape(status, body, context)
                assert body["error"]["code"] == "unauthorized"
                assert response_headers.get("WWW-Authenticate", "").startswith("Bearer")
        # A header over aiohttp's 8 KiB field limit is refused by the HTTP parser, before the API: a 4xx.
        status, _, body = await call(session, "GET", server.base_url + "/v1/webhooks",
                                     headers={"Authorization": "Bearer " + "k" * 10_000})
        assert 400 <= status < 500, (status, body)
        # Nothing changed: A's webhook is still there, untouched.
        status, _, hook = await call(session, "GET", f"{server.base_url}/v1/webhooks/{server.webhook_id}",
                                     headers=server.a.headers)
        assert status == 200 and hook["enabled"] is True and hook["description"] == "", hook


async def test_another_organizations_key_gets_404_on_every_resource_path(server):
    async with aiohttp.ClientSession() as session:
        url = server.base_url
        _, _, before = await call(session, "GET", f"{url}/v1/webhooks/{server.webhook_id}", headers=server.a.headers)
        for method, path, data in resource_routes(server):
            status, _, body = await call(session, method, url + path, headers=server.b.headers, data=data)
            assert status == 404, (method, path, status, body)
            assert_error_shape(status, body, (method, path))
            assert body["error"]["code"] == "not_found"
        # B's lists and its own resource of the same id show nothing of A.
        for path in ("/v1/webhooks", "/v1/stores"):
            status, _, listing = await call(session, "GET", url + path, headers=server.b.headers)
            assert status == 200
            assert server.webhook_id not in {item["id"] for item in listing["data"]}
            assert server.store_id not in {item["id"] for item in listing["data"]}
        # A's webhook survived B's PATCH, DELETE, rotate-secret, test send and redelivery unchanged.
        status, _, after = await call(session, "GET", f"{url}/v1/webhooks/{server.webhook_id}",
                                      headers=server.a.headers)
        assert status == 200
        assert after == before
        status, _, log = await call(session, "GET", f"{url}/v1/webhooks/{server.webhook_id}/events",
                                    headers=server.a.headers)
        assert status == 200 and [d["event_id"] for d in log["data"]] == [server.event_id]
        assert log["data"][0]["attempts"] == 0


async def test_nul_characters_in_any_input_get_4xx_not_5xx(server):
    """PostgreSQL text cannot hold U+0000: every input that reaches a query must be refused before it."""
    hook = server.webhook_id
    nul_cursor = base64.urlsafe_b64encode(orjson.dumps(["s", "a\u0000"])).rstrip(b"=").decode()
    cases: list[tuple[str, str, bytes | None]] = [
        ("POST", "/v1/stores", orjson.dumps({"name": "a\u0000b"})),
        ("POST", "/v1/webhooks", orjson.dumps({"url": "http://127.0.0.1:9/hook", "event_types": ["order.created"],
                                               "store_ids": ["s\u00001"]})),
        ("POST", "/v1/webhooks", orjson.dumps({"url": "http://127.0.0.1:9/hook", "event_types": ["order.created"],
                                               "store_ids": ["s1"], "description": "a\u0000b"})),
        ("POST", "/v1/webhooks", orjson.dumps({"url": "http://127.0.0.1:9/h\u0000ook",
                                               "event_types": ["order.created"], "store_ids": ["s1"]})),
        ("PATCH", f"/v1/webhooks/{hook}", orjson.dumps({"description": "a\u0000b"})),
        ("PATCH", f"/v1/webhooks/{hook}", orjson.dumps({"store_ids": ["\u0000"]})),
        ("GET", "/v1/stores/a%00b", None),
        ("GET", "/v1/webhooks/wh%00x", None),
        ("PATCH", "/v1/webhooks/wh%00x", orjson.dumps({"enabled": True})),
        ("DELETE", "/v1/webhooks/wh%00x", None),
        ("POST", "/v1/webhooks/wh%00x/rotate-secret", None),
        ("POST", "/v1/webhooks/wh%00x/test", None),
        ("GET", "/v1/webhooks/wh%00x/events", None),
        ("GET", f"/v1/webhooks/{hook}/events?store_id=a%00b", None),
        ("GET", f"/v1/webhooks/{hook}/events/evt%00x/attempts", None),
        ("POST", f"/v1/webhooks/{hook}/events/evt%00x/redeliver", None),
        ("GET", f"/v1/stores?cursor={nul_cursor}", None),
        ("GET", "/static/a%00b", None),
    ]
    failures = []
    async with aiohttp.ClientSession() as session:
        for method, path, data in cases:
            status, _, body = await call(session, method, server.base_url + path, headers=server.a.headers,
                                         data=data)
            if not 400 <= status < 500:
                failures.append(f"{method} {path} {data!r:.120} -> {status} {body!r:.200}")
            else:
                assert_error_shape(status, body, (method, path))
    assert not failures, "\n".join(failures)
