"""Bad input on the router's source topics (issue 7, "Bad input"; CONTRACT §2): real router and sender
processes, real Kafka, real PostgreSQL, a real HTTP receiver.

Every class of bad record is published between good events. Each bad record must land in the
dead-letter topic exactly once, copied unchanged (value bytes, key and its own headers), with the
right ``hookstream-reason`` and the source topic/partition/offset where it was published, and be
counted in ``hookstream_events_rejected_total{reason}``; every good event around it must still be
delivered, signed, exactly once.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import RecordMetadata
from prometheus_client.parser import text_string_to_metric_families

from hookstream.core.kafka import open_producer
from hookstream.core.publish import resource_key, topic_for
from hookstream.core.validation import EVENT_TYPES
from tests.receiver import Receiver
from tests.support import make_org, make_webhook, sample_event, wait_for

pytestmark = pytest.mark.integration

MAX_EVENT_BYTES = 8 * 1024
ROUTER_ENV = {"HOOKSTREAM_MAX_EVENT_BYTES": "8KiB"}
# The largest value (with the key below and no headers) that the local broker accepts with its default
# message.max.bytes (1048588), less a small margin: such a record can sit in a source topic, but an exact
# copy plus the router's five dead-letter headers is bigger than the broker's default limit.
NEAR_BROKER_LIMIT_VALUE_BYTES = 1_048_400
NEAR_BROKER_LIMIT_KEY = b"bad-too-large-near-broker-limit"
DELIVERY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class BadRecord:
    name: str  # what makes it bad (for messages)
    reason: str  # the expected hookstream-reason
    value: bytes | None
    key: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class Placed:
    record: BadRecord
    topic: str
    meta: RecordMetadata


def nested(depth: int) -> dict:
    node: dict = {"leaf": True}
    for _ in range(depth - 1):
        node = {"n": node}
    return node


def bad_records(base: dict) -> list[BadRecord]:
    """At least one record per rejection class; ``base`` is a valid event that would be delivered."""

    def event(**changes) -> bytes:
        return orjson.dumps({**base, **changes})

    def without(field: str) -> bytes:
        return orjson.dumps({k: v for k, v in base.items() if k != field})

    valid = orjson.dumps(base)
    assert valid.startswith(b'{"id":')
    records = [
        BadRecord("invalid UTF-8 bytes", "not_utf8", b"\xff\xfe not utf-8", b"bad-not-utf8-1"),
        # A well-formed event but for one lone continuation byte inside a string.
        BadRecord("invalid UTF-8 inside a valid-looking event", "not_utf8",
                  valid.replace(b'"store_id":"', b'"store_id":"\x80', 1), b"bad-not-utf8-2"),
        BadRecord("not JSON", "not_json", b"{not json", b"bad-not-json-1"),
        BadRecord("JSON with trailing garbage", "not_json", valid + b" trailing", b"bad-not-json-2"),
        BadRecord("a JSON array", "not_object", b"[1, 2, 3]", b"bad-not-object-1"),
        BadRecord("a JSON string", "not_object", b'"order.created"', b"bad-not-object-2"),
        BadRecord("no store_id", "missing_field", without("store_id"), b"bad-missing-field"),
        BadRecord("data is an array", "wrong_type", event(data=[]), b"bad-wrong-type-1"),
        BadRecord("store_id is a number", "wrong_type", event(store_id=42), b"bad-wrong-type-2"),
        BadRecord("unknown event type", "unknown_type", event(type="order.exploded"), b"bad-unknown-type"),
        BadRecord("space and '!' in id", "bad_id", event(id="bad id!"), b"bad-bad-id-1"),
        BadRecord("id of 129 characters", "bad_id", event(id="x" * 129), b"bad-bad-id-2"),
        BadRecord("over HOOKSTREAM_MAX_EVENT_BYTES", "too_large",
                  event(data={**base["data"], "padding": "p" * MAX_EVENT_BYTES}), b"bad-too-large"),
        BadRecord("containers nested 40 deep", "too_deep",
                  event(data={**base["data"], "deep": nested(40)}), b"bad-too-deep"),
        BadRecord("an integer beyond 64 bits", "number_out_of_range",
                  valid[:-1] + b',"n":' + str(2**70).encode() + b"}", b"bad-number-1"),
        BadRecord("a float beyond the double range", "number_out_of_range",
                  valid.replace(b'"data":{', b'"data":{"x":1e400,', 1), b"bad-number-2"),
        BadRecord("id written twice", "duplicate_keys",
                  valid.replace(b'{"id":', b'{"id":"evt_first","id":', 1), b"bad-duplicate-keys"),
        BadRecord("zero-length value", "empty", b"", b"bad-empty"),
        BadRecord("tombstone", "empty", None, b"bad-tombstone"),
        BadRecord("occurred_at without a zone", "bad_timestamp",
                  event(occurred_at="2026-11-27T10:15:00"), b"bad-timestamp-1"),
        BadRecord("30 February", "bad_timestamp", event(occurred_at="2026-02-30T10:15:00Z"), b"bad-timestamp-2"),
        BadRecord("order.created without an order", "invalid_data",
                  event(data={"product": {"id": "p1"}}), b"bad-invalid-data"),
        BadRecord("an unknown top-level field", "schema", event(extra=1), b"bad-schema"),
    ]
    # A record's own headers are copied too (here on a record that is otherwise a plain bad one).
    records.append(BadRecord("not JSON, with its own headers", "not_json", b"<xml/>", b"bad-with-headers",
                             headers=(("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                                      ("x-upstream", b"\x00\x01binary"))))
    return records


async def read_to_end(bootstrap: str, topic: str) -> list:
    """Every record of ``topic``, read from the beginning up to its end offsets at the time of the call."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            await consumer._client.force_metadata_update()  # the topic may be new to this client
            partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or ())]
        assert partitions, f"topic {topic} does not exist"
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        records = []
        async with asyncio.timeout(30):
            while [tp for tp in partitions if await consumer.position(tp) < end[tp]]:
                batch = await consumer.getmany(timeout_ms=200)
                for messages in batch.values():
                    records.extend(messages)
        return records
    finally:
        await consumer.stop()


async def rejected_counts(metrics_listen: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(f"http://{metrics_listen}/metrics") as response:
        text = await response.text()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hookstream_events_rejected_total":
                counts[sample.labels["reason"]] = sample.value
    return counts


def assert_dead_lettered_unchanged(dead: list, placed: list[Placed]) -> None:
    """Each placed record appears exactly once in ``dead``, unchanged, with the right headers."""
    by_source: dict[tuple[str, int, int], list] = collections.defaultdict(list)
    for record in dead:
        headers = dict(record.headers)
        source = (headers["hookstream-source-topic"].decode(), int(headers["hookstream-source-partition"]),
                  int(headers["hookstream-source-offset"]))
        by_source[source].append(record)
    expected = {(p.topic, p.meta.partition, p.meta.offset): p for p in placed}
    assert set(by_source) == set(expected), "dead-letter records do not match the bad records published"
    for source, copies in by_source.items():
        bad = expected[source].record
        assert len(copies) == 1, f"{bad.name}: dead-lettered {len(copies)} times"
        copy = copies[0]
        headers = copy.headers
        names = [name for name, _ in headers]
        assert len(names) == len(set(names)), f"{bad.name}: repeated headers {names}"
        header = dict(headers)
        assert header["hookstream-reason"].decode() == bad.reason, (bad.name, header["hookstream-reason"])
        error = header["hookstream-error"]
        assert 0 < len(error) <= 1000, (bad.name, error)
        error.decode("utf-8")  # a readable explanation, whatever the input was
        assert copy.value == bad.value, f"{bad.name}: value not copied unchanged"
        assert copy.key == bad.key, f"{bad.name}: key not copied unchanged"
        for name, value in bad.headers:
            assert header.get(name) == value, f"{bad.name}: its header {name!r} was not kept"


async def test_every_class_of_bad_record_is_dead_lettered_and_good_events_around_it_are_delivered(
        db, hs_settings, spawn):
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        _, secret = await make_webhook(db, org, receiver.url("/hook"), store_ids=["s1"])
        router = spawn("router", env=ROUTER_ENV)
        spawn("sender", env=ROUTER_ENV)

        bad = bad_records(sample_event("order.created", org, "s1", 0))
        assert len({b.reason for b in bad}) >= 15
        good = [sample_event(EVENT_TYPES[n % len(EVENT_TYPES)], org, "s1", n) for n in range(len(bad) + 10)]
        placed: list[Placed] = []
        bootstrap = hs_settings.kafka_bootstrap_servers
        async with open_producer(bootstrap) as producer:
            # good, bad, good, bad, ... then good events after the last bad one; bad records alternate
            # between the two source topics so both partitions' flows are exercised.
            for n, event in enumerate(good):
                await producer.send_and_wait(topic_for(event["type"], hs_settings.source_topics),
                                             orjson.dumps(event), key=resource_key(event))
                if n < len(bad):
                    topic = hs_settings.source_topics[n % 2]
                    meta = await producer.send_and_wait(topic, bad[n].value, key=bad[n].key,
                                                        headers=list(bad[n].headers) or None)
                    placed.append(Placed(bad[n], topic, meta))

        good_ids = {e["id"] for e in good}
        await wait_for(lambda: {orjson.loads(r.body)["id"] for r in receiver.at("/hook")} >= good_ids,
                       timeout_s=DELIVERY_TIMEOUT_S, message="every good event delivered")
        expected_counts = collections.Counter(b.reason for b in bad)
        metrics_listen = router.env["HOOKSTREAM_METRICS_LISTEN"]
        # The counter moves only after the dead-letter copies are acknowledged by Kafka.
        await wait_for(lambda: _counts_reach(metrics_listen, expected_counts), timeout_s=30,
                       message="hookstream_events_rejected_total to count every bad record")

        dead = await read_to_end(bootstrap, hs_settings.dead_letter_topic)
        assert_dead_lettered_unchanged(dead, placed)
        assert await rejected_counts(metrics_listen) == dict(expected_counts)

        await asyncio.sleep(1.0)  # let any duplicate delivery show up
        received = receiver.at("/hook")
        ids = [orjson.loads(r.body)["id"] for r in received]
        assert sorted(ids) == sorted(good_ids), "each good event delivered exactly once, and nothing else"
        by_id = {e["id"]: e for e in good}
        for request in received:
            assert request.verify(secret)
            body = orjson.loads(request.body)
            assert body["data"] == by_id[body["id"]]["data"] and body["type"] == by_id[body["id"]]["type"]
        # Nothing bad reached PostgreSQL either.
        stored = await db.fetch("SELECT event_id FROM events")
        assert {r["event_id"] for r in stored} == good_ids
        assert "Traceback" not in router.output()


async def _counts_reach(metrics_listen: str, expected: collections.Counter) -> bool:
    counts = await rejected_counts(metrics_listen)
    return all(counts.get(reason, 0) >= n for reason, n in expected.items())


async def test_a_record_too_large_to_copy_with_headers_does_not_stop_the_router(db, hs_settings, spawn):
    """An oversize record the broker accepted (just under its default 1 MiB limit) must be dead-lettered
    like any other and must not hold up the good events published around it (CONTRACT §2: a bad
    record "never stops or slows the pipeline")."""
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        await make_webhook(db, org, receiver.url("/hook"), store_ids=["s1"])
        router = spawn("router", env=ROUTER_ENV)
        spawn("sender", env=ROUTER_ENV)
        before = sample_event("order.created", org, "s1", 1)
        after = sample_event("order.created", org, "s1", 2)
        topic = hs_settings.source_topics[1]
        huge = b'{"padding":"' + b"p" * (NEAR_BROKER_LIMIT_VALUE_BYTES - 14) + b'"}'
        assert len(huge) == NEAR_BROKER_LIMIT_VALUE_BYTES
        async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
            await producer.send_and_wait(topic, orjson.dumps(before), key=b"k")
            meta = await producer.send_and_wait(topic, huge, key=NEAR_BROKER_LIMIT_KEY)
            await producer.send_and_wait(topic, orjson.dumps(after), key=b"k")

        # The events after it in the same batch may be routed anyway; the flow must go on after it too.
        await wait_for(lambda: {orjson.loads(r.body)["id"] for r in receiver.at("/hook")} >= {before["id"]},
                       timeout_s=30, message="the good event published before the huge record")
        later = [sample_event("order.created", org, "s1", n) for n in range(3, 8)]
        async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
            for event in later:
                await producer.send_and_wait(topic_for(event["type"], hs_settings.source_topics),
                                             orjson.dumps(event), key=resource_key(event))
        wanted = {e["id"] for e in (before, after, *later)}
        await wait_for(lambda: {orjson.loads(r.body)["id"] for r in receiver.at("/hook")} >= wanted,
                       timeout_s=20, message="the good events published after the huge record")
        metrics_listen = router.env["HOOKSTREAM_METRICS_LISTEN"]
        await wait_for(lambda: _counts_reach(metrics_listen, collections.Counter({"too_large": 1})),
                       timeout_s=10, message="the huge record counted as too_large")
        dead = await read_to_end(hs_settings.kafka_bootstrap_servers, hs_settings.dead_letter_topic)
        assert len(dead) == 1
        header = dict(dead[0].headers)
        assert header["hookstream-reason"] == b"too_large"
        assert (header["hookstream-source-topic"].decode(), int(header["hookstream-source-partition"]),
                int(header["hookstream-source-offset"])) == (topic, meta.partition, meta.offset)
        assert dead[0].key == NEAR_BROKER_LIMIT_KEY
