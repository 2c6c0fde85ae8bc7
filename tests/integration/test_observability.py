"""Metrics and logs of live processes after real traffic: counters move by exactly the right amounts,
logs are JSON lines with bound context, and no secret or API key ever appears in them."""

from __future__ import annotations

import os
import subprocess
import sys

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hookstream.core.kafka import open_producer
from tests.receiver import Behaviour, Receiver
from tests.support import api_ready, free_port, make_org, make_webhook, sample_event, wait_for

pytestmark = pytest.mark.integration


async def scrape(url: str) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    """The sum of ``name``'s series that carry ``labels`` (and any others)."""
    wanted = {(k, str(v)) for k, v in labels.items()}
    return sum(v for (n, series), v in samples.items() if n == name and wanted <= set(series))


def total(samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


async def test_counters_move_by_the_right_amounts_and_logs_keep_secrets(db, hs_settings, hs_env, spawn):
    async with Receiver() as receiver:
        org, api_key = await make_org(db, "Org", stores=("s1",))
        _, ok_secret = await make_webhook(db, org, receiver.url("/ok"), event_types=["order.created"],
                                          store_ids=["s1"])
        _, bad_secret = await make_webhook(db, org, receiver.url("/fail"), event_types=["order.shipped"],
                                           store_ids=["s1"])
        receiver.set("/fail", Behaviour(status=503))
        env = {"HOOKSTREAM_LOG_FORMAT": "json", "HOOKSTREAM_LOG_LEVEL": "DEBUG"}
        router_port, sender_port = free_port(), free_port()
        router = spawn("router", env={**env, "HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{router_port}"})
        sender = spawn("sender", env={**env, "HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{sender_port}"})
        api = spawn("api", env=env)

        good = [sample_event("order.created", org, "s1", n) for n in range(5)]
        failing = sample_event("order.shipped", org, "s1", 99)
        topic = hs_settings.source_topics[1]
        async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
            for event in [*good, failing]:
                await producer.send_and_wait(topic, orjson.dumps(event), key=b"k")
            await producer.send_and_wait(topic, b"{oops", key=b"k")
            await producer.send_and_wait(topic, b"[1]", key=b"k")

        await wait_for(lambda: db.fetchval("SELECT count(*) = 6 FROM deliveries WHERE status <> 'pending'"),
                       timeout_s=60, message="all deliveries final")
        api_url = f"http://{hs_env['HOOKSTREAM_API_LISTEN']}"
        await wait_for(lambda: api_ready(api_url), timeout_s=30, message="api ready")
        async with aiohttp.ClientSession() as session:
            for key, expected in ((api_key, 200), (api_key + "x", 401)):
                async with session.get(f"{api_url}/v1/webhooks", headers={"Authorization": f"Bearer {key}"}) as r:
                    assert r.status == expected

        routed = await scrape(f"http://127.0.0.1:{router_port}/metrics")
        assert total(routed, "hookstream_events_consumed_total") == 8
        assert value(routed, "hookstream_events_rejected_total", reason="not_json") == 1
        assert value(routed, "hookstream_events_rejected_total", reason="not_object") == 1
        assert total(routed, "hookstream_deliveries_scheduled_total") == 6
        assert value(routed, "hookstream_deliveries_scheduled_total", event_type="order.created") == 5

        sent = await wait_for(lambda: _scrape_when(f"http://127.0.0.1:{sender_port}/metrics"), timeout_s=10,
                              message="sender metrics")
        assert value(sent, "hookstream_delivery_attempts_total", outcome="success", status_class="2xx") == 5
        assert value(sent, "hookstream_delivery_attempts_total", outcome="failure", status_class="5xx") == 4
        assert value(sent, "hookstream_delivery_attempts_total", event_type="order.created") == 5
        assert value(sent, "hookstream_delivery_attempts_total", outcome="failure", event_type="order.shipped") == 4
        assert value(sent, "hookstream_deliveries_finished_total", status="succeeded") == 5
        assert value(sent, "hookstream_deliveries_finished_total", status="failed") == 1
        for tier in ("1", "2", "3"):
            assert value(sent, "hookstream_retries_scheduled_total", tier=tier) == 1
        assert value(sent, "hookstream_delivery_attempt_duration_seconds_count") == 9
        assert value(sent, "hookstream_delivery_latency_seconds_count") == 5
        assert value(sent, "hookstream_inflight_deliveries") == 0
        assert value(sent, "hookstream_outcome_flush_batch_size_sum") == 9
        api_metrics = await scrape(f"{api_url}/metrics")
        assert any(name.startswith("hookstream_") for name, _ in api_metrics)
        exposed = ""
        async with aiohttp.ClientSession() as session:
            for url in (f"http://127.0.0.1:{router_port}/metrics", f"http://127.0.0.1:{sender_port}/metrics",
                        f"{api_url}/metrics"):
                async with session.get(url) as response:
                    exposed += await response.text()

    for process in (router, sender, api):
        process.stop()
    logs = {p.args[0]: p.output() for p in (router, sender, api)}
    everything = "\n".join(logs.values())
    for secret in (api_key, ok_secret, bad_secret, ok_secret.removeprefix("whsec_")):
        assert secret not in exposed  # nor in any metric label
    for secret in (api_key, ok_secret, bad_secret, ok_secret.removeprefix("whsec_"), api_key.split("_")[-1]):
        assert secret not in everything
    lines = [line for line in everything.splitlines() if line.strip()]
    parsed = [orjson.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg"} <= set(entry) for entry in parsed)
    bound = [e for e in parsed if {"event_id", "webhook_id", "attempt"} <= set(e)]
    assert {e["event_id"] for e in bound} >= {ev["id"] for ev in good}



async def _scrape_when(url: str):
    samples = await scrape(url)
    return samples if value(samples, "hookstream_deliveries_finished_total", status="failed") == 1 else None


async def test_failure_path_metrics(db, hs_settings, spawn):
    """The metrics a failure-rate dashboard needs move exactly: status class ``none`` (timeouts, a
    disabled webhook), breaker transitions, the retry backlog (a breaker's hold waits as a deferred
    first attempt, not an attempt), consumer lag; and a manual redelivery does not count in the
    end-to-end latency histogram."""
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        ok, _ = await make_webhook(db, org, receiver.url("/ok"), event_types=["order.created"], store_ids=["s1"])
        await make_webhook(db, org, receiver.url("/hang"), event_types=["order.updated"], store_ids=["s1"])
        await make_webhook(db, org, receiver.url("/fail"), event_types=["order.cancelled"], store_ids=["s1"])
        disabled, _ = await make_webhook(db, org, receiver.url("/off"), event_types=["order.closed"],
                                         store_ids=["s1"], enabled=False)
        receiver.set("/hang", Behaviour(mode="hang"))
        receiver.set("/fail", Behaviour(status=500))
        env = {"HOOKSTREAM_REQUEST_TIMEOUT": "500ms", "HOOKSTREAM_RETRY_DELAYS": "1h,1h,1h",
               "HOOKSTREAM_BREAKER_FAILURE_THRESHOLD": "2", "HOOKSTREAM_BREAKER_OPEN": "1h"}
        router_port, sender_port = free_port(), free_port()
        spawn("router", env={**env, "HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{router_port}"})
        spawn("sender", env={**env, "HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{sender_port}"})

        async def publish(*events):
            async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
                for event in events:
                    await producer.send_and_wait(hs_settings.source_topics[1], orjson.dumps(event), key=b"k")

        ok_event = sample_event("order.created", org, "s1", 1)
        await publish(ok_event, sample_event("order.updated", org, "s1", 2),
                      sample_event("order.cancelled", org, "s1", 3), sample_event("order.cancelled", org, "s1", 4))
        await wait_for(lambda: len(receiver.at("/fail")) == 2 and receiver.at("/ok"), timeout_s=60,
                       message="the first attempts")
        await wait_for(lambda: db.fetchval("SELECT count(*) = 4 FROM attempts"), timeout_s=30, message="4 recorded")
        await publish(sample_event("order.cancelled", org, "s1", 5))  # the breaker is open now: held unsent
        # a delivery for the disabled webhook (asked for before it was disabled), and a manual redelivery
        seq = await db.fetchval("SELECT seq FROM events WHERE event_id = $1", ok_event["id"])
        await db.execute("INSERT INTO deliveries (webhook_id, event_seq, event_id, event_type, store_id, manual_due_at)"
                         " VALUES ($1, $2, $3, 'order.closed', 's1', now())", disabled, seq, ok_event["id"])
        await db.execute("UPDATE deliveries SET manual_due_at = now(), status = 'pending' WHERE webhook_id = $1", ok)

        async def settled():
            samples = await scrape(f"http://127.0.0.1:{sender_port}/metrics")
            done = (value(samples, "hookstream_delivery_attempts_total", outcome="success", status_class="2xx") == 2
                    and value(samples, "hookstream_deliveries_finished_total", status="failed") == 1
                    and value(samples, "hookstream_retry_backlog", tier="1") == 3
                    and value(samples, "hookstream_retry_backlog", tier="0") == 1)
            return samples if done else None

        sent = await wait_for(settled, timeout_s=40, interval_s=0.5, message="the failure-path metrics")
        assert value(sent, "hookstream_delivery_attempts_total", outcome="failure", status_class="5xx") == 2
        # the timeout and the disabled webhook: no HTTP status (the breaker's hold is no attempt)
        assert value(sent, "hookstream_delivery_attempts_total", outcome="failure", status_class="none") == 2
        assert value(sent, "hookstream_deliveries_deferred_total") >= 1
        assert value(sent, "hookstream_circuit_breaker_transitions_total", state="open") == 1
        assert value(sent, "hookstream_retries_scheduled_total", tier="1") == 3
        assert value(sent, "hookstream_deliveries_finished_total", status="succeeded") == 2
        # one automatic success counts in the latency histogram; the manual redelivery does not
        assert value(sent, "hookstream_delivery_latency_seconds_count") == 1
        assert len(receiver.at("/off")) == 0 and len(receiver.at("/ok")) == 2

        async def lag_reported():
            routed = await scrape(f"http://127.0.0.1:{router_port}/metrics")
            return [labels for name, labels in routed if name == "hookstream_consumer_lag"]

        lag = await wait_for(lag_reported, timeout_s=15, message="consumer lag of the router")
        assert {dict(labels)["group"] for labels in lag} == {hs_settings.router_group}
        receiver.release_hangs()


def families(text: str) -> set[str]:
    """The metric families a /metrics page declares (``# TYPE`` lines), samples or not."""
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def owned_by(service: str) -> set[str]:
    """Families (as ``# TYPE`` names them) that only ``service`` exports."""
    from prometheus_client import REGISTRY

    from hookstream.core import metrics

    names = set()
    for family in REGISTRY.collect():
        if metrics.OWNERS.get(family.name) == frozenset({service}):
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def publish_cli(hs_env, *args: str, without: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in {**os.environ, **hs_env}.items() if k not in without}
    return subprocess.run([sys.executable, "-m", "hookstream.cli", "publish", "--type", "order.created",
                           "--data", '{"order": {"id": "o1"}}', *args], env=env,
                          capture_output=True, text=True, timeout=60)


async def test_each_process_exports_its_own_metrics_and_unmatched_events_say_why(db, hs_env, spawn):
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1", "s2"))
        await make_webhook(db, org, receiver.url("/ok"), event_types=["order.created"], store_ids=["s1"])
        router_port, sender_port = free_port(), free_port()
        router = spawn("router", env={"HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{router_port}"})
        sender = spawn("sender", env={"HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{sender_port}"})
        await wait_for(lambda: "started" in router.output() and "started" in sender.output(), timeout_s=60,
                       message="router and sender started")

        # publish warns about what the database does not know, and publishes all the same
        unknown_org = publish_cli(hs_env, "--org", "org_nobody", "--store", "s1")
        assert unknown_org.returncode == 0, unknown_org.stderr
        assert "organization 'org_nobody' is not in the database" in unknown_org.stderr
        unknown_store = publish_cli(hs_env, "--org", org, "--store", "s9")
        assert unknown_store.returncode == 0, unknown_store.stderr
        assert f"store 's9' of organization '{org}' is not in the database" in unknown_store.stderr
        no_webhook = publish_cli(hs_env, "--org", org, "--store", "s2")  # known store, no webhook for it
        assert no_webhook.returncode == 0 and "warning" not in no_webhook.stderr, no_webhook.stderr
        delivered = publish_cli(hs_env, "--org", org, "--store", "s1")
        assert delivered.returncode == 0 and "warning" not in delivered.stderr, delivered.stderr
        unchecked = publish_cli(hs_env, "--org", org, "--store", "s1", without=("DATABASE_URL",))
        assert unchecked.returncode == 0, unchecked.stderr
        assert "DATABASE_URL is not set; not checking" in unchecked.stderr, unchecked.stderr
        await wait_for(lambda: receiver.at("/ok") and len(receiver.at("/ok")) == 2, timeout_s=60,
                       message="the two events for s1 delivered")

        routed = await wait_for(lambda: _scrape_unmatched(f"http://127.0.0.1:{router_port}/metrics"), timeout_s=30,
                                message="router metrics")
        assert value(routed, "hookstream_events_unmatched_total", reason="unknown_organization") == 1
        assert value(routed, "hookstream_events_unmatched_total", reason="no_webhook") == 2  # s9, s2
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{router_port}/metrics") as response:
                router_text = await response.text()
            async with session.get(f"http://127.0.0.1:{sender_port}/metrics") as response:
                sender_text = await response.text()
    sender_only, router_only = owned_by("sender"), owned_by("router")
    assert "hookstream_delivery_attempts_total" in sender_only and "hookstream_events_consumed_total" in router_only
    assert families(router_text) & sender_only == set()
    assert families(sender_text) & router_only == set()
    assert "hookstream_events_unmatched_total" in families(router_text)
    assert "hookstream_delivery_attempts_total" in families(sender_text)
    assert "hookstream_consumer_lag" in families(router_text) & families(sender_text)
    router.stop()
    sender.stop()
    assert f"metrics on http://127.0.0.1:{router_port}/metrics" in router.output()
    assert f"metrics on http://127.0.0.1:{sender_port}/metrics" in sender.output()
    # a normal start on a topic set created just now (by these two, side by side) logs no error
    for process in (router, sender):
        assert [line for line in process.output().splitlines() if " ERROR " in line] == []


async def _scrape_unmatched(url: str):
    samples = await scrape(url)
    return samples if total(samples, "hookstream_events_unmatched_total") >= 3 else None
