"""At-least-once under crashes: a SIGKILLed sender or router loses nothing when restarted."""

from __future__ import annotations

import asyncio
import collections
import signal

import aiohttp
import orjson
import pytest

from hookstream.core.kafka import open_producer
from tests.integration.test_observability import scrape, value
from tests.receiver import Behaviour, Receiver
from tests.support import free_port, make_org, make_webhook, sample_event, wait_for

pytestmark = pytest.mark.integration

EVENTS = 1500


async def _publish(settings, events) -> None:
    async with open_producer(settings.kafka_bootstrap_servers) as producer:
        sends = [await producer.send(settings.source_topics[1], orjson.dumps(e), key=e["id"].encode())
                 for e in events]
        await asyncio.gather(*sends)


async def test_sender_sigkill_mid_run_loses_nothing(db, hs_settings, spawn):
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        await make_webhook(db, org, receiver.url("/a"), event_types=["order.created"], store_ids=["s1"])
        await make_webhook(db, org, receiver.url("/b"), event_types=["order.created"], store_ids=["s1"])
        events = [sample_event("order.created", org, "s1", n) for n in range(EVENTS)]
        spawn("router")
        sender = spawn("sender", env={"HOOKSTREAM_SENDER_MAX_IN_FLIGHT": "200"})
        await _publish(hs_settings, events)
        await wait_for(lambda: len(receiver.requests) >= EVENTS // 2, timeout_s=60, message="half the deliveries")
        sender.proc.send_signal(signal.SIGKILL)
        sender.proc.wait(10)
        killed_at = len(receiver.requests)
        spawn("sender", env={"HOOKSTREAM_SENDER_MAX_IN_FLIGHT": "200"})
        await wait_for(lambda: _all_done(db, 2 * EVENTS), timeout_s=120, message="every delivery final")

        received = collections.Counter((r.path, orjson.loads(r.body)["id"]) for r in receiver.requests)
        expected = {(path, e["id"]) for path in ("/a", "/b") for e in events}
        lost = expected - set(received)
        duplicates = sum(n - 1 for n in received.values())
        print(f"sender SIGKILL after {killed_at} requests: {len(expected)} pairs, lost {len(lost)}, "
              f"duplicates {duplicates}")
        assert not lost
        statuses = await db.fetch("SELECT status, count(*) AS n FROM deliveries GROUP BY status")
        assert {r["status"]: r["n"] for r in statuses} == {"succeeded": 2 * EVENTS}


async def _all_done(db, n):
    return await db.fetchval("SELECT count(*) FROM deliveries WHERE status = 'succeeded'") == n


async def test_a_sender_reading_the_delivery_topic_again_skips_the_attempts_already_recorded(db, hs_settings, spawn):
    """A replica that gets a partition reads again what its previous owner fetched but did not commit
    (it crashed, or its commit lagged). Attempts already recorded are not made a second time; what is
    written after the new replica got the partition is delivered as usual, once."""
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        await make_webhook(db, org, receiver.url("/a"), event_types=["order.created"], store_ids=["s1"])
        before = [sample_event("order.created", org, "s1", n) for n in range(20)]
        after = [sample_event("order.created", org, "s1", n) for n in range(20, 30)]
        spawn("router")
        first = spawn("sender")
        await _publish(hs_settings, before)
        await wait_for(lambda: _all_done(db, len(before)), timeout_s=60, message="the first deliveries")
        await asyncio.to_thread(first.stop)
        # A sender of a new group has no committed offset: it reads the delivery topic from its start,
        # as a replica does after a predecessor that crashed before committing anything.
        port = free_port()
        spawn("sender", env={"HOOKSTREAM_SENDER_GROUP": f"{hs_settings.sender_group}.again",
                             "HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{port}"})

        async def skipped() -> float:
            return value(await scrape(f"http://127.0.0.1:{port}/metrics"), "hookstream_replayed_attempts_skipped_total")

        await wait_for(lambda: _at_least(skipped, len(before)), timeout_s=60, message="the replays skipped")
        await _publish(hs_settings, after)
        await wait_for(lambda: _all_done(db, len(before) + len(after)), timeout_s=60, message="the later deliveries")
        received = collections.Counter(orjson.loads(r.body)["id"] for r in receiver.requests)
        assert received == {e["id"]: 1 for e in before + after}
        assert await skipped() == len(before)
        assert await db.fetchval("SELECT count(*) FROM attempts") == len(before) + len(after)


async def _at_least(read, n: int) -> bool:
    try:
        return await read() >= n
    except aiohttp.ClientConnectionError:  # the new sender's metrics server is not listening yet
        return False


async def test_router_sigkill_mid_stream_loses_nothing(db, hs_settings, spawn):
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        await make_webhook(db, org, receiver.url("/a"), event_types=["order.created"], store_ids=["s1"])
        events = [sample_event("order.created", org, "s1", n) for n in range(EVENTS)]
        router = spawn("router")
        spawn("sender")
        await _publish(hs_settings, events[: EVENTS // 2])
        await wait_for(lambda: len(receiver.requests) >= EVENTS // 4, timeout_s=60, message="some deliveries")
        router.proc.send_signal(signal.SIGKILL)
        router.proc.wait(10)
        await _publish(hs_settings, events[EVENTS // 2:])
        spawn("router")
        await wait_for(lambda: _all_done(db, EVENTS), timeout_s=120, message="every delivery final")
        received = collections.Counter(orjson.loads(r.body)["id"] for r in receiver.requests)
        lost = {e["id"] for e in events} - set(received)
        print(f"router SIGKILL: {EVENTS} events, lost {len(lost)}, duplicates {sum(received.values()) - len(received)}")
        assert not lost


async def test_sigterm_drains_and_restart_loses_nothing(db, hs_settings, spawn):
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        await make_webhook(db, org, receiver.url("/a"), event_types=["order.created"], store_ids=["s1"])
        events = [sample_event("order.created", org, "s1", n) for n in range(EVENTS)]
        router = spawn("router")
        sender = spawn("sender")
        await _publish(hs_settings, events)
        await wait_for(lambda: len(receiver.requests) >= EVENTS // 3, timeout_s=60, message="some deliveries")
        loop = asyncio.get_running_loop()
        started = loop.time()
        codes = await asyncio.gather(asyncio.to_thread(sender.terminate, 30), asyncio.to_thread(router.terminate, 30))
        drained_s = loop.time() - started
        print(f"SIGTERM: router and sender exited {codes} after {drained_s:.2f}s")
        assert codes == [0, 0], sender.output()[-2000:] + router.output()[-2000:]
        assert drained_s < 20
        # A drain finishes and records what it started: every request the endpoint got before the
        # restart has its attempt row, none was abandoned to be replayed.
        before_restart = len(receiver.requests)
        assert await db.fetchval("SELECT count(*) FROM attempts") == before_restart
        spawn("router")
        spawn("sender")
        try:
            await wait_for(lambda: _all_done(db, EVENTS), timeout_s=120, message="every delivery final")
        except AssertionError:
            rows = await db.fetch("SELECT status, attempts, next_attempt_at IS NOT NULL AS waiting, count(*)"
                                  " FROM deliveries GROUP BY 1, 2, 3")
            events = await db.fetchval("SELECT count(*) FROM events")
            errors = await db.fetch("SELECT left(error, 60) AS e, count(*) FROM attempts GROUP BY 1")
            raise AssertionError(f"events stored {events}; deliveries {[tuple(r) for r in rows]};"
                                 f" attempt errors {[tuple(r) for r in errors]}") from None
        received = collections.Counter(orjson.loads(r.body)["id"] for r in receiver.requests)
        assert set(received) == {e["id"] for e in events}
        assert [e for e, n in received.items() if n > 1] == []  # the drained attempts were not made again
        assert await db.fetchval("SELECT count(*) FROM attempts") == EVENTS


async def test_sigterm_with_hanging_attempts_exits_within_its_bound_and_records_them(db, hs_settings, spawn):
    """Attempts that hang when SIGTERM comes run to their timeout, are recorded (a retry scheduled),
    and the sender exits 0 within request timeout + 10 s; nothing is abandoned."""
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        await make_webhook(db, org, receiver.url("/hang"), event_types=["order.created"], store_ids=["s1"])
        receiver.set("/hang", Behaviour(mode="hang"))
        env = {"HOOKSTREAM_REQUEST_TIMEOUT": "2s", "HOOKSTREAM_RETRY_DELAYS": "1h,1h,1h"}
        spawn("router", env=env)
        sender = spawn("sender", env=env)
        await _publish(hs_settings, [sample_event("order.created", org, "s1", n) for n in range(10)])
        await wait_for(lambda: len(receiver.at("/hang")) == 10, timeout_s=60, message="ten hanging attempts")
        loop = asyncio.get_running_loop()
        started = loop.time()
        code = await asyncio.to_thread(sender.terminate, 30)
        took = loop.time() - started
        assert code == 0, sender.output()[-2000:]
        assert took < 2 + 10 + 3, f"the drain took {took:.1f}s"
        rows = await db.fetch("SELECT d.status, d.next_attempt_at IS NOT NULL AS waiting, d.in_flight, a.error"
                              " FROM deliveries d JOIN attempts a ON a.delivery_id = d.id")
        assert len(rows) == 10, [tuple(r) for r in rows]
        assert all((r["status"], r["waiting"], r["in_flight"]) == ("pending", True, False) for r in rows)
        assert all("timeout" in r["error"] for r in rows)
        receiver.release_hangs()
