"""Hostile tenants (issue 11): whatever one organization's endpoints answer, whatever events it
publishes and whatever it does through the API, a second, healthy organization's events keep being
delivered and recorded within seconds, and the hostile deliveries themselves reach an outcome.

Each test runs the real ``hookstream all`` process against the real broker and PostgreSQL and a real
HTTP receiver. "Recorded" means what a user sees: the healthy deliveries are ``succeeded`` in
PostgreSQL, not merely received (a wedged outcome flusher still lets requests out).
"""

from __future__ import annotations

import asyncio
import gzip
import time
from dataclasses import dataclass

import aiohttp
import asyncpg
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from hookstream.core.kafka import open_producer
from hookstream.core.publish import publish_event
from tests.receiver import Behaviour, Receiver
from tests.support import make_org, make_webhook, read_topic_to_end, sample_event, wait_for

pytestmark = pytest.mark.integration

HEALTHY_EVENTS = 20
HEALTHY_WITHIN_S = 25.0


@dataclass
class Tenants:
    db: asyncpg.Connection
    settings: object
    receiver: Receiver
    hostile_org: str
    hostile_key: str
    healthy_org: str
    healthy_hook: str
    healthy_secret: str
    rounds: int = 0

    async def hostile_webhook(self, path: str, behaviour: Behaviour | None = None, **kwargs) -> str:
        if behaviour is not None:
            self.receiver.set(path, behaviour)
        webhook_id, _ = await make_webhook(self.db, self.hostile_org, self.receiver.url(path), store_ids=["s1"],
                                           **kwargs)
        return webhook_id

    async def publish(self, events: list[dict]) -> None:
        async with open_producer(self.settings.kafka_bootstrap_servers) as producer:
            for event in events:
                await publish_event(producer, event, self.settings.source_topics)

    async def publish_raw(self, topic: str, values: list[bytes]) -> None:
        """Records as an upstream service might write them, bypassing ``publish``'s validation."""
        async with open_producer(self.settings.kafka_bootstrap_servers) as producer:
            for value in values:
                await producer.send_and_wait(topic, value=value, key=b"res_1")

    async def healthy_tenant_keeps_flowing(self, n: int = HEALTHY_EVENTS, within_s: float = HEALTHY_WITHIN_S) -> float:
        """Publish ``n`` events for the healthy organization now; each must reach its endpoint, signed,
        and be recorded ``succeeded`` within ``within_s``. Returns the seconds it took."""
        self.rounds += 1
        events = [sample_event("order.created", self.healthy_org, "s1", n=i, event_id=f"evt_ok_{self.rounds}_{i}")
                  for i in range(n)]
        started = time.monotonic()
        await self.publish(events)
        ids = {e["id"] for e in events}

        async def recorded():
            rows = await self.db.fetch("SELECT event_id FROM deliveries WHERE webhook_id = $1 AND status = 'succeeded'"
                                       " AND event_id = ANY($2::text[])", self.healthy_hook, list(ids))
            return len(rows) == n

        await wait_for(recorded, timeout_s=within_s, interval_s=0.1,
                       message=f"the healthy tenant's {n} deliveries to be recorded succeeded")
        got = [r for r in self.receiver.at("/healthy") if r.headers["webhook-id"] in ids]
        assert {r.headers["webhook-id"] for r in got} == ids
        assert all(r.verify(self.healthy_secret) for r in got)
        return time.monotonic() - started

    async def delivery(self, webhook_id: str) -> asyncpg.Record | None:
        return await self.db.fetchrow("SELECT * FROM deliveries WHERE webhook_id = $1", webhook_id)

    async def final_delivery(self, webhook_id: str, timeout_s: float = 30.0) -> asyncpg.Record:
        async def final():
            row = await self.delivery(webhook_id)
            return row if row is not None and row["status"] != "pending" else None

        return await wait_for(final, timeout_s=timeout_s, message=f"the delivery of {webhook_id} to finish")

    async def attempts(self, webhook_id: str) -> list[asyncpg.Record]:
        return await self.db.fetch(
            "SELECT a.* FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE d.webhook_id = $1"
            " ORDER BY a.attempt, a.id", webhook_id)


@pytest.fixture
async def tenants(db, hs_settings):
    async with Receiver() as receiver:
        hostile_org, hostile_key = await make_org(db, "Hostile", stores=("s1",))
        healthy_org, _ = await make_org(db, "Healthy", stores=("s1",))
        healthy_hook, secret = await make_webhook(db, healthy_org, receiver.url("/healthy"), store_ids=["s1"])
        yield Tenants(db, hs_settings, receiver, hostile_org, hostile_key, healthy_org, healthy_hook, secret)
        receiver.release_hangs()


def hostile_order(t: Tenants, event_id: str) -> dict:
    return sample_event("order.created", t.hostile_org, "s1", event_id=event_id)


# --- case 1: response bodies are data ---------------------------------------------------------------


async def test_nul_bytes_invalid_utf8_and_compressed_bodies_are_stored_as_text(tenants, spawn):
    t = tenants
    nul = await t.hostile_webhook("/nul200", Behaviour(status=200, raw=b"ok\x00"))
    bad_utf8 = await t.hostile_webhook("/bad-utf8", Behaviour(status=200, raw=b"\xff\xfe\x00ok"))
    bomb = gzip.compress(b"boom\x00" * 2_000_000)  # 10 MB of NULs behind ~10 KB
    gzip500 = await t.hostile_webhook("/gzip500", Behaviour(status=500, raw=bomb,
                                                              headers={"Content-Encoding": "gzip"}))
    proc = spawn("all")
    await t.publish([hostile_order(t, "evt_hostile_bodies")])
    assert (await t.final_delivery(nul))["status"] == "succeeded"
    assert (await t.final_delivery(bad_utf8))["status"] == "succeeded"
    failed = await t.final_delivery(gzip500)
    assert (failed["status"], failed["attempts"], failed["last_http_status"]) == ("failed", 4, 500)

    [nul_attempt] = await t.attempts(nul)
    assert nul_attempt["response_excerpt"] == "ok\ufffd"
    [bad_attempt] = await t.attempts(bad_utf8)
    assert bad_attempt["response_excerpt"] == "\ufffd\ufffd\ufffdok"
    excerpts = [a["response_excerpt"] for a in await t.attempts(gzip500)]
    assert len(excerpts) == 4
    for excerpt in excerpts:  # decompressed, but never past the 4 KiB cap
        assert excerpt.startswith("boom\ufffdboom\ufffd") and len(excerpt.encode()) <= 4096
    # we asked for no compression
    assert all(r.headers.get("accept-encoding") == "identity" for r in t.receiver.at("/gzip500"))

    await t.healthy_tenant_keeps_flowing()
    assert proc.proc.poll() is None, proc.output()


# --- case 2: a webhook deleted while its attempt is in flight ----------------------------------------


async def test_a_webhook_deleted_mid_attempt_does_not_wedge_outcomes(tenants, spawn):
    t = tenants
    slow = await t.hostile_webhook("/slow", Behaviour(status=200, delay_s=2.0))
    proc = spawn("all")
    await t.publish([hostile_order(t, f"evt_deleted_{i}") for i in range(5)])
    await wait_for(lambda: len(t.receiver.at("/slow")) >= 5, timeout_s=30, message="attempts in flight")
    await t.db.execute("DELETE FROM webhooks WHERE id = $1", slow)  # cascades to its deliveries

    await t.healthy_tenant_keeps_flowing()
    await asyncio.sleep(2.5)  # the slow attempts have finished by now, their outcomes dropped
    assert await t.db.fetchval("SELECT count(*) FROM deliveries WHERE webhook_id = $1", slow) == 0
    await t.healthy_tenant_keeps_flowing()
    assert proc.proc.poll() is None, proc.output()


# --- case 3: events that pass the schema but not the code ------------------------------------------


def raw_event(t: Tenants, event_id: str, **changes) -> bytes:
    event = {**hostile_order(t, event_id), **changes}
    return orjson.dumps(event)


async def test_edge_timestamps_and_control_characters_never_stop_the_router(tenants, spawn):
    t = tenants
    hook = await t.hostile_webhook("/ts", Behaviour(status=200))
    proc = spawn("all")
    orders_topic = t.settings.source_topics[1]
    await t.publish_raw(orders_topic, [
        raw_event(t, "evt_leap", occurred_at="2016-12-31T23:59:60Z"),
        raw_event(t, "evt_year0", occurred_at="0001-01-01T00:30:00+01:00"),
        raw_event(t, "evt_year10000", occurred_at="9999-12-31T23:30:00-01:00"),
        raw_event(t, "evt_nul_store", store_id="s\x001"),
        raw_event(t, "evt_nul_org", organization_id=t.hostile_org + "\x00"),
        raw_event(t, "evt_escape_store", store_id="s1\x1b[31m"),
    ])
    await t.healthy_tenant_keeps_flowing()

    # a leap second is a real instant: delivered, the body's created_at exactly as published
    await wait_for(lambda: t.receiver.at("/ts"), timeout_s=20, message="the leap-second event")
    [leap] = t.receiver.at("/ts")
    assert orjson.loads(leap.body)["created_at"] == "2016-12-31T23:59:60Z"
    stored = await t.db.fetchval("SELECT occurred_at FROM events WHERE event_id = 'evt_leap'")
    assert stored.isoformat() == "2017-01-01T00:00:00+00:00"
    assert (await t.final_delivery(hook))["status"] == "succeeded"

    async def dead_letters():
        records = await read_topic_to_end(t.settings.kafka_bootstrap_servers, t.settings.dead_letter_topic)
        return records if len(records) >= 5 else None

    dead = await wait_for(dead_letters, timeout_s=20, message="five dead letters")
    reasons = {orjson.loads(r.value)["id"]: dict(r.headers)["hookstream-reason"].decode() for r in dead}
    assert reasons == {"evt_year0": "bad_timestamp", "evt_year10000": "bad_timestamp",
                       "evt_nul_store": "schema", "evt_nul_org": "schema", "evt_escape_store": "schema"}

    # and the deployment starts again on the same broker (the bad records were committed past)
    assert proc.proc.poll() is None, proc.output()
    assert proc.terminate(40) == 0, proc.output()
    spawn("all")
    await t.healthy_tenant_keeps_flowing()


# --- case 4: an absurd Retry-After --------------------------------------------------------------------


@pytest.mark.parametrize("retry_after", ["Mon, 1 Jan 99999999999 00:00:00 GMT", "9" * 400, "-1",
                                         "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_an_absurd_retry_after_ends_in_an_outcome(tenants, spawn, retry_after):
    t = tenants
    hook = await t.hostile_webhook("/throttled", Behaviour(status=429, headers={"Retry-After": retry_after}))
    proc = spawn("all")
    await t.publish([hostile_order(t, "evt_throttled")])
    final = await t.final_delivery(hook)
    assert (final["status"], final["attempts"], final["last_http_status"]) == ("failed", 4, 429)
    await t.healthy_tenant_keeps_flowing()
    assert proc.proc.poll() is None, proc.output()


# --- case 5: hanging webhooks cannot hold every in-flight slot ----------------------------------------


async def test_hanging_webhooks_cannot_hold_every_sender_slot(tenants, spawn):
    t = tenants
    hanging = [await t.hostile_webhook(f"/hang{i}", Behaviour(mode="hang")) for i in range(3)]
    # 40 in-flight slots; three webhooks that hang for the whole 30 s timeout would, at 32
    # concurrent attempts each, hold all 40 until they time out.
    proc = spawn("all", env={"HOOKSTREAM_SENDER_MAX_IN_FLIGHT": "40", "HOOKSTREAM_REQUEST_TIMEOUT": "30s"})
    await t.publish([hostile_order(t, f"evt_hang_{i}") for i in range(40)])
    await wait_for(lambda: sum(len(t.receiver.at(f"/hang{i}")) for i in range(3)) >= 24, timeout_s=30,
                   message="the hanging webhooks to hold attempts")
    took = await t.healthy_tenant_keeps_flowing(n=10, within_s=12)
    # at most a quarter of the slots (10) per webhook at once
    assert max(len(t.receiver.at(f"/hang{i}")) for i in range(3)) <= 10
    assert await t.db.fetchval("SELECT count(*) FROM deliveries WHERE webhook_id = ANY($1::text[])"
                               " AND status = 'pending'", hanging) == 120  # still waiting: nothing lost
    assert took < 12 and proc.proc.poll() is None, proc.output()
    t.receiver.release_hangs()  # let the hanging attempts end, so the process stops quickly


# --- case 6: a delivery task the delivery topic cannot take ------------------------------------------


async def test_a_task_refused_by_the_delivery_topic_fails_its_delivery_only(tenants, spawn):
    t = tenants
    # A delivery topic made before hookstream raised its limit (or by an operator), with a small one.
    admin = AIOKafkaAdminClient(bootstrap_servers=t.settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t.settings.delivery_topic, 12, 1,
                                            topic_configs={"max.message.bytes": str(64 * 1024)})])
    finally:
        await admin.close()
    hook = await t.hostile_webhook("/big", Behaviour(status=200))
    proc = spawn("all")
    big = sample_event("product.created", t.hostile_org, "s1", event_id="evt_big")
    big["data"]["product"]["description"] = "x" * (100 * 1024)
    await t.publish([big])
    failed = await t.final_delivery(hook)
    assert failed["status"] == "failed" and failed["attempts"] == 0
    assert "Kafka refused the delivery task" in failed["last_error"]
    assert t.receiver.at("/big") == []
    await t.healthy_tenant_keeps_flowing()
    assert proc.proc.poll() is None, proc.output()


# --- case 8: a redelivery asked for while an attempt is in flight ----------------------------------


async def test_a_redelivery_during_an_attempt_neither_is_lost_nor_cancels_retries(tenants, spawn):
    t = tenants
    hook = await t.hostile_webhook("/flaky")
    t.receiver.script("/flaky", Behaviour(status=500, delay_s=1.5))
    t.receiver.set("/flaky", Behaviour(status=500))
    proc = spawn("all")
    await t.publish([hostile_order(t, "evt_redeliver")])
    await wait_for(lambda: t.receiver.at("/flaky"), timeout_s=30, message="the first attempt")
    listen = t.settings.api_listen
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: _api_up(http, listen), timeout_s=30, message="the API")
        async with http.post(f"http://{listen[0]}:{listen[1]}/v1/webhooks/{hook}/events/evt_redeliver/redeliver",
                             headers={"Authorization": f"Bearer {t.hostile_key}"}) as response:
            assert response.status == 202, await response.text()
            assert (await response.json())["manual"] is True  # the first attempt is still in flight

    final = await t.final_delivery(hook, timeout_s=40)
    attempts = await t.attempts(hook)
    # the first attempt, its three automatic retries, and the redelivery: five attempts, numbered once each
    assert [a["attempt"] for a in attempts] == [1, 2, 3, 4, 5]
    assert (final["status"], final["attempts"]) == ("failed", 5)
    assert len(t.receiver.at("/flaky")) == 5
    await t.healthy_tenant_keeps_flowing()
    assert proc.proc.poll() is None, proc.output()


async def _api_up(http: aiohttp.ClientSession, listen) -> bool:
    try:
        async with http.get(f"http://{listen[0]}:{listen[1]}/healthz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


# --- manual attempts, end to end (issue 18) --------------------------------------------------------


async def test_a_failed_redelivery_is_final_and_a_pulled_forward_retry_keeps_its_retries(tenants, spawn):
    t = tenants
    gone = await t.hostile_webhook("/gone")
    t.receiver.script("/gone", Behaviour(status=410))  # the first attempt: 410 ends the delivery
    t.receiver.set("/gone", Behaviour(status=500))      # the redelivery fails
    waiting = await t.hostile_webhook("/waiting", Behaviour(status=500))
    spawn("all", env={"HOOKSTREAM_RETRY_DELAYS": "1h,1h,1h"})
    await t.publish([hostile_order(t, "evt_manual")])
    assert (await t.final_delivery(gone))["attempts"] == 1
    await wait_for(lambda: _attempted(t, waiting), timeout_s=30, message="the first attempt of /waiting")
    before = await t.delivery(waiting)
    assert before["status"] == "pending" and before["next_retry_index"] == 1  # retry 1 of 3, an hour away

    listen = t.settings.api_listen
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: _api_up(http, listen), timeout_s=30, message="the API")
        for hook, manual in ((gone, True), (waiting, False)):
            async with http.post(f"http://{listen[0]}:{listen[1]}/v1/webhooks/{hook}/events/evt_manual/redeliver",
                                 headers={"Authorization": f"Bearer {t.hostile_key}"}) as response:
                assert response.status == 202, await response.text()
                assert (await response.json())["manual"] is manual

    await wait_for(lambda: len(t.receiver.at("/gone")) == 2 and len(t.receiver.at("/waiting")) == 2,
                   timeout_s=30, message="both redeliveries made")
    final = await t.final_delivery(gone)
    assert (final["status"], final["attempts"], final["next_attempt_at"]) == ("failed", 2, None)

    async def retry_two_scheduled():
        row = await t.delivery(waiting)
        return row if row["attempts"] == 2 and row["next_retry_index"] == 2 else None

    row = await wait_for(retry_two_scheduled, timeout_s=30, message="retry 2 scheduled after the pulled-forward one")
    assert row["status"] == "pending" and row["next_attempt_at"] is not None
    await asyncio.sleep(1.5)  # and nothing else is sent: the manual attempt stays final
    assert len(t.receiver.at("/gone")) == 2 and len(t.receiver.at("/waiting")) == 2
    await t.healthy_tenant_keeps_flowing()


async def _attempted(t: Tenants, webhook_id: str) -> bool:
    row = await t.delivery(webhook_id)
    return row is not None and row["attempts"] >= 1
