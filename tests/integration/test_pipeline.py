"""The delivery pipeline end to end: real router and sender processes, real Kafka, real PostgreSQL,
a real HTTP receiver."""

from __future__ import annotations

import asyncio
import collections
import time

import aiohttp
import orjson
import pytest

import hookstream
from hookstream.core.kafka import open_producer
from hookstream.core.publish import publish_event
from hookstream.core.validation import EVENT_TYPES
from tests.receiver import Behaviour, Receiver
from tests.support import (
    delivery_states,
    make_org,
    make_webhook,
    publish_events,
    read_topic,
    read_topic_to_end,
    sample_event,
    status_records,
    wait_for,
)

pytestmark = pytest.mark.integration


async def test_every_event_type_reaches_exactly_the_matching_webhooks(db, hs_settings, spawn):
    async with Receiver() as receiver:
        org_a, _ = await make_org(db, "A", stores=("s1", "s2"))
        org_b, _ = await make_org(db, "B", stores=("s1",))
        all_s1, secret_all = await make_webhook(db, org_a, receiver.url("/all-s1"), store_ids=["s1"])
        orders_s2, secret_s2 = await make_webhook(db, org_a, receiver.url("/orders-s2"),
                                                  event_types=["order.created", "order.shipped"], store_ids=["s2"])
        await make_webhook(db, org_b, receiver.url("/org-b"), store_ids=["s1"])
        await make_webhook(db, org_a, receiver.url("/disabled"), store_ids=["s1"], enabled=False)
        spawn("router")
        spawn("sender")

        events = [sample_event(t, org_a, "s1", n) for n, t in enumerate(EVENT_TYPES)]
        events += [sample_event("order.created", org_a, "s2", 100), sample_event("product.created", org_a, "s2", 101)]
        await publish_events(hs_settings, events)

        await wait_for(lambda: len(receiver.at("/all-s1")) >= 12 and len(receiver.at("/orders-s2")) >= 1,
                       timeout_s=60, message="deliveries to arrive")
        await asyncio.sleep(1.0)  # a grace period for any wrong extra delivery to show up
        got_all = receiver.at("/all-s1")
        assert sorted(orjson.loads(r.body)["type"] for r in got_all) == sorted(EVENT_TYPES)
        assert [orjson.loads(r.body)["id"] for r in receiver.at("/orders-s2")] == [events[12]["id"]]
        assert receiver.at("/org-b") == [] and receiver.at("/disabled") == []

        by_id = {e["id"]: e for e in events}
        for request in got_all:
            assert request.verify(secret_all)
            assert not request.verify(secret_s2)
            body = orjson.loads(request.body)
            source = by_id[body["id"]]
            assert body == {"id": source["id"], "type": source["type"], "created_at": source["occurred_at"],
                            "organization_id": org_a, "store_id": "s1", "data": source["data"]}
            assert request.body == orjson.dumps(body)  # compact JSON
            assert request.headers["content-type"] == "application/json"
            assert request.headers["webhook-id"] == source["id"]
            assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
            assert request.headers["user-agent"] == f"hookstream/{hookstream.__version__}"

        states = await wait_for(
            lambda: _all_final(db, all_s1, 12), timeout_s=30, message="outcomes recorded in PostgreSQL")
        assert all(v == ("succeeded", 1) for v in states.values())
        status = status_records(await read_topic_to_end(hs_settings.kafka_bootstrap_servers, hs_settings.status_topic))
        # exactly one record per attempt, nothing else: duplicates or strays would show here
        assert collections.Counter((s["webhook_id"], s["event_id"], s["attempt"], s["status"]) for s in status) == \
            collections.Counter([(all_s1, e["id"], 1, "succeeded") for e in events[:12]]
                                + [(orders_s2, events[12]["id"], 1, "succeeded")])
        sample = next(s for s in status if s["webhook_id"] == orders_s2)
        assert sample["status"] == "succeeded" and sample["http_status"] == 200 and sample["error"] is None
        assert sample["attempt"] == 1 and sample["event_type"] == "order.created" and sample["store_id"] == "s2"
        assert sample["organization_id"] == org_a and sample["duration_ms"] >= 0 and sample["at"].endswith("Z")


async def _all_final(db, webhook_id, n):
    states = await delivery_states(db, webhook_id)
    if len(states) == n and all(s != "pending" for s, _ in states.values()):
        return states
    return None


async def test_retries_redirects_timeouts_and_gone(db, hs_settings, spawn):
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        hooks = {}
        for name in ("always500", "recovers", "moved301", "found302", "hangs", "gone"):
            hooks[name], _ = await make_webhook(db, org, receiver.url(f"/{name}"), event_types=["order.created"],
                                                store_ids=["s1"])
        receiver.set("/always500", Behaviour(status=500, body="boom"))
        receiver.script("/recovers", Behaviour(status=500), Behaviour(status=502))
        receiver.set("/moved301", Behaviour(mode="redirect", status=301))
        receiver.set("/found302", Behaviour(mode="redirect", status=302))
        receiver.set("/hangs", Behaviour(mode="hang"))
        receiver.set("/gone", Behaviour(status=410))
        spawn("router", env={"HOOKSTREAM_REQUEST_TIMEOUT": "500ms"})
        spawn("sender", env={"HOOKSTREAM_REQUEST_TIMEOUT": "500ms"})
        event = sample_event("order.created", org, "s1")
        await publish_events(hs_settings, [event])

        async def finished():
            rows = await db.fetch("SELECT webhook_id, status, attempts, last_http_status, last_error"
                                  " FROM deliveries")
            if len(rows) == len(hooks) and all(r["status"] != "pending" for r in rows):
                return {r["webhook_id"]: r for r in rows}
            return None

        rows = await wait_for(finished, timeout_s=60, message="all deliveries final")
        name_of = {v: k for k, v in hooks.items()}
        result = {name_of[k]: (r["status"], r["attempts"], r["last_http_status"]) for k, r in rows.items()}
        assert result["always500"] == ("failed", 4, 500)
        assert result["recovers"] == ("succeeded", 3, 200)
        assert result["moved301"] == ("failed", 4, 301)
        assert result["found302"] == ("failed", 4, 302)
        assert result["hangs"][:2] == ("failed", 4) and result["hangs"][2] is None
        assert "timeout" in rows[hooks["hangs"]]["last_error"]
        assert result["gone"] == ("failed", 1, 410)
        assert receiver.at("/redirected") == []  # redirects never followed
        assert len(receiver.at("/always500")) == 4 and len(receiver.at("/gone")) == 1
        # Every attempt is in PostgreSQL with its error and response excerpt.
        attempts = await db.fetch(
            "SELECT a.attempt, a.outcome, a.http_status, a.response_excerpt FROM attempts a"
            " JOIN deliveries d ON d.id = a.delivery_id WHERE d.webhook_id = $1 ORDER BY a.attempt",
            hooks["always500"])
        assert [(a["attempt"], a["outcome"]) for a in attempts] == [
            (1, "retrying"), (2, "retrying"), (3, "retrying"), (4, "failed")]
        assert all(a["response_excerpt"] == "boom" and a["http_status"] == 500 for a in attempts)
        # The status topic carries one record per attempt.
        records = status_records(await read_topic_to_end(hs_settings.kafka_bootstrap_servers, hs_settings.status_topic))
        four_then_failed = [(1, "retrying"), (2, "retrying"), (3, "retrying"), (4, "failed")]
        expected = {name: four_then_failed for name in ("always500", "moved301", "found302", "hangs")}
        expected |= {"recovers": [(1, "retrying"), (2, "retrying"), (3, "succeeded")], "gone": [(1, "failed")]}
        assert collections.Counter((name_of[r["webhook_id"]], r["event_id"], r["attempt"], r["status"])
                                   for r in records) == collections.Counter(
            (name, event["id"], attempt, status) for name, steps in expected.items() for attempt, status in steps)


async def test_retry_after_is_honoured(db, hs_settings, spawn):
    """With 4-6 s scheduled delays, a 503 with Retry-After: 1 is retried after about 1 s."""
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        await make_webhook(db, org, receiver.url("/busy"), event_types=["order.created"], store_ids=["s1"])
        receiver.script("/busy", Behaviour(status=503, headers={"Retry-After": "1"}))
        env = {"HOOKSTREAM_RETRY_DELAYS": "5s,5s,5s"}
        spawn("router", env=env)
        spawn("sender", env=env)
        await publish_events(hs_settings, [sample_event("order.created", org, "s1")])
        await wait_for(lambda: len(receiver.at("/busy")) >= 2, timeout_s=30, message="the retry")
        first, second = receiver.at("/busy")[:2]
        gap = second.at - first.at
        assert 0.9 <= gap < 4.0, f"retry came {gap:.2f}s after the 503; Retry-After said 1s, the schedule 4-6s"
        assert first.headers["webhook-id"] == second.headers["webhook-id"]


async def test_duplicates_route_once_and_bad_records_go_to_dead_letter(db, hs_settings, spawn):
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        await make_webhook(db, org, receiver.url("/hook"), store_ids=["s1"])
        spawn("router")
        spawn("sender")
        good = [sample_event("order.created", org, "s1", n) for n in range(6)]
        bad = [
            (b"\xff\xfe not utf-8", "not_utf8"),
            (b"{not json", "not_json"),
            (b"[1, 2, 3]", "not_object"),
            (orjson.dumps({**good[0], "id": "bad id!"}), "bad_id"),
            (orjson.dumps({**good[0], "type": "order.exploded"}), "unknown_type"),
            (b"", "empty"),
        ]
        topic = hs_settings.source_topics[1]
        async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
            for n, event in enumerate(good):
                await producer.send_and_wait(topic, orjson.dumps(event), key=b"k")
                value, _ = bad[n]
                await producer.send_and_wait(topic, value, key=b"k")
            # The same event id published again, later: routed once.
            await producer.send_and_wait(topic, orjson.dumps(good[0]), key=b"k")
            await producer.send_and_wait(topic, orjson.dumps(good[1]), key=b"other")

        await wait_for(lambda: len(receiver.at("/hook")) >= 6, timeout_s=60, message="good events delivered")
        dead = await read_topic(hs_settings.kafka_bootstrap_servers, hs_settings.dead_letter_topic, expect=6)
        reasons = {dict(r.headers)["hookstream-reason"].decode(): r for r in dead}
        assert set(reasons) == {reason for _, reason in bad}
        for value, reason in bad:
            record = reasons[reason]
            assert record.value == value or (value == b"" and not record.value)  # copied unchanged
            headers = dict(record.headers)
            assert headers["hookstream-source-topic"].decode() == topic
            assert int(headers["hookstream-source-offset"]) >= 0
        await asyncio.sleep(1.5)  # let any duplicate delivery show up
        ids = [orjson.loads(r.body)["id"] for r in receiver.at("/hook")]
        assert sorted(ids) == sorted(e["id"] for e in good)


async def test_hanging_endpoint_does_not_slow_healthy_ones(db, hs_settings, spawn):
    """One webhook hangs until timeout on every call; 200 deliveries to 4 healthy webhooks still
    finish within 15 s, far less than the hanging webhook's 200 x 2 s of timeouts."""
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        receiver.set("/hang", Behaviour(mode="hang"))
        await make_webhook(db, org, receiver.url("/hang"), event_types=["order.created"], store_ids=["s1"])
        for n in range(4):
            await make_webhook(db, org, receiver.url(f"/ok{n}"), event_types=["order.created"], store_ids=["s1"])
        env = {"HOOKSTREAM_RETRY_DELAYS": "30s,30s,30s", "HOOKSTREAM_ENDPOINT_MAX_CONCURRENCY": "8"}
        spawn("router", env=env)
        spawn("sender", env=env)
        started = time.monotonic()
        await publish_events(hs_settings, [sample_event("order.created", org, "s1", n) for n in range(50)])
        await wait_for(lambda: sum(len(receiver.at(f"/ok{n}")) for n in range(4)) >= 200, timeout_s=15,
                       message="all 200 healthy deliveries")
        elapsed = time.monotonic() - started
        print(f"healthy deliveries finished in {elapsed:.2f}s beside a hanging endpoint")
        healthy_done = await db.fetchval(
            "SELECT count(*) FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id"
            " WHERE w.url NOT LIKE '%/hang' AND d.status = 'succeeded'")
        assert healthy_done == 200 or await wait_for(
            lambda: db.fetchval("SELECT count(*) = 200 FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id"
                                " WHERE w.url NOT LIKE '%/hang' AND d.status = 'succeeded'"),
            timeout_s=10, message="healthy outcomes recorded")


async def test_a_saturated_slow_endpoint_defers_without_using_up_attempts(db, hs_settings, spawn):
    """A slow endpoint (2.5 s per answer) with 2 slots and room for 2 waiting: the other deliveries are
    deferred to the durable schedule and come back, and every delivery still succeeds on attempt 1."""
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        await make_webhook(db, org, receiver.url("/slow"), event_types=["order.created"], store_ids=["s1"])
        receiver.set("/slow", Behaviour(delay_s=2.5))
        env = {"HOOKSTREAM_ENDPOINT_MAX_CONCURRENCY": "2", "HOOKSTREAM_ENDPOINT_MAX_QUEUED": "2"}
        spawn("router", env=env)
        sender = spawn("sender", env=env)
        events = [sample_event("order.created", org, "s1", n) for n in range(12)]
        await publish_events(hs_settings, events[:4])  # fills the 2 slots and the 2 waiting places
        await wait_for(lambda: len(receiver.at("/slow")) >= 2, timeout_s=30, message="the first slow calls")
        first = receiver.at("/slow")[0].at
        await wait_for(lambda: time.time() - first > 1.05, message="the first call to count as slow")
        await publish_events(hs_settings, events[4:])  # arrive while the endpoint is slow and full
        await wait_for(lambda: db.fetchval("SELECT count(*) = 12 FROM deliveries WHERE status = 'succeeded'"),
                       timeout_s=90, message="every slow delivery to succeed")
        attempts = await db.fetch("SELECT attempts FROM deliveries")
        assert [r["attempts"] for r in attempts] == [1] * 12
        assert await db.fetchval("SELECT count(*) FROM attempts") == 12
        assert len(receiver.at("/slow")) == 12
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://{sender.env['HOOKSTREAM_METRICS_LISTEN']}/metrics") as response:
                text = await response.text()
        deferred = [line for line in text.splitlines() if line.startswith("hookstream_deliveries_deferred_total ")]
        assert deferred and float(deferred[0].split()[1]) > 0  # the overflow really was deferred


async def test_events_compressed_with_any_kafka_codec_are_delivered(db, hs_settings, spawn):
    """Upstream producers choose their compression; a codec the router cannot read would stop it on
    that record, on every restart."""
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        await make_webhook(db, org, receiver.url("/hook"), store_ids=["s1"])
        spawn("router")
        spawn("sender")
        codecs = ("gzip", "snappy", "lz4", "zstd")
        events = {codec: sample_event("order.created", org, "s1", n) for n, codec in enumerate(codecs)}
        for codec, event in events.items():
            async with open_producer(hs_settings.kafka_bootstrap_servers, compression_type=codec) as producer:
                await publish_event(producer, event, hs_settings.source_topics)
        await wait_for(lambda: len(receiver.at("/hook")) >= len(codecs), timeout_s=60, message="every codec delivered")
        assert sorted(orjson.loads(r.body)["id"] for r in receiver.at("/hook")) == sorted(
            e["id"] for e in events.values())
