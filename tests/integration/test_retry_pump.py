"""The durable retry pump with several sender replicas (issue 18): every due retry is claimed by
one pump only and sent once; across a PostgreSQL outage (the pump's claim cannot commit after Kafka
took its tasks, so they are sent again) nothing is lost and no attempt number is recorded twice."""

from __future__ import annotations

import asyncio
import collections

import asyncpg
import pytest

from hookstream.core.kafka import open_producer
from hookstream.core.publish import publish_event
from tests import faults
from tests.receiver import Behaviour, Receiver
from tests.support import make_org, make_webhook, sample_event, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EVENTS = 300
SENDERS = 3


async def _setup(db, hs_settings, spawn, receiver):
    org, _ = await make_org(db, "Org", stores=("s1",))
    hook, _ = await make_webhook(db, org, receiver.url("/flaky"), event_types=["order.created"], store_ids=["s1"])
    receiver.set("/flaky", Behaviour(mode="first_fails"))
    env = {"HOOKSTREAM_RETRY_DELAYS": "1s,1s,1s", "HOOKSTREAM_BREAKER_FAILURE_THRESHOLD": "10000"}
    procs = [spawn("router", env=env), *(spawn("sender", env=env, name=f"sender{i}") for i in range(SENDERS))]
    events = [sample_event("order.created", org, "s1", n, event_id=f"evt_pump_{n}") for n in range(EVENTS)]
    async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
        for event in events:
            await publish_event(producer, event, hs_settings.source_topics)
    return hook, events, procs


async def _all_succeeded(database_url: str) -> bool:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'succeeded'") == EVENTS
    finally:
        await conn.close()


async def _attempt_numbers(database_url: str) -> dict[str, list[int]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT d.event_id, a.attempt FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
                                " ORDER BY d.event_id, a.attempt")
    finally:
        await conn.close()
    numbers: dict[str, list[int]] = collections.defaultdict(list)
    for row in rows:
        numbers[row["event_id"]].append(row["attempt"])
    return numbers


async def test_several_senders_send_each_due_retry_exactly_once(db, database_url, hs_settings, spawn):
    async with Receiver() as receiver:
        _, events, procs = await _setup(db, hs_settings, spawn, receiver)
        await wait_for(lambda: _all_succeeded(database_url), timeout_s=120, interval_s=0.5,
                       message="every delivery succeeded after one retry")
        await asyncio.sleep(1.0)  # room for a second copy of any retry to arrive
        per_event = collections.Counter(r.headers["webhook-id"] for r in receiver.at("/flaky"))
        assert per_event == {e["id"]: 2 for e in events}, "a retry was sent twice (or never)"
        assert await _attempt_numbers(database_url) == {e["id"]: [1, 2] for e in events}
        faults.assert_alive(*procs)


async def test_retries_across_a_postgres_outage_lose_nothing_and_number_each_attempt_once(
        db, database_url, hs_settings, spawn, restore_infra):
    async with Receiver() as receiver:
        _, events, procs = await _setup(db, hs_settings, spawn, receiver)
        # the outage starts while first attempts fail and their retries come due
        await wait_for(lambda: len(receiver.at("/flaky")) >= EVENTS // 2, timeout_s=60, message="first attempts")
        restore_infra.add("postgres")
        async with faults.postgres_stopped():
            await asyncio.sleep(5)
        restore_infra.discard("postgres")
        await wait_for(lambda: _all_succeeded(database_url), timeout_s=150, interval_s=0.5,
                       message="every delivery succeeded after the outage")
        numbers = await _attempt_numbers(database_url)
        assert set(numbers) == {e["id"] for e in events}
        # each attempt number recorded once, and the first success ends the delivery
        assert all(attempts == list(range(1, len(attempts) + 1)) for attempts in numbers.values()), numbers
        per_event = collections.Counter(r.headers["webhook-id"] for r in receiver.at("/flaky"))
        extra = sum(n - 2 for n in per_event.values())
        print(f"\nretry pump across a 5 s PostgreSQL outage: {EVENTS} events, {extra} duplicate requests")
        faults.assert_alive(*procs)
