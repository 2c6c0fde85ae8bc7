"""Property-based hostility (issue 11): generated endpoint answers and generated events that pass the
schema, against the real sender/router code, a real local HTTP server, real PostgreSQL and Kafka.

- Sender: whatever an endpoint answers (status, Retry-After, Content-Encoding, framing, arbitrary
  bytes, delays past the timeout), the attempt returns an outcome, PostgreSQL accepts it, and the
  outcome sink records it in bounded time (it never retries a permanent error).
- Router: whatever an event that passes the schema holds (any Unicode in ids, any timestamp shape the
  pattern allows, any data), ``route_batch`` finishes in bounded time and every record is either
  stored or on the dead-letter topic.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import itertools
import time
import zlib
from dataclasses import dataclass

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookstream.core.db import open_pool
from hookstream.core.kafka import ensure_topics, open_producer
from hookstream.core.model import DeliveryTask, Failed, Succeeded
from hookstream.core.retry import RetryPolicy
from hookstream.core.signing import decode_secret
from hookstream.core.topics import apply_topic_specs, topic_specs
from hookstream.core.validation import EVENT_TYPES, DomainEvent, validate_event
from hookstream.core.webhooks import Webhook, WebhookDirectory
from hookstream.router.router import Router, SourceRecord
from hookstream.sender.http import make_session, post_webhook
from hookstream.sender.outcomes import OutcomeSink
from hookstream.sender.sender import decide_outcome
from tests.integration.test_hostile_endpoints import RawServer
from tests.support import make_org, make_webhook, read_topic_to_end

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.5
CAP = 4096
RECORD_WITHIN_S = 10.0
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# --- the sender -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostileAnswer:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    framing: str  # length | close | lying-length | chunked
    delay_s: float


header_values = st.one_of(
    st.sampled_from([b"Mon, 1 Jan 99999999999 00:00:00 GMT", b"9" * 400, b"-1", b"0", b"3", b"1.5",
                     b"Fri, 31 Dec 9999 23:59:59 GMT", b"Wed, 21 Oct 2015 07:28:00 GMT", b"\xff\xfe", b""]),
    st.binary(max_size=80).map(lambda b: bytes(c for c in b if c not in b"\r\n")),
)


@st.composite
def hostile_answers(draw) -> HostileAnswer:
    status = draw(st.one_of(st.integers(200, 599), st.sampled_from([200, 204, 301, 302, 410, 429, 500, 503])))
    headers = []
    if draw(st.booleans()):
        headers.append((b"Retry-After", draw(header_values)))
    encoding = draw(st.sampled_from([None, b"gzip", b"deflate", b"x-gzip", b"br", b"identity", b"gzip, gzip"]))
    if encoding is not None:
        headers.append((b"Content-Encoding", encoding))
    if draw(st.booleans()):
        headers.append((b"X-" + draw(st.binary(min_size=1, max_size=8).map(lambda b: b.hex().encode())),
                        draw(header_values)))
    body = draw(st.one_of(
        st.binary(max_size=3 * CAP),
        st.binary(max_size=CAP).map(gzip.compress),
        st.binary(max_size=CAP).map(zlib.compress),
        st.just(gzip.compress(b"\x00" * 5_000_000)),  # a zip bomb
        st.sampled_from([b"ok\x00", b"\xff" * 100, b"\x00" * CAP * 2]),
    ))
    framing = draw(st.sampled_from(["length", "close", "lying-length", "chunked"]))
    delay_s = draw(st.sampled_from([0.0, 0.0, 0.05, TIMEOUT_S * 2]))
    return HostileAnswer(status, tuple(headers), body, framing, delay_s)


class Scripted:
    """The answer a RawServer (tests/integration/test_hostile_endpoints.py) gives, exactly as given."""

    def __init__(self) -> None:
        self.answer: HostileAnswer | None = None

    async def __call__(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = self.answer
        assert answer is not None
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        lines = [b"HTTP/1.1 %d Hostile" % answer.status, *(k + b": " + v for k, v in answer.headers)]
        body = answer.body
        if answer.framing == "length":
            lines.append(b"Content-Length: %d" % len(body))
        elif answer.framing == "lying-length":
            lines.append(b"Content-Length: %d" % (len(body) + 1000))
        elif answer.framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
            body = (b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
        lines.append(b"Connection: close")
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()


@pytest.fixture
async def sender_parts(db, database_url, hs_settings):
    """A real outcome sink on this test's database and status topic, a hostile server, a webhook."""
    await ensure_topics(hs_settings.kafka_bootstrap_servers, [hs_settings.status_topic])
    org_id, _ = await make_org(db, "Hostile", stores=("s1",))
    script = Scripted()
    async with RawServer(script) as server, open_pool(database_url, max_size=4) as pool, \
            open_producer(hs_settings.kafka_bootstrap_servers) as producer, \
            make_session(allow_private_networks=True) as session, \
            OutcomeSink(pool, producer, hs_settings.status_topic, flush_interval_ms=5, flush_max=100) as sink:
        webhook_id, secret = await make_webhook(db, org_id, f"http://127.0.0.1:{server.port}/hook",
                                                store_ids=["s1"])
        webhook = Webhook(webhook_id, org_id, f"http://127.0.0.1:{server.port}/hook", frozenset(EVENT_TYPES),
                          frozenset({"s1"}), True, decode_secret(secret), None, None)
        yield db, org_id, script, session, sink, webhook


_event_ids = itertools.count()


async def insert_delivery(db: asyncpg.Connection, org_id: str, webhook_id: str) -> DeliveryTask:
    event_id = f"evt_prop_{next(_event_ids)}"
    body = orjson.dumps({"id": event_id, "type": "order.created", "created_at": "2026-01-01T00:00:00Z",
                         "organization_id": org_id, "store_id": "s1", "data": {"order": {"id": "o1"}}}).decode()
    seq = await db.fetchval(
        "INSERT INTO events (organization_id, event_id, event_type, store_id, occurred_at, body, source_topic,"
        " source_partition, source_offset) VALUES ($1, $2, 'order.created', 's1', now(), $3, 't', 0, 0)"
        " RETURNING seq", org_id, event_id, body)
    delivery_id = await db.fetchval(
        "INSERT INTO deliveries (webhook_id, event_seq, event_id, event_type, store_id, in_flight)"
        " VALUES ($1, $2, $3, 'order.created', 's1', true) RETURNING id", webhook_id, seq, event_id)
    return DeliveryTask(delivery_id, webhook_id, org_id, event_id, "order.created", "s1", "2026-01-01T00:00:00Z",
                        attempt=1, retry_index=0, manual=False, body=body)


@PROPERTY_SETTINGS
@given(answer=hostile_answers())
async def test_every_hostile_answer_ends_in_an_outcome_postgresql_accepts(sender_parts, answer):
    db, org_id, script, session, sink, webhook = sender_parts
    script.answer = answer
    task = await insert_delivery(db, org_id, webhook.id)
    started = time.perf_counter()
    result = await post_webhook(session, webhook, task, timeout_s=TIMEOUT_S, excerpt_cap_bytes=CAP,
                                allow_private_networks=True)
    elapsed = time.perf_counter() - started
    assert isinstance(result, Succeeded | Failed)
    assert elapsed < TIMEOUT_S + 1.5, f"an attempt took {elapsed:.2f}s"
    if isinstance(result, Succeeded):
        assert 200 <= answer.status < 300 and result.http_status == answer.status
    record = decide_outcome(task, result, RetryPolicy((30.0, 300.0, 1800.0)), dt.datetime.now(dt.UTC),
                            elapsed * 1000)
    if record.next_attempt_at is not None:  # a Retry-After never schedules past the policy's cap
        assert record.next_attempt_at - record.finished_at <= dt.timedelta(seconds=36)
    # the sink never retries a permanent error: it records (or isolates) within bounded time
    await asyncio.wait_for(sink.record(record), RECORD_WITHIN_S)
    row = await db.fetchrow("SELECT status, attempts, in_flight FROM deliveries WHERE id = $1", task.delivery_id)
    assert (row["attempts"], row["in_flight"]) == (1, False)
    assert row["status"] == {"succeeded": "succeeded", "retrying": "pending", "failed": "failed"}[record.status]
    [attempt] = await db.fetch("SELECT response_excerpt, error FROM attempts WHERE delivery_id = $1",
                               task.delivery_id)
    excerpt = attempt["response_excerpt"] or ""
    assert "\x00" not in excerpt and len(excerpt.encode()) <= CAP


# --- the router -------------------------------------------------------------------------------------


ids = st.text(min_size=1, max_size=128)
timestamps = st.builds(
    lambda y, mo, d, h, mi, s, frac, zone: f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{zone}",
    st.sampled_from([1, 2, 1969, 1970, 2016, 2026, 9998, 9999]) | st.integers(1, 9999),
    st.integers(1, 12), st.integers(1, 31), st.integers(0, 23), st.integers(0, 59), st.integers(0, 60),
    st.sampled_from(["", ".5", ".123456", ".123456789", ".000000001"]),
    st.sampled_from(["Z", "z", "+00:00", "-00:00", "+23:59", "-23:59", "+01:00", "-01:00", "+14:00"]),
)
scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e18, max_value=1e18) | st.text(max_size=50))
# two levels of containers, spelled out (deep nesting is the validator's own unit tests' business)
json_values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(st.text(max_size=10), st.one_of(scalars, st.lists(scalars, max_size=3)), max_size=4),
)


@st.composite
def schema_passing_events(draw, *, org_id: str) -> bytes:
    event_type = draw(st.sampled_from(EVENT_TYPES))
    resource = "product" if event_type.startswith("product.") else "order"
    data = {resource: {"id": draw(st.text(min_size=1, max_size=40)), "note": draw(json_values)}}
    routed = draw(st.booleans())  # half go to the organization and store that has a webhook
    event = {
        "id": draw(st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)) + f"_{next(_event_ids)}",
        "type": event_type,
        "occurred_at": draw(timestamps),
        "organization_id": org_id if routed else draw(ids),
        "store_id": "s1" if routed else draw(ids),
        "data": data,
    }
    return orjson.dumps(event)


@pytest.fixture
async def router_parts(db, database_url, hs_settings):
    org_id, _ = await make_org(db, "Routed", stores=("s1",))
    await make_webhook(db, org_id, "https://example.com/hook", store_ids=["s1"])
    await apply_topic_specs(hs_settings.kafka_bootstrap_servers,
                            [s for s in topic_specs(hs_settings)
                             if s.name in (hs_settings.delivery_topic, hs_settings.dead_letter_topic)])
    placed: list[bytes] = []
    async with open_pool(database_url, max_size=4) as pool, WebhookDirectory(database_url) as directory, \
            open_producer(hs_settings.kafka_bootstrap_servers) as producer:
        yield Router(hs_settings, pool, directory, producer), org_id, placed
    # every record of every example is stored or dead-lettered: nothing vanishes
    stored = {(r["organization_id"], r["event_id"]) for r in await db.fetch("SELECT organization_id, event_id FROM events")}
    dead = {record.value for record in await read_topic_to_end(hs_settings.kafka_bootstrap_servers,
                                                               hs_settings.dead_letter_topic)}
    for value in placed:
        event = orjson.loads(value)
        assert (event["organization_id"], event["id"]) in stored or value in dead, event


_offsets = itertools.count()


@PROPERTY_SETTINGS
@given(data=st.data())
async def test_every_event_that_passes_the_schema_is_stored_or_dead_lettered(router_parts, data):
    router, org_id, placed = router_parts
    values = data.draw(st.lists(schema_passing_events(org_id=org_id), min_size=1, max_size=6))
    records = [SourceRecord("aiq.orders", 0, next(_offsets), b"k", value, ()) for value in values]
    placed.extend(values)
    routed = await asyncio.wait_for(router.route_batch(records, asyncio.Event()), 30)
    assert routed is True
    for value in values:
        verdict = validate_event(value)
        if isinstance(verdict, DomainEvent):  # accepted: PostgreSQL must have taken it too
            stored = await router._pool.fetchval(
                "SELECT occurred_at FROM events WHERE organization_id = $1 AND event_id = $2",
                verdict.organization_id, verdict.id)
            assert stored == verdict.occurred_at_utc


# --- the isolation paths themselves, with a refusal the database is made to give ----------------------


async def test_an_event_postgresql_refuses_is_dead_lettered_and_its_batch_routed(router_parts, db, hs_settings):
    """No known event passes validation and fails storage any more, so a CHECK constraint stands in for
    the next unknown one: the batch is halved until the refused event stands alone."""
    router, org_id, placed = router_parts
    await db.execute("ALTER TABLE events ADD CONSTRAINT test_refuses_poison CHECK (store_id <> 'poison')")
    values = [orjson.dumps({"id": f"evt_iso_{n}", "type": "order.created", "occurred_at": "2026-11-27T10:15:00Z",
                            "organization_id": org_id, "store_id": "poison" if n == 5 else "s1",
                            "data": {"order": {"id": f"o{n}"}}}) for n in range(8)]
    records = [SourceRecord("aiq.orders", 0, next(_offsets), b"k", value, ()) for value in values]
    placed.extend(values)
    assert await asyncio.wait_for(router.route_batch(records, asyncio.Event()), 30) is True
    stored = {r["event_id"] for r in await db.fetch("SELECT event_id FROM events WHERE event_id LIKE 'evt_iso_%'")}
    assert stored == {f"evt_iso_{n}" for n in range(8) if n != 5}
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE event_id LIKE 'evt_iso_%'") == 7
    dead = [r for r in await read_topic_to_end(hs_settings.kafka_bootstrap_servers, hs_settings.dead_letter_topic)
            if orjson.loads(r.value)["id"] == "evt_iso_5"]
    [record] = dead
    headers = dict(record.headers)
    assert headers["hookstream-reason"] == b"unstorable" and b"test_refuses_poison" in headers["hookstream-error"]


async def test_an_outcome_postgresql_refuses_is_recorded_without_its_details(sender_parts):
    db, org_id, _server, _session, sink, webhook = sender_parts
    await db.execute("ALTER TABLE attempts ADD CONSTRAINT test_refuses_poison"
                     " CHECK (response_excerpt IS NULL OR response_excerpt NOT LIKE '%poison%')")
    good, bad = [await insert_delivery(db, org_id, webhook.id) for _ in range(2)]
    now = dt.datetime.now(dt.UTC)
    policy = RetryPolicy((30.0, 300.0, 1800.0))
    records = [decide_outcome(good, Succeeded(200, "fine"), policy, now, 3.0),
               decide_outcome(bad, Failed(retryable=True, error="HTTP 500", http_status=500,
                                          response_excerpt="poison"), policy, now, 3.0)]
    await asyncio.wait_for(asyncio.gather(*(sink.record(r) for r in records)), RECORD_WITHIN_S)
    rows = {r["delivery_id"]: r for r in await db.fetch("SELECT * FROM attempts")}
    assert rows[good.delivery_id]["response_excerpt"] == "fine"
    assert rows[bad.delivery_id]["response_excerpt"] is None and rows[bad.delivery_id]["http_status"] == 500
    assert "details not stored: PostgreSQL refused them" in rows[bad.delivery_id]["error"]
    status = await db.fetchval("SELECT status FROM deliveries WHERE id = $1", bad.delivery_id)
    assert status == "pending"  # its retry is scheduled as for any 500


async def test_a_replay_re_enqueues_stored_deliveries_whatever_the_webhooks_match_now(router_parts, db):
    """The router stored a batch and crashed before Kafka took its tasks; meanwhile the webhook got a
    filter that refuses the event (or was changed to other stores). The replay must still enqueue the
    delivery stored the first time, or it would stay in flight forever."""
    router, org_id, placed = router_parts
    value = orjson.dumps({"id": "evt_replay", "type": "order.created", "occurred_at": "2026-11-27T10:15:00Z",
                          "organization_id": org_id, "store_id": "s1", "data": {"order": {"id": "o1"}}})
    records = [SourceRecord("aiq.orders", 0, next(_offsets), b"k", value, ())]
    placed.append(value)
    good, _ = router.validate_batch(records)
    first, _ = await router._store(good, router.match_batch(good))
    assert [t.event_id for t in first] == ["evt_replay"]
    replayed, _ = await router._store(good, [])  # the same source position; nothing matches any more
    assert [(t.delivery_id, t.attempt) for t in replayed] == [(first[0].delivery_id, 1)]
    # and once attempted, a replay leaves it to the sender and the pump
    await db.execute("UPDATE deliveries SET attempts = 1, in_flight = false WHERE id = $1", first[0].delivery_id)
    again, _ = await router._store(good, router.match_batch(good))
    assert again == []
