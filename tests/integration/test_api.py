"""The admin API (CONTRACT §5) against the real PostgreSQL (a fresh migrated database per test) and,
for /readyz and the test send, the real Kafka broker and sender."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import itertools
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from hookstream.api.app import MAX_BODY_BYTES, build_app, run_api
from hookstream.api.console import resolve_static
from hookstream.core.db import open_pool
from hookstream.core.orgs import create_organization
from hookstream.core.partitions import ensure_partitions
from hookstream.core.settings import Settings
from hookstream.core.signing import decode_secret
from hookstream.core.validation import EVENT_TYPES
from tests.receiver import Behaviour, Receiver
from tests.support import ApiOrg, free_port, wait_for

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)


@dataclass
class Api:
    client: TestClient
    db: asyncpg.Connection
    a: ApiOrg
    b: ApiOrg

    async def call(self, method: str, path: str, org: ApiOrg | None = None, *, json=None, data=None,
                   params=None, status: int | None = None):
        """Request as ``org`` (default: org A); asserts ``status`` if given; returns (status, JSON or None)."""
        org = org or self.a
        kwargs = {"headers": org.headers, "params": params}
        if json is not None:
            kwargs["data"] = orjson.dumps(json)
        elif data is not None:
            kwargs["data"] = data
        async with self.client.request(method, path, **kwargs) as response:
            raw = await response.read()
            body = orjson.loads(raw) if raw and response.content_type == "application/json" else None
            if status is not None:
                assert response.status == status, (method, path, response.status, body)
            return response.status, body

    async def store(self, store_id: str, org: ApiOrg | None = None) -> None:
        await self.call("POST", "/v1/stores", org, json={"id": store_id, "name": f"Store {store_id}"}, status=201)

    async def webhook(self, org: ApiOrg | None = None, **fields) -> dict:
        body = {"url": "https://example.com/hook", "event_types": ["order.created"], "store_ids": ["s1"], **fields}
        _, created = await self.call("POST", "/v1/webhooks", org, json=body, status=201)
        return created


def settings_for(database_url: str, kafka: str, **overrides) -> Settings:
    return Settings(kafka_bootstrap_servers=kafka, database_url=database_url, **overrides)


@pytest.fixture
async def pool(database_url) -> AsyncIterator[asyncpg.Pool]:
    async with open_pool(database_url, max_size=5) as pool:
        yield pool


async def start_client(settings: Settings, pool: asyncpg.Pool) -> TestClient:
    client = TestClient(TestServer(build_app(settings, pool)))
    await client.start_server()
    return client


@pytest.fixture
async def api(database_url, db, pool, infra_env) -> AsyncIterator[Api]:
    """ApiOrg A with stores s1, s2, s3; org B with store s1 (same id, other organization). allow_http and
    allow_private_networks are on here (tests point webhooks at local receivers); the SSRF test turns them off."""
    settings = settings_for(database_url, infra_env["KAFKA_BOOTSTRAP_SERVERS"], allow_http=True,
                            allow_private_networks=True)
    client = await start_client(settings, pool)
    try:
        a = ApiOrg(*await create_organization(db, "A"))
        b = ApiOrg(*await create_organization(db, "B"))
        harness = Api(client, db, a, b)
        for store_id in ("s1", "s2", "s3"):
            await harness.store(store_id, a)
        await harness.store("s1", b)
        yield harness
    finally:
        await client.close()


async def insert_deliveries(db: asyncpg.Connection, org_id: str, webhook_id: str, n: int, *,
                            status: str = "pending", event_type: str = "order.created", store_id: str = "s1",
                            created_at: dt.datetime | None = None, attempts: int = 0,
                            received_at: dt.datetime | None = None) -> list[str]:
    """``n`` events with a delivery each, in one statement; returns the event ids (in insertion order).
    A delivery backdated to ``created_at`` (an event to ``received_at``) has an id of that day, in that
    day's partition (made here)."""
    prefix = f"evt_{secrets.token_hex(4)}_"
    for at in (created_at, received_at):
        if at is not None:
            await ensure_partitions(db, at, ahead_days=0)
    rows = await db.fetch(
        """
        WITH ev AS (
            INSERT INTO events (seq, organization_id, event_id, event_type, store_id, occurred_at, body,
                                source_topic, source_partition, source_offset, received_at)
            SELECT hookstream_id('events_seq_seq', COALESCE($10, now())), $1, $2 || g, $3, $4, now(), '{}', 'test', 0, g,
                   COALESCE($10, now())
            FROM generate_series(1, $5) g
            RETURNING seq, event_id, event_type, store_id)
        INSERT INTO deliveries (id, webhook_id, event_seq, event_id, event_type, store_id, status, attempts, created_at)
        SELECT hookstream_id('deliveries_id_seq', COALESCE($9, now())), $6, seq, event_id, event_type, store_id, $7, $8,
               COALESCE($9, now())
        FROM ev ORDER BY seq
        RETURNING id, event_id
        """, org_id, prefix, event_type, store_id, n, webhook_id, status, attempts, created_at, received_at)
    return [r["event_id"] for r in sorted(rows, key=lambda r: r["id"])]


def assert_field_error(status: int, body: dict, field: str, expected_status: int = 422) -> None:
    assert status == expected_status, body
    assert set(body) == {"error"}
    assert body["error"]["field"] == field, body
    assert body["error"]["code"] and body["error"]["message"]


# ----------------------------------------------------------------------------------------------
# Authentication and the error shape


async def test_every_v1_route_requires_a_valid_key(api):
    wh = await api.webhook()
    (event_id,) = await insert_deliveries(api.db, api.a.id, wh["id"], 1)
    routes = [(r.method, r.resource.canonical) for r in api.client.app.router.routes()
              if r.method != "HEAD" and r.resource is not None and r.resource.canonical.startswith("/v1")]
    assert len(routes) >= 14
    wrong_keys = [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {base64.b64encode(b'user:pass').decode()}"},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": api.a.key},  # no scheme
        {"Authorization": f"Bearer {api.a.key[:-4]}abcd"},  # right key id, wrong secret
        {"Authorization": "Bearer hsk_000000000000000000_" + "x" * 43},  # unknown key id
    ]
    for method, template in routes:
        path = template.format(webhook_id=wh["id"], event_id=event_id, store_id="s1", attempt=1,
                                   recovery_id="rcv_x")
        for headers in wrong_keys:
            async with api.client.request(method, path, headers=headers, data=b"{}") as response:
                body = await response.json()
                assert response.status == 401, (method, path, headers, body)
                assert body["error"]["code"] == "unauthorized"
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # the key is accepted with any capitalisation of the scheme
    async with api.client.get("/v1/webhooks", headers={"Authorization": f"bearer {api.a.key}"}) as response:
        assert response.status == 200


async def test_revoked_key_is_refused(api):
    await api.call("GET", "/v1/webhooks", status=200)
    await api.db.execute("UPDATE api_keys SET revoked_at = now() WHERE organization_id = $1", api.a.id)
    status, body = await api.call("GET", "/v1/webhooks")
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_unknown_route_and_method_answer_in_the_error_shape(api):
    status, body = await api.call("GET", "/v1/nope")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await api.call("PUT", "/v1/webhooks")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    async with api.client.get("/v1/nope") as response:  # no key: the /v1 space is private
        assert response.status == 401


async def test_malformed_json_and_oversized_bodies(api):
    for raw in (b"", b"{", b"[1, 2]", b'"text"', b"null", b"\xff\xfe"):
        status, body = await api.call("POST", "/v1/webhooks", data=raw)
        assert status == 400, (raw, body)
        assert body["error"]["code"] == "invalid_json"
    status, body = await api.call("POST", "/v1/stores", data=b"{'id': 1}")
    assert status == 400 and body["error"]["code"] == "invalid_json"
    huge = orjson.dumps({"url": "https://example.com/", "description": "x" * MAX_BODY_BYTES})
    status, body = await api.call("POST", "/v1/webhooks", data=io.BytesIO(huge))
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert await api.db.fetchval("SELECT count(*) FROM webhooks") == 0


# ----------------------------------------------------------------------------------------------
# Event types and stores


async def test_event_types(api):
    _, body = await api.call("GET", "/v1/event-types", status=200)
    assert [item["type"] for item in body["data"]] == list(EVENT_TYPES)
    assert len(body["data"]) == 12
    assert {item["group"] for item in body["data"]} == {"order", "product"}
    assert all(item["type"].startswith(item["group"] + ".") for item in body["data"])


async def test_stores_create_list_get_and_conflicts(api):
    _, created = await api.call("POST", "/v1/stores", json={"name": "  Downtown  "}, status=201)
    assert re.fullmatch(r"store_[0-9a-f]{16}", created["id"]) and created["name"] == "Downtown"
    _, given = await api.call("POST", "/v1/stores", json={"id": "Main-Street_1", "name": "Main"}, status=201)
    assert given["id"] == "Main-Street_1"
    status, body = await api.call("POST", "/v1/stores", json={"id": "s1", "name": "again"})
    assert status == 409 and body["error"]["code"] == "conflict" and body["error"]["field"] == "id"
    # store ids are per organization: B already has its own s1, and can add s2 although A has one
    await api.call("POST", "/v1/stores", api.b, json={"id": "s2", "name": "B's s2"}, status=201)

    _, got = await api.call("GET", "/v1/stores/Main-Street_1", status=200)
    assert got == given
    status, body = await api.call("GET", "/v1/stores/s3", api.b)
    assert status == 404 and body["error"]["code"] == "not_found"
    status, _ = await api.call("GET", "/v1/stores/nope")
    assert status == 404

    _, listed = await api.call("GET", "/v1/stores", status=200)
    ids = [s["id"] for s in listed["data"]]
    assert ids == sorted(["s1", "s2", "s3", "Main-Street_1", created["id"]])
    assert listed["next_cursor"] is None
    _, listed_b = await api.call("GET", "/v1/stores", api.b, status=200)
    assert [s["id"] for s in listed_b["data"]] == ["s1", "s2"]
    assert listed_b["data"][1]["name"] == "B's s2"


async def test_store_pagination(api):
    for n in range(7):
        await api.store(f"p{n}")
    seen, cursor = [], None
    while True:
        _, body = await api.call("GET", "/v1/stores", params={"limit": "3", **({"cursor": cursor} if cursor else {})},
                                 status=200)
        assert len(body["data"]) <= 3
        seen += [s["id"] for s in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted([f"p{n}" for n in range(7)] + ["s1", "s2", "s3"])


@pytest.mark.parametrize(("body", "field"), [
    ({}, "name"),
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": 5}, "name"),
    ({"name": "x" * 201}, "name"),
    ({"id": "has space", "name": "n"}, "id"),
    ({"id": "", "name": "n"}, "id"),
    ({"id": "x" * 65, "name": "n"}, "id"),
    ({"id": 7, "name": "n"}, "id"),
    ({"id": "ok", "name": "n", "extra": 1}, "extra"),
])
async def test_store_validation(api, body, field):
    status, answer = await api.call("POST", "/v1/stores", json=body)
    assert_field_error(status, answer, field)


# ----------------------------------------------------------------------------------------------
# Webhooks


async def test_create_webhook_returns_secret_once_and_normalises(api):
    created = await api.webhook(url="http://127.0.0.1:9/hook", description="orders to the ERP",
                                event_types=["order.created", "order.shipped", "order.created"],
                                store_ids=["s2", "s1", "s2"])
    assert re.fullmatch(r"wh_[0-9a-f]{24}", created["id"])
    assert created["event_types"] == ["order.created", "order.shipped"]
    assert created["store_ids"] == ["s2", "s1"]
    assert created["enabled"] is True and created["failures_24h"] == 0
    assert created["description"] == "orders to the ERP"
    assert created["secret"].startswith("whsec_") and len(decode_secret(created["secret"])) >= 24
    assert created["created_at"].endswith("Z") and created["updated_at"] == created["created_at"]
    row = await api.db.fetchrow("SELECT * FROM webhooks WHERE id = $1", created["id"])
    assert row["organization_id"] == api.a.id and row["secret"] == created["secret"]

    _, got = await api.call("GET", f"/v1/webhooks/{created['id']}", status=200)
    assert "secret" not in got and "previous_secret" not in got
    assert got == {k: v for k, v in created.items() if k != "secret"}
    assert set(got) == {"id", "url", "description", "event_types", "store_ids", "enabled", "ordering", "created_at",
                        "updated_at", "failures_24h", "filter", "filter_errors_24h", "last_filter_error"}

    disabled = await api.webhook(enabled=False)
    assert disabled["enabled"] is False and disabled["description"] == ""


@pytest.mark.parametrize(("change", "field"), [
    ({"url": None}, "url"),
    ({"url": ""}, "url"),
    ({"url": 42}, "url"),
    ({"url": "not a url"}, "url"),
    ({"url": "ftp://example.com/"}, "url"),
    ({"url": "https://user:pw@example.com/"}, "url"),
    ({"url": "https://example.com/#frag"}, "url"),
    ({"url": "https://" + "a" * 2050 + ".com/"}, "url"),
    ({"event_types": []}, "event_types"),
    ({"event_types": "order.created"}, "event_types"),
    ({"event_types": ["order.created", "product.created", "order.refunded"]}, "event_types[2]"),
    ({"event_types": ["order.created", 5]}, "event_types[1]"),
    ({"event_types": ["webhook.test"]}, "event_types[0]"),
    ({"store_ids": []}, "store_ids"),
    ({"store_ids": None}, "store_ids"),
    ({"store_ids": ["s1", "nope"]}, "store_ids[1]"),
    ({"store_ids": ["s1", ""]}, "store_ids[1]"),
    ({"description": "x" * 501}, "description"),
    ({"description": 3}, "description"),
    ({"enabled": "yes"}, "enabled"),
    ({"enabled": 1}, "enabled"),
    ({"secret": "whsec_mine"}, "secret"),
    ({"event_type": ["order.created"]}, "event_type"),
])
async def test_webhook_field_validation_on_create_and_patch(api, change, field):
    body = {"url": "https://example.com/hook", "event_types": ["order.created"], "store_ids": ["s1"], **change}
    status, answer = await api.call("POST", "/v1/webhooks", json=body)
    assert_field_error(status, answer, field)
    existing = await api.webhook()
    status, answer = await api.call("PATCH", f"/v1/webhooks/{existing['id']}", json=change)
    assert_field_error(status, answer, field)
    assert await api.db.fetchval("SELECT count(*) FROM webhooks") == 1
    _, unchanged = await api.call("GET", f"/v1/webhooks/{existing['id']}", status=200)
    assert unchanged == {k: v for k, v in existing.items() if k != "secret"}


@pytest.mark.parametrize("missing", ["url", "event_types", "store_ids"])
async def test_webhook_required_fields(api, missing):
    body = {"url": "https://example.com/hook", "event_types": ["order.created"], "store_ids": ["s1"]}
    del body[missing]
    status, answer = await api.call("POST", "/v1/webhooks", json=body)
    assert_field_error(status, answer, missing)


async def test_webhook_cannot_subscribe_to_another_organizations_store(api):
    await api.call("POST", "/v1/stores", api.b, json={"id": "only-b", "name": "B"}, status=201)
    status, body = await api.call("POST", "/v1/webhooks", json={
        "url": "https://example.com/", "event_types": ["order.created"], "store_ids": ["s1", "only-b"]})
    assert_field_error(status, body, "store_ids[1]")


async def test_default_settings_refuse_http_and_private_endpoints(database_url, pool, db, infra_env):
    settings = settings_for(database_url, infra_env["KAFKA_BOOTSTRAP_SERVERS"])
    assert settings.allow_http is False and settings.allow_private_networks is False
    client = await start_client(settings, pool)
    try:
        org = ApiOrg(*await create_organization(db, "strict"))
        api = Api(client, db, org, org)
        await api.store("s1")
        for url in ("http://example.com/hook", "http://127.0.0.1:8080/hook", "https://127.0.0.1/hook",
                    "https://10.0.0.1/hook", "https://169.254.169.254/latest/meta-data", "https://[::1]/hook",
                    "https://localhost/hook", "https://192.168.1.10/", "https://[::ffff:127.0.0.1]/",
                    "https://no-such-host.invalid/"):
            status, body = await api.call("POST", "/v1/webhooks", json={
                "url": url, "event_types": ["order.created"], "store_ids": ["s1"]})
            assert_field_error(status, body, "url")
            assert body["error"]["message"].startswith("url: ")
        wh = await api.webhook(url="https://93.184.215.14/hook")  # a public literal address is fine
        status, body = await api.call("PATCH", f"/v1/webhooks/{wh['id']}", json={"url": "https://10.0.0.1/x"})
        assert_field_error(status, body, "url")
        assert await db.fetchval("SELECT url FROM webhooks") == "https://93.184.215.14/hook"
    finally:
        await client.close()


async def test_list_webhooks_newest_first_with_cursor(api):
    created = [await api.webhook(description=f"#{n}") for n in range(5)]
    await api.webhook(api.b)
    # several webhooks created in one transaction share created_at: the id breaks the tie
    await api.db.execute("UPDATE webhooks SET created_at = (SELECT created_at FROM webhooks WHERE id = $1)"
                         " WHERE id = ANY($2::text[])", created[2]["id"], [created[1]["id"], created[3]["id"]])
    expected = [r["id"] for r in await api.db.fetch(
        "SELECT id FROM webhooks WHERE organization_id = $1 ORDER BY created_at DESC, id DESC", api.a.id)]
    assert expected[0] == created[4]["id"] and expected[-1] == created[0]["id"]
    seen, cursor = [], None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        _, body = await api.call("GET", "/v1/webhooks", params=params, status=200)
        assert all("secret" not in item for item in body["data"])
        seen += [item["id"] for item in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    _, b_list = await api.call("GET", "/v1/webhooks", api.b, status=200)
    assert len(b_list["data"]) == 1 and b_list["data"][0]["id"] not in seen


@pytest.mark.parametrize("path", ["/v1/webhooks", "/v1/stores", "/v1/webhooks/{wh}/events"])
async def test_list_parameters_are_checked(api, path):
    wh = await api.webhook()
    path = path.format(wh=wh["id"])
    for limit in ("0", "201", "-1", "abc", "1.5", ""):
        status, body = await api.call("GET", path, params={"limit": limit})
        assert_field_error(status, body, "limit")
    await api.call("GET", path, params={"limit": "200"}, status=200)
    other_kind = base64.urlsafe_b64encode(orjson.dumps(["x", 1, "a"])).decode().rstrip("=")
    for cursor in ("garbage!!", "bm90IGpzb24", other_kind, "A" * 600):
        status, body = await api.call("GET", path, params={"cursor": cursor})
        assert_field_error(status, body, "cursor", expected_status=400)
        assert body["error"]["code"] == "invalid_cursor"


async def test_patch_webhook(api):
    wh = await api.webhook()
    await asyncio.sleep(0.01)
    _, patched = await api.call("PATCH", f"/v1/webhooks/{wh['id']}", json={
        "url": "https://example.org/new", "event_types": ["product.updated", "product.updated"],
        "store_ids": ["s3"], "description": "moved", "enabled": False}, status=200)
    assert patched["url"] == "https://example.org/new" and patched["event_types"] == ["product.updated"]
    assert patched["store_ids"] == ["s3"] and patched["description"] == "moved" and patched["enabled"] is False
    assert patched["updated_at"] > wh["updated_at"] and patched["created_at"] == wh["created_at"]
    assert "secret" not in patched
    _, partial = await api.call("PATCH", f"/v1/webhooks/{wh['id']}", json={"enabled": True}, status=200)
    assert partial["enabled"] is True and partial["url"] == "https://example.org/new"
    _, same = await api.call("PATCH", f"/v1/webhooks/{wh['id']}", json={}, status=200)
    assert same == partial
    assert await api.db.fetchval("SELECT secret FROM webhooks WHERE id = $1", wh["id"]) == wh["secret"]


async def test_delete_webhook(api):
    wh = await api.webhook()
    other = await api.webhook()
    await insert_deliveries(api.db, api.a.id, wh["id"], 3)
    await insert_deliveries(api.db, api.a.id, other["id"], 2)
    await api.db.execute("INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, http_status, outcome)"
                         " SELECT id, 1, now(), 1.0, 200, 'succeeded' FROM deliveries")
    await api.call("DELETE", f"/v1/webhooks/{wh['id']}", status=204)
    await api.call("GET", f"/v1/webhooks/{wh['id']}", status=404)
    await api.call("DELETE", f"/v1/webhooks/{wh['id']}", status=404)
    # its delivery log goes with it, attempts included; the other webhook's stays
    assert await api.db.fetchval("SELECT count(*) FROM deliveries WHERE webhook_id = $1", wh["id"]) == 0
    assert await api.db.fetchval("SELECT count(*) FROM deliveries") == 2
    assert await api.db.fetchval("SELECT count(*) FROM attempts") == 2


async def test_rotate_secret_keeps_the_previous_one_for_24h(api):
    wh = await api.webhook()
    before = dt.datetime.now(dt.UTC)
    _, rotated = await api.call("POST", f"/v1/webhooks/{wh['id']}/rotate-secret", status=200)
    assert set(rotated) == {"secret", "previous_secret_expires_at"}
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != wh["secret"]
    expires = dt.datetime.fromisoformat(rotated["previous_secret_expires_at"].replace("Z", "+00:00"))
    assert abs((expires - before) - dt.timedelta(hours=24)) < dt.timedelta(seconds=30)
    row = await api.db.fetchrow("SELECT secret, previous_secret, previous_secret_expires_at FROM webhooks"
                                " WHERE id = $1", wh["id"])
    assert row["secret"] == rotated["secret"] and row["previous_secret"] == wh["secret"]
    assert row["previous_secret_expires_at"] == expires
    _, got = await api.call("GET", f"/v1/webhooks/{wh['id']}", status=200)
    assert rotated["secret"] not in orjson.dumps(got).decode() and "secret" not in got

    _, again = await api.call("POST", f"/v1/webhooks/{wh['id']}/rotate-secret", status=200)
    assert await api.db.fetchval("SELECT previous_secret FROM webhooks WHERE id = $1", wh["id"]) == rotated["secret"]
    assert again["secret"] not in (wh["secret"], rotated["secret"])


async def test_failures_24h_counts_recent_failed_deliveries(api):
    wh = await api.webhook()
    other = await api.webhook()
    await insert_deliveries(api.db, api.a.id, wh["id"], 3, status="failed")
    await insert_deliveries(api.db, api.a.id, wh["id"], 2, status="failed", created_at=NOW - dt.timedelta(hours=25))
    await insert_deliveries(api.db, api.a.id, wh["id"], 4, status="succeeded")
    await insert_deliveries(api.db, api.a.id, other["id"], 1, status="failed")
    _, got = await api.call("GET", f"/v1/webhooks/{wh['id']}", status=200)
    assert got["failures_24h"] == 3
    _, listed = await api.call("GET", "/v1/webhooks", status=200)
    assert {w["id"]: w["failures_24h"] for w in listed["data"]} == {wh["id"]: 3, other["id"]: 1}


async def test_test_send_creates_event_and_due_delivery(api):
    wh = await api.webhook(store_ids=["s2", "s1"])
    _, sent = await api.call("POST", f"/v1/webhooks/{wh['id']}/test", status=202)
    assert sent["status"] == "pending" and re.fullmatch(r"evt_test_[0-9a-f]{24}", sent["event_id"])
    event = await api.db.fetchrow("SELECT * FROM events WHERE event_id = $1", sent["event_id"])
    assert event["organization_id"] == api.a.id and event["event_type"] == "webhook.test"
    assert event["store_id"] == "s2"
    assert (event["source_topic"], event["source_partition"], event["source_offset"]) == ("api", -1, -1)
    body = orjson.loads(event["body"])
    assert body == {"id": sent["event_id"], "type": "webhook.test", "created_at": body["created_at"],
                    "organization_id": api.a.id, "store_id": "s2", "data": {"message": "hookstream test event"}}
    assert event["body"] == orjson.dumps(body).decode()  # compact
    assert dt.datetime.fromisoformat(body["created_at"].replace("Z", "+00:00")) == event["occurred_at"]
    delivery = await api.db.fetchrow("SELECT * FROM deliveries WHERE event_id = $1", sent["event_id"])
    assert delivery["webhook_id"] == wh["id"] and delivery["event_seq"] == event["seq"]
    assert delivery["status"] == "pending" and delivery["next_attempt_at"] is None
    assert delivery["manual_due_at"] is not None and delivery["manual_due_at"] <= dt.datetime.now(dt.UTC)
    _, log = await api.call("GET", f"/v1/webhooks/{wh['id']}/events", status=200)
    assert [(d["event_id"], d["event_type"], d["status"]) for d in log["data"]] == [
        (sent["event_id"], "webhook.test", "pending")]

    await api.call("PATCH", f"/v1/webhooks/{wh['id']}", json={"enabled": False}, status=200)
    status, body = await api.call("POST", f"/v1/webhooks/{wh['id']}/test")
    assert status == 409 and body["error"]["code"] == "conflict"


async def test_test_send_is_delivered_signed_by_the_sender(database_url, db, pool, hs_env, spawn):
    """The whole path: API -> deliveries row -> the sender's retry pump -> a signed POST -> the log."""
    settings = Settings.from_env(hs_env)
    client = await start_client(settings, pool)
    try:
        async with Receiver() as receiver:
            org = ApiOrg(*await create_organization(db, "e2e"))
            api = Api(client, db, org, org)
            await api.store("s1")
            wh = await api.webhook(url=receiver.url("/hook"))
            spawn("sender")
            _, sent = await api.call("POST", f"/v1/webhooks/{wh['id']}/test", status=202)
            await wait_for(lambda: receiver.at("/hook"), timeout_s=60, message="the test event to arrive")
            await asyncio.sleep(0.5)  # room for a wrong extra request to show
            [request] = receiver.at("/hook")  # a test send is one manual attempt
            assert request.verify(wh["secret"])
            assert orjson.loads(request.body)["type"] == "webhook.test"
            assert request.headers["webhook-id"] == sent["event_id"]

            async def succeeded():
                _, log = await api.call("GET", f"/v1/webhooks/{wh['id']}/events", params={"status": "succeeded"})
                return log["data"]
            (entry,) = await wait_for(succeeded, timeout_s=30, message="the outcome in the log")
            assert entry["event_id"] == sent["event_id"] and entry["attempts"] == 1
            assert entry["last_http_status"] == 200
            _, attempts = await api.call("GET", f"/v1/webhooks/{wh['id']}/events/{sent['event_id']}/attempts",
                                         status=200)
            assert [(a["attempt"], a["status"], a["http_status"]) for a in attempts["data"]] == [(1, "succeeded", 200)]
    finally:
        await client.close()


# ----------------------------------------------------------------------------------------------
# The delivery log, attempts, redelivery


async def test_delivery_log_fields_filters_and_order(api):
    wh = await api.webhook(event_types=["order.created", "product.deleted"], store_ids=["s1", "s2"])
    other = await api.webhook()
    t = NOW.replace(microsecond=0)
    old = await insert_deliveries(api.db, api.a.id, wh["id"], 2, status="failed", created_at=t - dt.timedelta(days=2),
                                  attempts=4)
    mid = await insert_deliveries(api.db, api.a.id, wh["id"], 3, status="succeeded", event_type="product.deleted",
                                  store_id="s2", created_at=t - dt.timedelta(hours=1), attempts=1)
    new = await insert_deliveries(api.db, api.a.id, wh["id"], 1, status="pending", created_at=t)
    await insert_deliveries(api.db, api.a.id, other["id"], 5)
    await api.db.execute("UPDATE deliveries SET last_http_status = 500, last_error = 'HTTP 500',"
                         " last_attempt_at = created_at WHERE event_id = ANY($1::text[])", old)
    url = f"/v1/webhooks/{wh['id']}/events"

    async def ids(**params) -> list[str]:
        _, body = await api.call("GET", url, params=params, status=200)
        return [d["event_id"] for d in body["data"]]

    assert await ids() == new + mid[::-1] + old[::-1]
    _, body = await api.call("GET", url, params={"status": "failed"}, status=200)
    assert [d["event_id"] for d in body["data"]] == old[::-1]
    first = body["data"][0]
    assert set(first) == {"event_id", "event_type", "store_id", "status", "attempts", "last_http_status",
                          "last_error", "created_at", "last_attempt_at", "next_attempt_at", "waiting_behind",
                          "retry_schedule"}
    assert (first["status"], first["attempts"], first["last_http_status"], first["last_error"]) == (
        "failed", 4, 500, "HTTP 500")
    assert first["created_at"] == first["last_attempt_at"] and first["next_attempt_at"] is None
    assert await ids(status="succeeded") == mid[::-1]
    assert await ids(status="pending") == new
    assert await ids(event_type="product.deleted") == mid[::-1]
    assert await ids(event_type="order.shipped") == []
    assert await ids(store_id="s2") == mid[::-1]
    assert await ids(store_id="s2", status="failed") == []
    assert await ids(since=(t - dt.timedelta(hours=2)).isoformat()) == new + mid[::-1]
    assert await ids(until=(t - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")) == old[::-1]
    assert await ids(since=(t - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
                     until=t.isoformat()) == mid[::-1]
    # an unencoded '+' in the offset arrives as a space; it is read as '+'
    async with api.client.get(f"{url}?since={(t - dt.timedelta(hours=2)).isoformat()}", headers=api.a.headers) as r:
        assert r.status == 200 and len((await r.json())["data"]) == 4

    for params, field in [({"status": "done"}, "status"), ({"status": ""}, "status"),
                          ({"event_type": "order.refunded"}, "event_type"), ({"store_id": ""}, "store_id"),
                          ({"since": "yesterday"}, "since"), ({"since": "2026-01-01"}, "since"),
                          ({"since": "2026-01-01T00:00:00"}, "since"), ({"until": "2026-13-01T00:00:00Z"}, "until"),
                          ({"since": t.isoformat(), "until": t.isoformat()}, "until")]:
        status, body = await api.call("GET", url, params=params)
        assert_field_error(status, body, field)


async def test_delivery_log_pagination_is_stable_while_deliveries_arrive(api):
    """Keyset pagination: every delivery that existed when paging started is seen exactly once, in order,
    although new deliveries (newer, and some with old timestamps) are inserted between pages."""
    wh = await api.webhook()
    t = NOW.replace(microsecond=0) - dt.timedelta(hours=1)
    existing = await insert_deliveries(api.db, api.a.id, wh["id"], 40, created_at=t)  # 40 rows share created_at
    for n in range(30):
        existing += await insert_deliveries(api.db, api.a.id, wh["id"], 1, status="failed",
                                            created_at=t - dt.timedelta(minutes=n + 1))
    url = f"/v1/webhooks/{wh['id']}/events"
    seen: list[dict] = []
    inserted_between: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "7", **({"cursor": cursor} if cursor else {})}
        _, body = await api.call("GET", url, params=params, status=200)
        pages += 1
        seen += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            break
        # new rows arrive: newer ones (the usual case), and ones with the same or older timestamps
        inserted_between += await insert_deliveries(api.db, api.a.id, wh["id"], 3)
        inserted_between += await insert_deliveries(api.db, api.a.id, wh["id"], 1, created_at=t)
        inserted_between += await insert_deliveries(api.db, api.a.id, wh["id"], 1,
                                                    created_at=t - dt.timedelta(days=1))
    seen_ids = [d["event_id"] for d in seen]
    assert len(seen_ids) == len(set(seen_ids)), "a delivery was returned twice"
    assert set(existing) <= set(seen_ids), "a delivery that existed was skipped"
    assert set(seen_ids) <= set(existing) | set(inserted_between)
    assert pages >= 10
    order = [(d["created_at"], d["event_id"]) for d in seen]
    assert [c for c, _ in order] == sorted((c for c, _ in order), reverse=True)
    expected = [r["event_id"] for r in await api.db.fetch(
        "SELECT event_id FROM deliveries WHERE webhook_id = $1 AND event_id = ANY($2::text[])"
        " ORDER BY created_at DESC, id DESC", wh["id"], seen_ids)]
    assert seen_ids == expected


async def test_attempts_oldest_first(api):
    wh = await api.webhook()
    (event_id, untouched) = await insert_deliveries(api.db, api.a.id, wh["id"], 2, status="succeeded", attempts=3)
    delivery_id = await api.db.fetchval("SELECT id FROM deliveries WHERE event_id = $1", event_id)
    t = NOW - dt.timedelta(minutes=10)
    await api.db.executemany(
        "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, http_status, error,"
        " response_excerpt, outcome) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [(delivery_id, 3, t + dt.timedelta(minutes=5), 12.5, 200, None, "ok", "succeeded"),
         (delivery_id, 1, t, 10000.0, None, "timeout after 10s", None, "retrying"),
         (delivery_id, 2, t + dt.timedelta(minutes=1), 80.25, 503, "HTTP 503", "busy", "retrying")])
    _, body = await api.call("GET", f"/v1/webhooks/{wh['id']}/events/{event_id}/attempts", status=200)
    assert [a["attempt"] for a in body["data"]] == [1, 2, 3]
    assert body["data"][0] == {"attempt": 1, "started_at": body["data"][0]["started_at"], "duration_ms": 10000.0,
                               "http_status": None, "error": "timeout after 10s", "response_excerpt": None,
                               "status": "retrying", "request": None, "response": None}
    assert body["data"][1]["http_status"] == 503 and body["data"][1]["response_excerpt"] == "busy"
    assert body["data"][2]["status"] == "succeeded" and body["data"][2]["duration_ms"] == 12.5
    assert body["next_cursor"] is None
    _, empty = await api.call("GET", f"/v1/webhooks/{wh['id']}/events/{untouched}/attempts", status=200)
    assert empty["data"] == []
    status, body = await api.call("GET", f"/v1/webhooks/{wh['id']}/events/evt_nope/attempts")
    assert status == 404 and body["error"]["code"] == "not_found"
    other = await api.webhook()
    await api.call("GET", f"/v1/webhooks/{other['id']}/events/{event_id}/attempts", status=404)


async def test_redeliver_schedules_one_manual_attempt(api):
    wh = await api.webhook()
    (failed,) = await insert_deliveries(api.db, api.a.id, wh["id"], 1, status="failed", attempts=4)
    await api.db.execute("UPDATE deliveries SET finished_at = now() WHERE event_id = $1", failed)
    before = await api.db.fetchval("SELECT now()")
    _, body = await api.call("POST", f"/v1/webhooks/{wh['id']}/events/{failed}/redeliver", status=202)
    assert body["event_id"] == failed and body["status"] == "pending" and body["manual"] is True
    row = await api.db.fetchrow("SELECT * FROM deliveries WHERE event_id = $1", failed)
    assert row["status"] == "pending" and row["finished_at"] is None
    assert row["manual_due_at"] >= before and row["next_attempt_at"] is None and row["attempts"] == 4
    _, log = await api.call("GET", f"/v1/webhooks/{wh['id']}/events", status=200)
    assert log["data"][0]["status"] == "pending" and log["data"][0]["next_attempt_at"] is not None

    # a delivery waiting for automatic retry 2 in an hour: pulled forward, and it stays automatic
    (waiting,) = await insert_deliveries(api.db, api.a.id, wh["id"], 1, status="pending", attempts=2)
    await api.db.execute("UPDATE deliveries SET next_attempt_at = now() + interval '1 hour', next_retry_index = 2"
                         " WHERE event_id = $1", waiting)
    _, body = await api.call("POST", f"/v1/webhooks/{wh['id']}/events/{waiting}/redeliver", status=202)
    assert body["manual"] is False
    row = await api.db.fetchrow("SELECT * FROM deliveries WHERE event_id = $1", waiting)
    assert row["manual_due_at"] is None and row["next_retry_index"] == 2
    assert row["next_attempt_at"] <= await api.db.fetchval("SELECT now()")

    await api.call("POST", f"/v1/webhooks/{wh['id']}/events/evt_nope/redeliver", status=404)
    await api.call("PATCH", f"/v1/webhooks/{wh['id']}", json={"enabled": False}, status=200)
    status, body = await api.call("POST", f"/v1/webhooks/{wh['id']}/events/{failed}/redeliver")
    assert status == 409 and body["error"]["code"] == "conflict"


# ----------------------------------------------------------------------------------------------
# Tenant isolation


WEBHOOK_ROUTES = [
    ("GET", "/v1/webhooks/{wh}", None),
    ("PATCH", "/v1/webhooks/{wh}", {"description": "taken over"}),
    ("DELETE", "/v1/webhooks/{wh}", None),
    ("POST", "/v1/webhooks/{wh}/rotate-secret", None),
    ("POST", "/v1/webhooks/{wh}/test", None),
    ("GET", "/v1/webhooks/{wh}/events", None),
    ("GET", "/v1/webhooks/{wh}/events/{ev}/attempts", None),
    ("POST", "/v1/webhooks/{wh}/events/{ev}/redeliver", None),
    ("GET", "/v1/webhooks/{wh}/events/{ev}/attempts/{n}", None),
    ("POST", "/v1/webhooks/{wh}/recover", {"since": "2026-01-01T00:00:00Z"}),
    ("GET", "/v1/webhooks/{wh}/recoveries", None),
    ("GET", "/v1/webhooks/{wh}/recoveries/{rcv}", None),
    ("GET", "/v1/webhooks/{wh}/stats", None),
]


async def test_another_organizations_webhook_is_not_found_on_every_route(api):
    wh = await api.webhook()
    (event_id,) = await insert_deliveries(api.db, api.a.id, wh["id"], 1, status="failed")
    delivery_id = await api.db.fetchval("SELECT id FROM deliveries WHERE event_id = $1", event_id)
    await api.db.execute("INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, http_status, outcome)"
                         " VALUES ($1, 1, now(), 5, 500, 'failed')", delivery_id)
    # a finished recovery of A's webhook, so B cannot read it either
    _, recovery = await api.call("POST", f"/v1/webhooks/{wh['id']}/recover", json={"since": "2000-01-01T00:00:00Z",
                                                                                    "until": "2000-01-02T00:00:00Z"},
                                 status=202)
    before = await api.db.fetchrow("SELECT * FROM webhooks WHERE id = $1", wh["id"])
    deliveries_before = await api.db.fetch("SELECT * FROM deliveries ORDER BY id")
    covered = set()
    for method, template, body in WEBHOOK_ROUTES:
        path = template.format(wh=wh["id"], ev=event_id, n=1, rcv=recovery["id"])
        status, answer = await api.call(method, path, api.b, json=body)
        assert status == 404, (method, path, answer)
        assert answer == {"error": {"code": "not_found", "message": answer["error"]["message"]}}
        status, _ = await api.call(method, template.format(wh="wh_nope", ev=event_id, n=1, rcv=recovery["id"]),
                                   json=body)
        assert status == 404, (method, template)
        covered.add((method, template.replace("{wh}", "{webhook_id}").replace("{ev}", "{event_id}")
                     .replace("{n}", "{attempt}").replace("{rcv}", "{recovery_id}")))
    # nothing changed, and no event was created for B
    assert await api.db.fetchrow("SELECT * FROM webhooks WHERE id = $1", wh["id"]) == before
    assert await api.db.fetch("SELECT * FROM deliveries ORDER BY id") == deliveries_before
    assert await api.db.fetchval("SELECT count(*) FROM events WHERE organization_id = $1", api.b.id) == 0
    # every /v1/webhooks/{webhook_id}... route of the app is in the list above
    routes = {(r.method, r.resource.canonical) for r in api.client.app.router.routes()
              if r.method != "HEAD" and r.resource and r.resource.canonical.startswith("/v1/webhooks/{")}
    assert routes == covered
    _, b_list = await api.call("GET", "/v1/webhooks", api.b, status=200)
    assert b_list["data"] == []


# ----------------------------------------------------------------------------------------------
# Operations: health, readiness, metrics, OpenAPI, console, lifecycle


async def test_health_readiness_and_metrics(api, database_url, pool):
    async with api.client.get("/healthz") as response:
        assert response.status == 200 and await response.json() == {"status": "ok"}
    async with api.client.get("/readyz") as response:
        body = await response.json()
        assert response.status == 200, body
        assert body == {"status": "ok", "checks": {"postgres": "ok", "kafka": "ok"}}
    async with api.client.get("/metrics") as response:
        text = await response.text()
        assert response.status == 200 and response.content_type == "text/plain"
        assert "hookstream_api_requests_total" in text and 'route="/healthz"' in text

    closed_port = free_port()
    down = await start_client(settings_for(database_url, f"127.0.0.1:{closed_port}"), pool)
    try:
        async with down.get("/readyz") as response:
            body = await response.json()
            assert response.status == 503
            assert body["checks"]["postgres"] == "ok" and body["checks"]["kafka"] != "ok"
            assert "kafka" in body["error"]["message"]
    finally:
        await down.close()


def resolve(spec: dict, node: dict) -> dict:
    """Follow local ``$ref``s (``#/components/...``); KeyError if one points nowhere."""
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = spec
        for part in ref[2:].split("/"):
            node = node[part]
    return node


async def test_openapi_describes_every_route(api):
    async with api.client.get("/openapi.json") as response:
        assert response.status == 200 and response.content_type == "application/json"
        spec = orjson.loads(await response.read())
    assert spec["openapi"].startswith("3.1")
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    missing = []
    for route in api.client.app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = route.resource.canonical
        operation = spec["paths"].get(path, {}).get(route.method.lower())
        if operation is None:
            missing.append((route.method, path))
            continue
        if path.startswith("/v1"):
            assert operation.get("security", spec.get("security")) == [{"bearer": []}], path
            assert "401" in operation["responses"], path
        declared = [resolve(spec, p) for p in operation.get("parameters", []) + spec["paths"][path].get("parameters", [])]
        for name in re.findall(r"{(\w+)}", path):
            assert name in {p["name"] for p in declared if p["in"] == "path"}, (path, name)
    assert missing == []
    # every $ref points at something that exists
    refs = re.findall(r'"\$ref":"([^"]+)"', orjson.dumps(spec).decode())
    assert refs and all(resolve(spec, {"$ref": ref}) for ref in refs)
    assert set(spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]) == {
        "code", "message", "field"}


async def test_console_is_served_without_a_key(api, tmp_path):
    async with api.client.get("/") as response:
        assert response.status == 200 and response.content_type == "text/html"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/nope.js"):
        async with api.client.get(path) as response:
            assert response.status == 404, path
    (tmp_path / "static").mkdir()
    (tmp_path / "static" / "app.js").write_text("x")
    (tmp_path / "secret.txt").write_text("no")
    assert resolve_static(tmp_path / "static", "app.js") == (tmp_path / "static" / "app.js").resolve()
    for bad in ("../secret.txt", "/etc/passwd", "", ".", "sub/../../secret.txt"):
        assert resolve_static(tmp_path / "static", bad) is None, bad


async def test_run_api_serves_until_stopped(database_url, pool, infra_env):
    port = free_port()
    settings = settings_for(database_url, infra_env["KAFKA_BOOTSTRAP_SERVERS"], api_listen=("127.0.0.1", port))
    stop = asyncio.Event()
    task = asyncio.create_task(run_api(settings, stop, pool=pool))
    try:
        async with aiohttp.ClientSession() as session:
            async def healthy():
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False
            await wait_for(healthy, timeout_s=10, message="the API to listen")
            async with session.get(f"http://127.0.0.1:{port}/v1/webhooks") as response:
                assert response.status == 401
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()


# ----------------------------------------------------------------------------------------------
# Hostile API inputs (issue 11, case 7): 4xx, never a 500.


async def raw_request(api, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes no HTTP client library would (a header with byte 0xFF) and return status and body."""
    reader, writer = await asyncio.open_connection(api.client.server.host, api.client.server.port)
    try:
        writer.write(head + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n"
                     + body)
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("key", [b"hsk_ab_\xff", b"hsk_ab_\xc3\xbf", b"\xff\xfe", b"hsk_\xe2\x80\xae_x"])
async def test_an_undecodable_or_non_ascii_api_key_is_401(api, key):
    status, body = await raw_request(api, b"GET /v1/webhooks HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + key)
    assert status == 401, body
    assert orjson.loads(body)["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("depth", [33, 990, 1100])
async def test_an_over_deep_json_body_is_400(api, depth):
    nested = b'{"a":' * depth + b"1" + b"}" * depth
    body = b'{"url": "https://example.com/hook", "event_types": ["order.created"], "store_ids": ["s1"],' \
           b' "description": ' + nested + b"}"
    status, raw = await raw_request(
        api, b"POST /v1/webhooks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nAuthorization: Bearer "
        + api.a.key.encode(), body)
    assert status == 400, raw
    assert orjson.loads(raw)["error"]["code"] == "invalid_json"


async def test_healthz_fails_naming_a_wedged_loop(api):
    from hookstream.core import liveness

    _, body = await api.call("GET", "/healthz", status=200)
    assert body == {"status": "ok"}
    liveness._beats["outcome-flusher"] = time.monotonic() - 10_000
    try:
        status, body = await api.call("GET", "/healthz")
        assert status == 503 and body["status"] == "unhealthy"
        assert list(body["stale_loops"]) == ["outcome-flusher"] and "outcome-flusher" in body["error"]["message"]
    finally:
        liveness.forget("outcome-flusher")
    await api.call("GET", "/healthz", status=200)


# ----------------------------------------------------------------------------------------------
# Filters (issue 15)


async def test_a_filter_is_compiled_when_saved_and_returned_on_read(api):
    wh = await api.webhook(filter='double(data.order.total) >= 100.0')
    assert wh["filter"] == 'double(data.order.total) >= 100.0'
    assert (wh["filter_errors_24h"], wh["last_filter_error"]) == (0, None)
    _, got = await api.call("GET", f"/v1/webhooks/{wh['id']}", status=200)
    assert got["filter"] == wh["filter"]
    assert await api.db.fetchval("SELECT filter FROM webhooks WHERE id = $1", wh["id"]) == wh["filter"]

    for bad, message in (("double(data.order.total) >", "line 1, column 27"), ("foo == 1", "unknown variable"),
                         ("data.order.total > 100", "type error on the sample order.created event"),
                         ("x" * 2001, "at most 2000"), ("", "non-empty"), (42, "non-empty")):
        for method, path in (("POST", "/v1/webhooks"), ("PATCH", f"/v1/webhooks/{wh['id']}")):
            body = {"filter": bad} if method == "PATCH" else {
                "url": "https://example.com/hook", "event_types": ["order.created"], "store_ids": ["s1"], "filter": bad}
            status, answer = await api.call(method, path, json=body)
            assert status == 422, (method, bad, answer)
            assert answer["error"]["field"] == "filter" and message in answer["error"]["message"], answer
    # a PATCH checks the filter against the webhook's own event types
    product = await api.webhook(event_types=["product.created"])
    status, answer = await api.call("PATCH", f"/v1/webhooks/{product['id']}", json={"filter": "data.product.id > 1"})
    assert status == 422 and "product.created" in answer["error"]["message"]
    # ... and changing the event types checks the webhook's own filter against them
    orders = await api.webhook(event_types=["order.created"], filter="data.product.id > 1")
    status, answer = await api.call("PATCH", f"/v1/webhooks/{orders['id']}",
                                    json={"event_types": ["order.created", "product.created"]})
    assert status == 422 and answer["error"]["field"] == "event_types", answer
    assert "product.created" in answer["error"]["message"]
    _, got = await api.call("GET", f"/v1/webhooks/{orders['id']}", status=200)
    assert got["event_types"] == ["order.created"]  # nothing changed
    await api.call("PATCH", f"/v1/webhooks/{orders['id']}", json={"event_types": ["order.shipped"]}, status=200)

    _, changed = await api.call("PATCH", f"/v1/webhooks/{wh['id']}", json={"filter": None}, status=200)
    assert changed["filter"] is None
    assert await api.db.fetchval("SELECT filter FROM webhooks WHERE id = $1", wh["id"]) is None


async def test_a_filter_can_be_tested_on_the_sample_event_of_a_type(api):
    _, answer = await api.call("POST", "/v1/filters/test", json={
        "filter": 'data.order.currency == "USD"', "event_type": "order.created"}, status=200)
    assert answer["result"] is True and answer["error"] is None and answer["event"]["type"] == "order.created"
    _, answer = await api.call("POST", "/v1/filters/test", json={
        "filter": 'data.product.vendor == "Acme"', "event_type": "order.created"}, status=200)
    assert answer["result"] is None and "no such key" in answer["error"]
    _, answer = await api.call("POST", "/v1/filters/test", json={
        "filter": 'type == "order.shipped"', "event": {"type": "order.shipped"}}, status=200)
    assert answer["result"] is True
    status, answer = await api.call("POST", "/v1/filters/test", json={"filter": "a &&& b", "event_type": "order.created"})
    assert status == 422 and answer["error"]["field"] == "filter"
    status, answer = await api.call("POST", "/v1/filters/test", json={"filter": "true", "event_type": "order.refunded"})
    assert status == 422 and answer["error"]["field"] == "event_type"


# ----------------------------------------------------------------------------------------------
# Debugging an integration (issue 16): attempt detail, the events explorer, retry schedules, bulk
# recovery, health figures, typed test sends


async def test_attempt_detail_is_the_request_as_sent_and_the_response(database_url, db, pool, hs_env, spawn):
    """Real sender: attempt 1 goes to /first and gets a 500 with the endpoint's headers; the URL is
    edited, attempt 2 goes to /second. Each attempt shows where it went, the headers it carried (a
    signature that verifies over the body shown) and what came back; a flood of response headers is capped."""
    settings = Settings.from_env(hs_env)
    client = await start_client(settings, pool)
    try:
        async with Receiver() as receiver:
            org = ApiOrg(*await create_organization(db, "detail"))
            api = Api(client, db, org, org)
            await api.store("s1")
            wh = await api.webhook(url=receiver.url("/first"))
            receiver.set("/first", Behaviour(status=500, body="db down", headers={"X-Trace": "t-1"}))
            flood = {f"x-h{i:02d}": "v" * 1000 for i in range(60)}
            receiver.set("/second", Behaviour(status=200, body="ok", headers=flood))
            spawn("sender")
            _, sent = await api.call("POST", f"/v1/webhooks/{wh['id']}/test", json={"event_type": "order.created"},
                                     status=202)
            event_id = sent["event_id"]
            attempts_url = f"/v1/webhooks/{wh['id']}/events/{event_id}/attempts"

            async def attempts(n: int):
                _, body = await api.call("GET", attempts_url, status=200)
                return body["data"] if len(body["data"]) >= n else None
            (first,) = await wait_for(lambda: attempts(1), timeout_s=60, message="attempt 1 recorded")
            await api.call("PATCH", f"/v1/webhooks/{wh['id']}", json={"url": receiver.url("/second")}, status=200)
            await api.call("POST", f"/v1/webhooks/{wh['id']}/events/{event_id}/redeliver", status=202)
            first, second = await wait_for(lambda: attempts(2), timeout_s=60, message="attempt 2 recorded")

            assert first["request"]["url"] == receiver.url("/first")
            assert second["request"]["url"] == receiver.url("/second")
            [got1], [got2] = receiver.at("/first"), receiver.at("/second")
            for attempt, got in ((first, got1), (second, got2)):
                headers = attempt["request"]["headers"]
                assert {k: headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")} == {
                    k: got.headers[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
                assert headers["content-type"] == "application/json" and "body" not in attempt["request"]
                assert wh["secret"] not in orjson.dumps(attempt).decode()
            assert first["response"]["status"] == 500 and first["response"]["excerpt"] == "db down"
            assert first["response"]["headers"]["x-trace"] == "t-1"
            kept = second["response"]["headers"]
            assert second["response"]["status"] == 200 and len(kept) == 32
            assert all(len(v.encode()) <= 300 for v in kept.values())

            _, detail = await api.call("GET", f"{attempts_url}/2", status=200)
            assert detail["request"]["body"].encode() == got2.body
            assert orjson.loads(detail["request"]["body"])["type"] == "order.created"
            assert got2.verify(wh["secret"])
            assert {k: v for k, v in detail.items() if k != "request"} == {
                k: v for k, v in second.items() if k != "request"}
            await api.call("GET", f"{attempts_url}/3", status=404)
            for bad in ("0", "x", "1" * 10):
                status, body = await api.call("GET", f"{attempts_url}/{bad}")
                assert_field_error(status, body, "attempt")
    finally:
        await client.close()


async def test_a_test_send_can_carry_any_event_type_as_its_schema_example(api):
    from hookstream.core.filters import SAMPLE_PAYLOADS

    wh = await api.webhook(store_ids=["s2"])
    _, sent = await api.call("POST", f"/v1/webhooks/{wh['id']}/test", json={"event_type": "product.deleted"},
                             status=202)
    assert sent["event_type"] == "product.deleted"
    event = await api.db.fetchrow("SELECT * FROM events WHERE event_id = $1", sent["event_id"])
    body = orjson.loads(event["body"])
    assert event["event_type"] == body["type"] == "product.deleted"
    assert body["data"] == SAMPLE_PAYLOADS["product.deleted"]["data"]
    assert (body["organization_id"], body["store_id"], body["id"]) == (api.a.id, "s2", sent["event_id"])
    _, log = await api.call("GET", f"/v1/webhooks/{wh['id']}/events", status=200)
    assert [(d["event_id"], d["event_type"]) for d in log["data"]] == [(sent["event_id"], "product.deleted")]
    _, plain = await api.call("POST", f"/v1/webhooks/{wh['id']}/test", json={}, status=202)
    assert plain["event_type"] == "webhook.test"
    for body, field in [({"event_type": "order.refunded"}, "event_type"), ({"event_type": ["order.created"]},
                        "event_type"), ({"event_type": None}, "event_type"), ({"type": "order.created"}, "type")]:
        status, answer = await api.call("POST", f"/v1/webhooks/{wh['id']}/test", json=body)
        assert_field_error(status, answer, field)


async def test_events_explorer_lists_every_event_with_its_deliveries(api):
    hook1 = await api.webhook(description="orders")
    hook2 = await api.webhook(store_ids=["s1", "s2"])
    t = NOW.replace(microsecond=0)
    fanned = await insert_deliveries(api.db, api.a.id, hook1["id"], 2, status="succeeded", attempts=1)
    # the same two events also went to hook2, where one failed
    seqs = [r["seq"] for r in await api.db.fetch("SELECT seq FROM events WHERE event_id = ANY($1::text[])"
                                                  " ORDER BY seq", fanned)]
    await api.db.execute("INSERT INTO deliveries (webhook_id, event_seq, event_id, event_type, store_id, status,"
                         " attempts, last_http_status) SELECT $1, e.seq, e.event_id, e.event_type, e.store_id,"
                         " CASE WHEN e.seq = $2 THEN 'failed' ELSE 'succeeded' END, 4, 500 FROM events e"
                         " WHERE e.seq = ANY($3::bigint[])", hook2["id"], seqs[0], seqs)
    products = await insert_deliveries(api.db, api.a.id, hook2["id"], 3, status="pending",
                                       event_type="product.deleted", store_id="s2")
    # an event no webhook wanted: stored (for idempotency), with no delivery
    await api.db.execute("INSERT INTO events (organization_id, event_id, event_type, store_id, occurred_at, body,"
                         " source_topic, source_partition, source_offset)"
                         " VALUES ($1, 'evt_nobody', 'order.shipped', 's3', now(), '{}', 'test', 0, 99)", api.a.id)
    old = await insert_deliveries(api.db, api.a.id, hook1["id"], 1, status="failed", received_at=t - dt.timedelta(days=3))
    other_org_hook = await api.webhook(api.b)
    await insert_deliveries(api.db, api.b.id, other_org_hook["id"], 2, status="failed")

    async def events(org=None, **params):
        _, body = await api.call("GET", "/v1/events", org, params=params, status=200)
        return body

    everything = await events()
    ids = [e["event_id"] for e in everything["data"]]
    assert ids == ["evt_nobody", *products[::-1], *fanned[::-1], *old]
    by_id = {e["event_id"]: e for e in everything["data"]}
    first = by_id[fanned[0]]
    assert first["deliveries_total"] == 2
    assert [(d["webhook_id"], d["status"], d["attempts"]) for d in first["deliveries"]] == [
        (hook1["id"], "succeeded", 1), (hook2["id"], "failed", 4)]
    assert first["deliveries"][0]["webhook_url"] == hook1["url"]
    assert first["deliveries"][0]["webhook_description"] == "orders"
    assert by_id["evt_nobody"]["deliveries"] == [] and by_id["evt_nobody"]["deliveries_total"] == 0
    assert set(first) == {"event_id", "event_type", "store_id", "occurred_at", "received_at", "deliveries",
                          "deliveries_total"}

    assert [e["event_id"] for e in (await events(event_id=fanned[1]))["data"]] == [fanned[1]]
    assert (await events(event_id="evt_missing"))["data"] == []
    assert [e["event_id"] for e in (await events(status="failed"))["data"]] == [fanned[0], *old]
    assert [e["event_id"] for e in (await events(event_type="product.deleted"))["data"]] == products[::-1]
    assert [e["event_id"] for e in (await events(store_id="s3"))["data"]] == ["evt_nobody"]
    assert [e["event_id"] for e in (await events(until=(t - dt.timedelta(days=1)).isoformat()))["data"]] == old
    assert old[0] not in [e["event_id"] for e in (await events(since=(t - dt.timedelta(days=1)).isoformat()))["data"]]
    # another organization sees only its own, even searching by id
    assert len((await events(api.b))["data"]) == 2
    assert (await events(api.b, event_id=fanned[0]))["data"] == []

    paged, cursor = [], None
    while True:
        body = await events(limit="2", **({"cursor": cursor} if cursor else {}))
        paged += [e["event_id"] for e in body["data"]]
        if (cursor := body["next_cursor"]) is None:
            break
    assert paged == ids
    for params, field in [({"status": "done"}, "status"), ({"event_type": "order.refunded"}, "event_type"),
                          ({"store_id": ""}, "store_id"), ({"event_id": ""}, "event_id"),
                          ({"event_id": "e" * 300}, "event_id"), ({"since": "yesterday"}, "since"),
                          ({"since": t.isoformat(), "until": t.isoformat()}, "until"), ({"limit": "0"}, "limit")]:
        status, body = await api.call("GET", "/v1/events", params=params)
        assert_field_error(status, body, field)
    status, body = await api.call("GET", "/v1/events", params={"cursor": "nonsense"})
    assert_field_error(status, body, "cursor", 400)


def test_retry_schedule_lists_the_waiting_retry_and_estimates_the_rest():
    from hookstream.api.deliveries import retry_schedule

    at = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
    delays = (30.0, 300.0, 1800.0)
    assert retry_schedule("pending", at, 1, delays) == [
        {"retry": 1, "at": at, "estimate": False},
        {"retry": 2, "at": at + dt.timedelta(seconds=300), "estimate": True},
        {"retry": 3, "at": at + dt.timedelta(seconds=2100), "estimate": True}]
    assert retry_schedule("pending", at, 3, delays) == [{"retry": 3, "at": at, "estimate": False}]
    # a first attempt put back (deferred): every retry is still to come
    assert [(r["retry"], r["estimate"]) for r in retry_schedule("pending", at, 0, delays)] == [
        (1, True), (2, True), (3, True)]
    assert retry_schedule("pending", at, 0, delays)[0]["at"] == at + dt.timedelta(seconds=30)
    assert retry_schedule("pending", None, None, delays) == []  # waiting for a manual attempt only
    assert retry_schedule("failed", at, 2, delays) == []


async def test_the_delivery_log_shows_a_pending_deliverys_retry_schedule(api):
    wh = await api.webhook()
    (waiting, done) = await insert_deliveries(api.db, api.a.id, wh["id"], 2, attempts=2)
    due = (NOW + dt.timedelta(minutes=5)).replace(microsecond=0)
    await api.db.execute("UPDATE deliveries SET next_attempt_at = $2, next_retry_index = 2 WHERE event_id = $1",
                         waiting, due)
    await api.db.execute("UPDATE deliveries SET status = 'succeeded' WHERE event_id = $1", done)
    _, log = await api.call("GET", f"/v1/webhooks/{wh['id']}/events", status=200)
    by_id = {d["event_id"]: d for d in log["data"]}
    assert by_id[waiting]["retry_schedule"] == [
        {"retry": 2, "at": due.isoformat().replace("+00:00", "Z"), "estimate": False},
        {"retry": 3, "at": (due + dt.timedelta(seconds=1800)).isoformat().replace("+00:00", "Z"), "estimate": True}]
    assert by_id[done]["retry_schedule"] == []


async def test_recover_redelivers_failed_deliveries_since_a_time_at_a_bounded_rate(database_url, db, pool,
                                                                                  infra_env):
    settings = settings_for(database_url, infra_env["KAFKA_BOOTSTRAP_SERVERS"], allow_http=True,
                            allow_private_networks=True, recover_rate=10)
    client = await start_client(settings, pool)
    try:
        api = Api(client, db, ApiOrg(*await create_organization(db, "A")), ApiOrg(*await create_organization(db, "B")))
        await api.store("s1")
        wh = await api.webhook()
        other = await api.webhook()
        t = NOW.replace(microsecond=0)
        recent = await insert_deliveries(db, api.a.id, wh["id"], 5, status="failed", attempts=4,
                                         created_at=t - dt.timedelta(hours=1))
        older = await insert_deliveries(db, api.a.id, wh["id"], 2, status="failed", attempts=4,
                                        created_at=t - dt.timedelta(days=2))
        fine = await insert_deliveries(db, api.a.id, wh["id"], 1, status="succeeded", attempts=1,
                                       created_at=t - dt.timedelta(hours=1))
        elsewhere = await insert_deliveries(db, api.a.id, other["id"], 1, status="failed",
                                            created_at=t - dt.timedelta(hours=1))
        url = f"/v1/webhooks/{wh['id']}/recover"
        since = (t - dt.timedelta(hours=2)).isoformat()
        _, recovery = await api.call("POST", url, json={"since": since}, status=202)
        assert (recovery["total"], recovery["done"], recovery["status"]) == (5, 0, "running")
        assert recovery["webhook_id"] == wh["id"] and recovery["until"] is None

        rows = await db.fetch("SELECT event_id, status, manual_due_at, next_attempt_at, attempts, recovery_id"
                              " FROM deliveries ORDER BY created_at, id")
        state = {r["event_id"]: r for r in rows}
        assert all(state[e]["status"] == "pending" and state[e]["recovery_id"] == recovery["id"] for e in recent)
        assert all(state[e]["attempts"] == 4 and state[e]["next_attempt_at"] is None for e in recent)
        assert all(state[e]["status"] == "failed" and state[e]["manual_due_at"] is None for e in older + elsewhere)
        assert state[fine[0]]["status"] == "succeeded"
        # spread out at 10 per second, oldest first
        due = sorted(state[e]["manual_due_at"] for e in recent)
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(due)]
        assert all(abs(gap - 0.1) < 1e-6 for gap in gaps), gaps

        status, body = await api.call("POST", url, json={"since": since})
        assert status == 409 and recovery["id"] in body["error"]["message"]
        # the outcomes come in: 3 delivered, 2 failed again
        await db.execute("UPDATE deliveries SET status = CASE WHEN event_id = ANY($2::text[]) THEN 'succeeded'"
                         " ELSE 'failed' END, manual_due_at = NULL WHERE recovery_id = $1", recovery["id"], recent[:3])
        _, progress = await api.call("GET", f"/v1/webhooks/{wh['id']}/recoveries/{recovery['id']}", status=200)
        assert (progress["total"], progress["done"], progress["succeeded"], progress["failed"],
                progress["status"]) == (5, 5, 3, 2, "finished")
        # a finished recovery keeps its figures, and the next one may start
        _, again = await api.call("POST", url, json={"since": since, "until": t.isoformat()}, status=202)
        assert again["total"] == 2
        _, progress = await api.call("GET", f"/v1/webhooks/{wh['id']}/recoveries/{recovery['id']}", status=200)
        assert (progress["succeeded"], progress["failed"], progress["status"]) == (3, 2, "finished")
        _, listed = await api.call("GET", f"/v1/webhooks/{wh['id']}/recoveries", status=200)
        assert [r["id"] for r in listed["data"]] == [again["id"], recovery["id"]]
        assert listed["data"][0]["status"] == "running"
        _, first_page = await api.call("GET", f"/v1/webhooks/{wh['id']}/recoveries", params={"limit": "1"},
                                       status=200)
        _, second_page = await api.call("GET", f"/v1/webhooks/{wh['id']}/recoveries",
                                        params={"limit": "1", "cursor": first_page["next_cursor"]}, status=200)
        assert [r["id"] for r in first_page["data"] + second_page["data"]] == [again["id"], recovery["id"]]
        await api.call("GET", f"/v1/webhooks/{other['id']}/recoveries/{recovery['id']}", status=404)
        await api.call("GET", f"/v1/webhooks/{wh['id']}/recoveries/{recovery['id']}", api.b, status=404)

        _, none = await api.call("POST", f"/v1/webhooks/{other['id']}/recover",
                                 json={"since": "2000-01-01T00:00:00Z", "until": "2000-01-02T00:00:00Z"}, status=202)
        assert (none["total"], none["status"]) == (0, "finished")
        await api.call("PATCH", f"/v1/webhooks/{other['id']}", json={"enabled": False}, status=200)
        status, body = await api.call("POST", f"/v1/webhooks/{other['id']}/recover", json={"since": since})
        assert status == 409 and "disabled" in body["error"]["message"]
        for bad, field in [({}, "since"), ({"since": "yesterday"}, "since"), ({"since": 5}, "since"),
                           ({"since": since, "until": since}, "until"), ({"since": since, "from": since}, "from")]:
            status, body = await api.call("POST", f"/v1/webhooks/{wh['id']}/recover", json=bad)
            assert_field_error(status, body, field)
    finally:
        await client.close()


async def test_recovery_goes_through_the_sender_and_the_health_figures_count_it(database_url, db, pool, hs_env,
                                                                              spawn):
    """Deliveries that failed while an endpoint was down are recovered once it is back: the real
    sender's retry pump sends each once, the recovery finishes with every one delivered, and the
    webhook's health figures count the new attempts (added to, not reset)."""
    settings = Settings.from_env(hs_env)
    client = await start_client(settings, pool)
    try:
        async with Receiver() as receiver:
            org = ApiOrg(*await create_organization(db, "recover"))
            api = Api(client, db, org, org)
            await api.store("s1")
            wh = await api.webhook(url=receiver.url("/back"))
            failed = await insert_deliveries(db, org.id, wh["id"], 6, status="failed", attempts=4)
            # six failed attempts an hour ago, already counted
            await db.execute("INSERT INTO webhook_stats_hourly VALUES ($1, date_trunc('hour', now()) - interval"
                             " '1 hour', 7, 6, 0)", wh["id"])
            spawn("sender")
            _, recovery = await api.call("POST", f"/v1/webhooks/{wh['id']}/recover",
                                         json={"since": (NOW - dt.timedelta(days=1)).isoformat()}, status=202)
            assert recovery["total"] == 6

            async def finished():
                _, body = await api.call("GET", f"/v1/webhooks/{wh['id']}/recoveries/{recovery['id']}", status=200)
                return body if body["status"] == "finished" else None
            done = await wait_for(finished, timeout_s=60, message="the recovery to finish")
            assert (done["done"], done["succeeded"], done["failed"]) == (6, 6, 0)
            assert sorted(r.headers["webhook-id"] for r in receiver.at("/back")) == sorted(failed)
            assert all(r.verify(wh["secret"]) for r in receiver.at("/back"))
            states = await db.fetch("SELECT status, attempts FROM deliveries WHERE webhook_id = $1", wh["id"])
            assert {(r["status"], r["attempts"]) for r in states} == {("succeeded", 5)}

            _, day = await api.call("GET", f"/v1/webhooks/{wh['id']}/stats", status=200)
            assert (day["window"], day["bucket_seconds"], len(day["buckets"])) == ("24h", 3600, 24)
            assert (day["attempts"], day["succeeded"], day["failed"], day["success_rate"]) == (12, 6, 6, 0.5)
            assert (day["buckets"][-1]["attempts"], day["buckets"][-1]["succeeded"]) == (6, 6)
            assert day["buckets"][-2]["failed"] == 6
            _, week = await api.call("GET", f"/v1/webhooks/{wh['id']}/stats", params={"window": "7d"}, status=200)
            assert (week["bucket_seconds"], len(week["buckets"]), week["attempts"]) == (21600, 28, 12)
            status, body = await api.call("GET", f"/v1/webhooks/{wh['id']}/stats", params={"window": "1y"})
            assert_field_error(status, body, "window")
    finally:
        await client.close()


def test_stats_buckets_end_with_the_current_hour():
    from hookstream.api.explorer import stats_buckets

    now = dt.datetime(2026, 12, 1, 12, 30, tzinfo=dt.UTC)
    hour = dt.timedelta(hours=1)
    rows = [(dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC), 10, 9),       # this hour: the last bucket
            (dt.datetime(2026, 11, 30, 13, tzinfo=dt.UTC), 4, 0),       # 23 hours ago: the first bucket
            (dt.datetime(2026, 11, 30, 12, tzinfo=dt.UTC), 100, 100)]   # 24 hours ago: outside
    day = stats_buckets(rows, "24h", now)
    assert day["buckets"][0]["start"] == dt.datetime(2026, 11, 30, 13, tzinfo=dt.UTC)
    assert day["buckets"][-1]["start"] == now.replace(minute=0) and len(day["buckets"]) == 24
    assert (day["buckets"][-1]["attempts"], day["buckets"][-1]["failed"], day["buckets"][0]["failed"]) == (10, 1, 4)
    assert (day["attempts"], day["succeeded"], day["success_rate"]) == (14, 9, round(9 / 14, 4))
    week = stats_buckets(rows, "7d", now)
    assert week["attempts"] == 114 and week["buckets"][-1]["start"] == now.replace(minute=0) - 5 * hour
    assert stats_buckets([], "24h", now)["success_rate"] is None
