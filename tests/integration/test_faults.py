"""Faults under a steady stream (issue 7, "Faults"): nothing is lost.

Each scenario publishes 5,000 events at 500/s to three matching webhooks (15,000 (event, webhook)
pairs) through real router / sender processes, injects one fault mid-stream, lets the system recover,
then checks that every pair is ``succeeded`` in PostgreSQL *and* has a ``succeeded`` record on the
status topic. Losses are asserted to be 0; duplicates and recovery times are printed as
``RELIABILITY ...`` lines (collected in RELIABILITY.md).

The Kafka and PostgreSQL scenarios restart the shared local servers (other tests running at the same
time see the outage); both are always started again, in the scenario and in a fixture's teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import aiohttp
import pytest

from hookstream.core.kafka import open_producer
from hookstream.core.publish import publish_event
from tests import faults
from tests.faults import Stream, account, assert_alive, make_stream, terminate_within, wait_all_succeeded
from tests.receiver import Behaviour, Receiver
from tests.support import free_port, make_org, make_webhook, sample_event, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TERM_BOUND_S = 20.0
# Generous: a sender waits for its in-flight attempts (at most the 5 s request timeout) when draining.
SENDER = "sender"
ROUTER = "router"


async def _finish(stream: Stream, scenario: str, fault_start: float, fault_end: float, **kwargs):
    await stream.publisher.wait()
    done_at = await wait_all_succeeded(stream)
    result = await account(stream, scenario, fault_start=fault_start, fault_end=fault_end, all_done_at=done_at,
                           **kwargs)
    assert result.lost == 0, f"{scenario}: {result.lost} of {result.pairs} pairs lost; {result.detail}"
    assert result.detail["never_received"] == 0, result.detail
    assert result.recovery_s is not None, f"{scenario}: nothing published after the fault was delivered after it"
    return result


@contextlib.asynccontextmanager
async def _stream_under_way(database_url, hs_settings, spawn, *, env=None, fraction: float = 0.35):
    """A receiver, a router and a sender, and the stream published until ``fraction`` of it is out and
    deliveries are flowing; yields (receiver, stream, router, sender). The publisher is closed on exit."""
    async with Receiver() as receiver:
        stream = await make_stream(database_url, hs_settings, receiver)
        router = spawn(ROUTER, env=env)
        sender = spawn(SENDER, env=env)
        stream.publisher.start()
        try:
            await faults.wait_mid_stream(stream, fraction=fraction)
            yield receiver, stream, router, sender
        finally:
            await stream.publisher.aclose()


@pytest.mark.parametrize("victim", [ROUTER, SENDER])
async def test_sigkill_mid_stream(victim, database_url, hs_settings, spawn):
    async with _stream_under_way(database_url, hs_settings, spawn) as (_, stream, router, sender):
        processes = {ROUTER: router, SENDER: sender}
        fault_start = time.time()
        processes[victim].proc.send_signal(signal.SIGKILL)
        processes[victim].proc.wait(10)
        processes[victim] = spawn(victim)
        fault_end = time.time()
        await _finish(stream, f"{victim}-sigkill", fault_start, fault_end)
        assert_alive(*processes.values())


async def test_kafka_broker_restart_mid_stream(database_url, hs_settings, spawn, restore_infra):
    async with _stream_under_way(database_url, hs_settings, spawn) as (_, stream, router, sender):
        fault_start = time.time()
        restore_infra.add("kafka")
        async with faults.kafka_restarted():
            pass  # stop.sh then start.sh: the outage is the broker's shutdown and start-up
        fault_end = time.time()
        assert_alive(router, sender)
        await _finish(stream, "kafka-restart", fault_start, fault_end)
        assert_alive(router, sender)


async def test_postgres_down_20s_mid_stream(database_url, hs_settings, spawn, restore_infra):
    async with _stream_under_way(database_url, hs_settings, spawn) as (_, stream, router, sender):
        fault_start = time.time()
        restore_infra.add("postgres")
        async with faults.postgres_stopped():
            await asyncio.sleep(20)  # the fault itself: PostgreSQL is down for 20 s
            # Holding back, not crashing: both are still running at the end of the outage.
            assert_alive(router, sender)
        fault_end = time.time()
        await _finish(stream, "postgres-down-20s", fault_start, fault_end)
        assert_alive(router, sender)


async def test_scale_senders_1_3_1_under_load(database_url, hs_settings, spawn):
    async with Receiver() as receiver:
        # Published over 20 s, from 2 s before the scaling starts: two senders starting and the group
        # rebalancing twice take about 10 s here, and events must still be arriving after that to show
        # the pipeline carrying new work once the scaling is over (at 500/s they had all been
        # delivered during it in one run, which proves nothing either way).
        stream = await make_stream(database_url, hs_settings, receiver, rate_per_s=250)
        router = spawn(ROUTER)
        ports = [free_port() for _ in range(3)]
        senders = [spawn(SENDER, env={"HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{ports[0]}"})]
        stream.publisher.start()
        try:
            await faults.wait_mid_stream(stream, fraction=0.1)
            fault_start = time.time()
            senders += [spawn(SENDER, env={"HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{port}"}) for port in ports[1:]]

            async def all_three_attempting() -> bool:
                totals = []
                for port in ports:
                    with contextlib.suppress(OSError, aiohttp.ClientError, TimeoutError):
                        totals.append(await faults.metric_total(port, "hookstream_delivery_attempts_total"))
                return len(totals) == 3 and all(t > 0 for t in totals)

            deadline = time.monotonic() + 60
            while not await all_three_attempting():
                assert time.monotonic() < deadline, "the two new senders never got partitions"
                await asyncio.sleep(0.2)
            scaled_up_s = time.time() - fault_start
            # Back to one: SIGTERM the original sender and one of the new ones, both at once.
            results = await asyncio.gather(terminate_within(senders[0], TERM_BOUND_S),
                                           terminate_within(senders[1], TERM_BOUND_S))
            fault_end = time.time()
            print(f"\nscale: 3 senders attempting after {scaled_up_s:.1f}s; SIGTERM exits "
                  f"{[(code, round(s, 1)) for code, s in results]}")
            for (code, seconds), proc in zip(results, senders[:2], strict=True):
                assert code == 0, f"sender exited {code} after {seconds:.1f}s:\n{proc.output()[-3000:]}"
            await _finish(stream, "scale-senders-1-3-1", fault_start, fault_end)
            assert_alive(router, senders[2])
        finally:
            await stream.publisher.aclose()


FLAP_S = 5.0


async def test_flapping_endpoint_ends_succeeded(database_url, hs_settings, spawn):
    # Retries (1 s, 2 s, 4 s, ±20 %) span at least 5.6 s: longer than the flapping window.
    env = {"HOOKSTREAM_RETRY_DELAYS": "1s,2s,4s", "HOOKSTREAM_BREAKER_OPEN": "1s"}
    async with _stream_under_way(database_url, hs_settings, spawn, env=env, fraction=0.2) as (
            receiver, stream, router, sender):
        # The receiver's handler stamps a request and picks its answer with no await in between,
        # so the switch times split requests exactly into those answered 500 and 200.
        fault_start = time.time()
        receiver.set("/a", Behaviour(status=500, body="flapping"))
        await asyncio.sleep(FLAP_S)  # the fault itself: /a answers 500 for FLAP_S seconds
        fault_end = time.time()
        receiver.set("/a", Behaviour(status=200))
        failed_500 = sum(1 for r in receiver.at("/a") if fault_start <= r.at < fault_end)
        print(f"\nflap: /a answered 500 to {failed_500} requests in {FLAP_S:.0f}s")
        assert failed_500 > 0

        def answered_ok(r) -> bool:
            return r.path != "/a" or not (fault_start <= r.at < fault_end)

        await _finish(stream, "endpoint-flaps-500-then-200", fault_start, fault_end, answered_ok=answered_ok)
        assert_alive(router, sender)


async def _poll_api(port: int, key: str, webhook_id: str, stop: asyncio.Event, counts: dict) -> None:
    """Keep the API busy with delivery-log reads (the console's main query) while it is terminated."""
    url = f"http://127.0.0.1:{port}/v1/webhooks/{webhook_id}/events?limit=50"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        while not stop.is_set():
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    await resp.read()
                    counts[resp.status] = counts.get(resp.status, 0) + 1
            except (OSError, aiohttp.ClientError, TimeoutError):
                counts["unreachable"] = counts.get("unreachable", 0) + 1
                await asyncio.sleep(0.05)


async def test_sigterm_each_service_under_load(database_url, hs_settings, spawn):
    async with Receiver() as receiver:
        stream = await make_stream(database_url, hs_settings, receiver)
        procs = {"router": spawn(ROUTER), "sender": spawn(SENDER), "api": spawn("api")}
        api_port = hs_settings.api_listen[1]
        await _wait_api(api_port)
        stop_polling = asyncio.Event()
        counts: dict = {}
        poller = asyncio.create_task(_poll_api(api_port, stream.api_key, stream.hooks["/a"], stop_polling, counts))
        stream.publisher.start()
        try:
            await faults.wait_mid_stream(stream, fraction=0.2)
            fault_start = time.time()
            exits = {}
            for name in ("router", "sender", "api"):
                code, seconds = await terminate_within(procs[name], TERM_BOUND_S)
                exits[name] = (code, round(seconds, 2))
                assert code == 0, (f"{name} exited {code} after {seconds:.1f}s (bound {TERM_BOUND_S}s):\n"
                                   + procs[name].output()[-3000:])
                if name == "sender":  # its drain recorded every attempt it started: nothing left to replay
                    attempted = len(receiver.requests)
                    rows = (await faults.query(stream.database_url, "SELECT count(*) AS n FROM attempts"))[0]["n"]
                    assert rows == attempted, f"{attempted} requests made before the restart, {rows} recorded"
                procs[name] = spawn(ROUTER if name == "router" else SENDER if name == "sender" else "api")
                if name == "api":
                    await _wait_api(api_port)
            fault_end = time.time()
            print(f"\nSIGTERM exits (code, seconds): {exits}; API answers while cycling: {counts}")
            result = await _finish(stream, "sigterm-router-sender-api", fault_start, fault_end)
            assert result.duplicates == 0, f"a drained sender's attempts were made again: {result.detail}"
            assert_alive(*procs.values())
            assert counts.get(200, 0) > 0, f"the API poller never got an answer: {counts}"
            assert not any(isinstance(s, int) and s >= 500 for s in counts), counts
        finally:
            stop_polling.set()
            await poller
            await stream.publisher.aclose()


async def _wait_api(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(OSError, aiohttp.ClientError, TimeoutError):
                async with session.get(f"http://127.0.0.1:{port}/healthz",
                                       timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            assert time.monotonic() < deadline, f"the api never answered /healthz on port {port}"
            await asyncio.sleep(0.1)



async def test_the_api_answers_503_in_its_error_shape_while_postgres_is_down(db, hs_env, spawn, restore_infra):
    _, key = await make_org(db, "Org", stores=("s1",))
    spawn("api")
    port = int(hs_env["HOOKSTREAM_API_LISTEN"].rsplit(":", 1)[1])
    await _wait_api(port)
    base, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session:
        async def get(path: str, **kwargs):
            async with session.get(base + path, timeout=aiohttp.ClientTimeout(total=10), **kwargs) as resp:
                return resp.status, await resp.json()

        assert (await get("/v1/webhooks", headers=headers))[0] == 200
        restore_infra.add("postgres")
        async with faults.postgres_stopped():
            status, body = await get("/v1/webhooks", headers=headers)
            assert status == 503 and body == {"error": {"code": "unavailable",
                                                        "message": "the database is unavailable; try again"}}
            status, body = await get("/readyz")
            assert status == 503 and body["status"] == "unavailable" and body["checks"]["postgres"] != "ok"
            assert body["checks"]["kafka"] == "ok" and body["error"]["code"] == "not_ready"
            assert (await get("/healthz"))[0] == 200  # alive: waiting for the database is not a wedge
        restore_infra.discard("postgres")

        async def back() -> bool:
            return (await get("/v1/webhooks", headers=headers))[0] == 200

        await wait_for(back, timeout_s=30, message="the API answering again")
        await wait_for(lambda: _readyz_ok(get), timeout_s=30, message="/readyz ok again")


async def _readyz_ok(get) -> bool:
    return (await get("/readyz"))[0] == 200


async def test_a_sender_started_while_postgres_is_down_waits_for_it_and_delivers(db, hs_settings, spawn,
                                                                                 restore_infra):
    """Started during a PostgreSQL restart (as an orchestrator may start it), a sender logs that it
    is waiting, keeps running, and delivers once the database is back."""
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        await make_webhook(db, org, receiver.url("/hook"), event_types=["order.created"], store_ids=["s1"])
        restore_infra.add("postgres")
        async with faults.postgres_stopped():
            sender = spawn("sender")
            await wait_for(lambda: "connecting to PostgreSQL failed" in sender.output(), timeout_s=30,
                           message="the sender saying it waits for PostgreSQL")
            assert sender.proc is not None and sender.proc.poll() is None, sender.output()
        restore_infra.discard("postgres")
        await wait_for(lambda: "hookstream sender started" in sender.output(), timeout_s=60,
                       message="the sender starting once PostgreSQL is back")
        spawn("router")
        async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
            await publish_event(producer, sample_event("order.created", org, "s1", 1), hs_settings.source_topics)
        await wait_for(lambda: receiver.at("/hook"), timeout_s=60, message="the delivery")
