"""Filters end to end (issue 15): two webhooks on the same events, one filtered; only matching events
reach it; evaluation errors are counted (metric, and per webhook in the API); a filter changed through
the API takes effect within a second on every router replica."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from hookstream.core.kafka import open_producer
from hookstream.core.publish import publish_event
from tests.integration.test_observability import scrape, value
from tests.receiver import Receiver
from tests.support import free_port, make_org, sample_event, wait_for

pytestmark = pytest.mark.integration


def order(org: str, n: int, total: str, currency: str = "EUR") -> dict:
    event = sample_event("order.created", org, "s1", n, event_id=f"evt_f_{n}")
    event["data"]["order"].update({"total": total, "currency": currency})
    return event


async def test_only_matching_events_reach_a_filtered_webhook_and_changes_apply_on_every_router(
        db, hs_settings, hs_env, spawn):
    async with Receiver() as receiver:
        org, key = await make_org(db, "Org", stores=("s1",))
        router_ports = [free_port(), free_port()]
        for port in router_ports:  # two router replicas share the source partitions
            spawn("router", env={"HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{port}"})
        spawn("sender")
        api = spawn("api")
        base, headers = f"http://{hs_env['HOOKSTREAM_API_LISTEN']}", {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            async def call(method: str, path: str, body=None, status: int = 200):
                async with http.request(method, base + path, data=orjson.dumps(body) if body else None) as resp:
                    answer = await resp.json()
                    assert resp.status == status, (resp.status, answer, api.output()[-2000:])
                    return answer

            async def up() -> bool:
                try:
                    async with http.get(base + "/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(up, timeout_s=30, message="the API")
            hook = {"event_types": ["order.created"], "store_ids": ["s1"]}
            everything = await call("POST", "/v1/webhooks", {**hook, "url": receiver.url("/all")}, 201)
            big = await call("POST", "/v1/webhooks", {**hook, "url": receiver.url("/big"),
                                                       "filter": "double(data.order.total) >= 100.0"}, 201)
            events = [order(org, 1, "42.10"), order(org, 2, "142.10"), order(org, 3, "100.00"), order(org, 4, "7")]
            async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
                for event in events:
                    await publish_event(producer, event, hs_settings.source_topics)
            await wait_for(lambda: len(receiver.at("/all")) == 4 and len(receiver.at("/big")) == 2, timeout_s=60,
                           message="the deliveries")
            await asyncio.sleep(1.0)
            assert sorted(orjson.loads(r.body)["id"] for r in receiver.at("/big")) == ["evt_f_2", "evt_f_3"]
            assert len(receiver.at("/all")) == 4 and len(receiver.at("/big")) == 2

            # an evaluation error (a key these events lack) sends nothing and is counted
            await call("PATCH", f"/v1/webhooks/{big['id']}", {"filter": 'data.order.coupon == "X"'})
            await asyncio.sleep(1.0)  # the change reaches both routers through LISTEN/NOTIFY within a second
            later = [order(org, n, "500.00") for n in range(10, 30)]  # keyed apart: both routers' partitions
            async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
                for event in later:
                    await publish_event(producer, event, hs_settings.source_topics)
            await wait_for(lambda: len(receiver.at("/all")) == 24, timeout_s=60, message="the later events")
            await asyncio.sleep(1.0)
            assert len(receiver.at("/big")) == 2, "events were sent past a filter that failed"

            async def errors_counted():
                got = await call("GET", f"/v1/webhooks/{big['id']}")
                return got if got["filter_errors_24h"] == 20 else None

            got = await wait_for(errors_counted, timeout_s=20, message="filter errors in the API")
            assert "no such key" in got["last_filter_error"]["error"]
            assert got["last_filter_error"]["event_id"] in {e["id"] for e in later}
            per_router = [await scrape(f"http://127.0.0.1:{port}/metrics") for port in router_ports]
            assert sum(value(m, "hookstream_filter_errors_total") for m in per_router) == 20
            # both replicas applied the new filter (each routed some of the later events)
            assert all(value(m, "hookstream_filter_errors_total") > 0 for m in per_router), per_router
            assert sum(value(m, "hookstream_events_unmatched_total", reason="filtered") for m in per_router) == 0
            assert (await call("GET", f"/v1/webhooks/{everything['id']}"))["filter_errors_24h"] == 0
