"""Delivery in order per resource (issue 14) through the real pipeline: routers, senders, Kafka and
PostgreSQL, and a receiver that fails the first attempt of every third event. Per resource, every
request for an event (its retries and any at-least-once copy) reaches the endpoint before the first
request for the next event; a second webhook without ordering gets the same events without waiting.
The same holds while a sender is SIGKILLed mid-stream and while senders scale 1 -> 3 -> 1. A
differential test holds the database's triggers to the pure rules of hookstream.core.ordering."""

from __future__ import annotations

import collections
import re
import uuid

import asyncpg
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookstream.core.ordering import OrderedResources, resource_key
from hookstream.core.publish import make_event
from hookstream.core.settings import Settings
from hookstream.core.states import DeliveryStatus
from tests import faults
from tests.receiver import Behaviour, Receiver
from tests.support import WaitTimeout, make_org, make_webhook, publish_events, wait_for

pytestmark = pytest.mark.integration

RESOURCES = 50
EVENTS_PER_RESOURCE = 8
# A third of the first attempts fail on purpose; the circuit breaker (which would open on five in a
# row and refuse the retries too) is not what these tests are about.
NO_BREAKER = {"HOOKSTREAM_BREAKER_FAILURE_THRESHOLD": "10000"}


def stream(org: str) -> list[dict]:
    """50 orders x 8 events, interleaved (event k of every order, then event k + 1, ...)."""
    return [make_event("order.updated", organization_id=org, store_id="s1",
                       data={"order": {"id": f"ord_{r}", "total": f"{k}.00", "currency": "EUR"}},
                       event_id=f"evt_{r}_{k}")
            for k in range(EVENTS_PER_RESOURCE) for r in range(RESOURCES)]


def every_third(events: list[dict]) -> frozenset[str]:
    return frozenset(e["id"] for n, e in enumerate(events) if n % 3 == 0)


def receipts_by_resource(requests) -> dict[int, list[int]]:
    """Per order, the event number (k) of every request the endpoint received, in arrival order."""
    seq: dict[int, list[int]] = collections.defaultdict(list)
    for request in requests:
        _, r, k = orjson.loads(request.body)["id"].split("_")
        seq[int(r)].append(int(k))
    return seq


def assert_in_order(requests, failing: frozenset[str]) -> None:
    seq = receipts_by_resource(requests)
    assert sorted(seq) == list(range(RESOURCES))
    for resource, ks in seq.items():
        # every request for event k (its failed first attempt, its retry, any duplicate) arrived
        # before the first request for event k + 1
        assert ks == sorted(ks), f"ord_{resource} received out of order: {ks}"
        assert set(ks) == set(range(EVENTS_PER_RESOURCE))
    firsts = collections.Counter(orjson.loads(r.body)["id"] for r in requests)
    for event_id in failing:  # each of those was refused once and delivered by a retry
        assert firsts[event_id] >= 2, event_id


async def all_succeeded(db, webhook_id: str) -> bool:
    return await db.fetchval("SELECT count(*) FROM deliveries WHERE webhook_id = $1 AND status = 'succeeded'",
                             webhook_id) == RESOURCES * EVENTS_PER_RESOURCE


async def wait_all_succeeded(db, webhook_id: str, timeout_s: float) -> None:
    try:
        await wait_for(lambda: all_succeeded(db, webhook_id), timeout_s=timeout_s, message=f"every delivery of {webhook_id}")
    except WaitTimeout:
        rows = await db.fetch("SELECT status, ordered_waiting, in_flight, next_attempt_at IS NOT NULL AS due,"
                              " left(last_error, 80) AS error, count(*) AS n FROM deliveries WHERE webhook_id = $1"
                              " GROUP BY 1, 2, 3, 4, 5", webhook_id)
        raise AssertionError(f"not all succeeded: {[dict(r) for r in rows]}") from None


async def test_per_resource_order_holds_with_failures_and_the_unordered_webhook_does_not_wait(
        db, hs_settings, spawn):
    async with Receiver() as receiver:
        events, failing, ordered, unordered = await ordered_and_unordered(db, receiver, "Ordered shop")
        spawn("router")
        spawn("sender", env=NO_BREAKER)
        await publish_events(hs_settings, events)
        await wait_all_succeeded(db, ordered, 120)
        await wait_all_succeeded(db, unordered, 30)

        assert_in_order(receiver.at("/ordered"), failing)
        # Without ordering, the events after a refused one went out before its retry.
        unordered_seq = receipts_by_resource(receiver.at("/unordered"))
        assert any(ks != sorted(ks) for ks in unordered_seq.values())
        assert {orjson.loads(r.body)["id"] for r in receiver.at("/unordered")} == {e["id"] for e in events}
        # The log says nothing is waiting any more, and the ordering state is empty.
        assert await db.fetchval("SELECT count(*) FROM deliveries WHERE ordered_waiting") == 0
        assert await db.fetchval("SELECT count(*) FROM resource_heads") == 0  # every resource forgotten


async def test_per_resource_order_holds_while_a_sender_is_killed_mid_stream(db, hs_settings, spawn):
    async with Receiver() as receiver:
        events, failing, ordered, unordered = await ordered_and_unordered(db, receiver, "Killed")
        spawn("router")
        doomed = spawn("sender", name="doomed", env=NO_BREAKER)
        await publish_events(hs_settings, events)
        await wait_for(lambda: len(receiver.at("/ordered")) >= 120, timeout_s=60, message="the stream under way")
        doomed.kill()  # SIGKILL: attempts in flight, outcomes unflushed, offsets uncommitted
        spawn("sender", name="replacement", env=NO_BREAKER)
        await wait_all_succeeded(db, ordered, 180)
        await wait_all_succeeded(db, unordered, 60)
        assert_in_order(receiver.at("/ordered"), failing)


async def test_per_resource_order_holds_while_senders_scale_1_3_1(db, hs_settings, spawn):
    """One sender takes the first half of the stream; two more join (the group rebalances, a
    resource's next event may go to another replica); the second half is published; the two leave
    again (SIGTERM: they drain and hand their partitions back) while it is delivered."""
    async with Receiver() as receiver:
        events, failing, ordered, unordered = await ordered_and_unordered(db, receiver, "Scaling")
        half = len(events) // 2  # events 0-3 of every order, then 4-7
        spawn("router")
        spawn("sender", name="first", env=NO_BREAKER)
        await publish_events(hs_settings, events[:half])
        await wait_for(lambda: len(receiver.at("/ordered")) >= 80, timeout_s=60, message="the stream under way")
        extra = [spawn("sender", name=f"extra{n}", env=NO_BREAKER) for n in (1, 2)]
        for process in extra:  # the group has rebalanced: each extra replica logged its partitions
            await wait_for(lambda p=process: re.search(r"sender assigned partitions \d", p.output()), timeout_s=60,
                           message="partitions for the extra senders")
        await publish_events(hs_settings, events[half:])
        await wait_for(lambda: len(receiver.at("/ordered")) >= 300, timeout_s=90, message="three senders at work")
        for process in extra:  # each took part: the group gave it partitions of the delivery topic
            port = int(process.env["HOOKSTREAM_METRICS_LISTEN"].rpartition(":")[2])
            await wait_for(lambda p=port: faults.metric_total(p, "hookstream_delivery_attempts_total"), timeout_s=30,
                           message="attempts by every extra sender")
        for process in extra:
            assert process.terminate() == 0  # SIGTERM: drains, hands its partitions back
        await wait_all_succeeded(db, ordered, 180)
        await wait_all_succeeded(db, unordered, 60)
        assert_in_order(receiver.at("/ordered"), failing)


async def ordered_and_unordered(db, receiver: Receiver, name: str):
    """An organization with a per_resource webhook and an unordered one on the same events, both
    refusing the first attempt of every third event; returns (events, failing, ordered, unordered)."""
    org, _ = await make_org(db, name, stores=("s1",))
    events = stream(org)
    failing = every_third(events)
    ordered, _ = await make_webhook(db, org, receiver.url("/ordered"), event_types=["order.updated"],
                                    store_ids=["s1"], ordering="per_resource")
    unordered, _ = await make_webhook(db, org, receiver.url("/unordered"), event_types=["order.updated"],
                                      store_ids=["s1"])
    for path in ("/ordered", "/unordered"):
        receiver.set(path, Behaviour(mode="first_fails", fail_first_of=failing))
    return events, failing, ordered, unordered


# ---- the triggers against the pure rules --------------------------------------------------------

_ops = st.lists(st.one_of(
    st.tuples(st.just("route"), st.integers(0, 2)),
    st.tuples(st.just("finish"), st.integers(0, 40), st.sampled_from([DeliveryStatus.SUCCEEDED,
                                                                      DeliveryStatus.FAILED])),
    st.tuples(st.just("batch"), st.lists(st.integers(0, 2), min_size=2, max_size=5)),
    st.tuples(st.just("replay"), st.integers(0, 40)),
), min_size=1, max_size=30)


@pytest.fixture
async def ordering_db(database_url):
    conn = await asyncpg.connect(database_url)
    org, _ = await make_org(conn, "Differential", stores=("s1",))
    yield conn, org
    await conn.close()


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=_ops)
async def test_the_database_keeps_exactly_the_rules_of_the_pure_model(ordering_db, ops) -> None:
    """Random routing (single events and batches holding several events of one resource) and
    finishing (which releases), applied through the router's real store statement and a plain
    status UPDATE (what every outcome path does): the heads, the waiting deliveries and the released
    ones in PostgreSQL are those of OrderedResources after every step."""
    from hookstream.core.validation import validate_event
    from hookstream.router.router import SourceRecord, store_batch

    conn, org = ordering_db
    webhook_id, _ = await make_webhook(conn, org, "https://example.com/hook", event_types=["order.updated"],
                                       store_ids=["s1"], ordering="per_resource")
    model = OrderedResources()
    routed: list[tuple[SourceRecord, object, str]] = []  # every record routed, for replays
    issued_by_router: set[int] = set()
    offset = 0

    def key_of(event) -> tuple[str, str]:
        return (webhook_id, resource_key(event.type, event.data))

    async def route(resources: list[int]) -> None:
        nonlocal offset
        part, matches = [], []
        for resource in resources:
            offset += 1
            event = make_event("order.updated", organization_id=org, store_id="s1",
                               data={"order": {"id": f"o{resource}"}}, event_id=f"e{uuid.uuid4().hex[:12]}")
            raw = orjson.dumps(event)
            record = SourceRecord("aiq.orders", 0, offset, None, raw, ())
            validated = validate_event(raw)
            part.append((record, validated, raw.decode()))
            matches.append((webhook_id, validated))
        routed.extend(part)
        rows, _ = await store_batch(conn, part, matches, {webhook_id})
        by_event = {row["event_id"]: row for row in rows}
        for _, event, _ in part:  # in source order, as the router's statement admits them
            row = by_event[event.id]
            admitted = model.admit(row["id"], key_of(event))
            assert row["first_in_flight"] is admitted  # only heads get a task
            assert row["ordered"] is True
            if admitted:
                issued_by_router.add(row["id"])

    async def replay(pick: int) -> None:
        """The router crashed after storing: the same record (same source position) comes again."""
        if not routed:
            return
        item = routed[pick % len(routed)]
        rows, _ = await store_batch(conn, [item], [(webhook_id, item[1])], {webhook_id})
        [row] = rows
        assert model.admit(row["id"], key_of(item[1])) is False  # stored already: nothing admitted
        # re-enqueued only while the router's own task may not have reached Kafka: never attempted
        assert row["first_in_flight"] is (row["id"] in issued_by_router
                                          and model.status[row["id"]] == DeliveryStatus.PENDING)

    for op in ops:
        if op[0] == "route":
            await route([op[1]])
        elif op[0] == "batch":
            await route(op[1])
        elif op[0] == "replay":
            await replay(op[1])
        else:
            pending = sorted(d for d, s in model.status.items() if s == DeliveryStatus.PENDING)
            if not pending:
                continue
            delivery = pending[op[1] % len(pending)]
            released = model.finish(delivery, op[2])
            await conn.execute("UPDATE deliveries SET status = $2, finished_at = now(), attempts = 1,"
                               " in_flight = false WHERE id = $1", delivery, op[2])
            if released is not None:
                due = await conn.fetchrow("SELECT ordered_waiting, next_attempt_at IS NOT NULL AS due"
                                          " FROM deliveries WHERE id = $1", released)
                assert (due["ordered_waiting"], due["due"]) == (False, True)
        heads = {(webhook_id, r["resource_key"]): r["head_delivery_id"] for r in await conn.fetch(
            "SELECT resource_key, head_delivery_id FROM resource_heads WHERE webhook_id = $1", webhook_id)}
        assert heads == {k: v for k, v in model.heads.items()}
        waiting = {r["id"] for r in await conn.fetch(
            "SELECT id FROM deliveries WHERE webhook_id = $1 AND ordered_waiting AND status = 'pending'",
            webhook_id)}
        assert waiting == {d for queue in model.waiting.values() for d in queue}
        assert await conn.fetchval("SELECT count(*) FROM deliveries WHERE webhook_id = $1 AND ordered_waiting"
                                   " AND status <> 'pending'", webhook_id) == 0


# ---- bulk recovery keeps the order ---------------------------------------------------------------

async def test_a_recovery_of_an_ordered_webhook_delivers_each_resource_in_order(db, hs_env, hs_settings, spawn,
                                                                                 database_url):
    """Every event of two orders failed for good (410) while the endpoint was broken; a recovery
    then sends them again in event order per order, one after the other, though the endpoint is slow
    enough for a concurrent send to overtake; an unrelated delivery in progress is not disturbed."""
    from aiohttp.test_utils import TestClient, TestServer

    from hookstream.api.app import build_app
    from hookstream.core.db import open_pool
    from hookstream.core.orgs import create_organization
    from tests.support import ApiOrg

    async with Receiver() as receiver, open_pool(database_url, max_size=3) as pool:
        org = ApiOrg(*await create_organization(db, "Recovering shop"))
        await db.execute("INSERT INTO stores (organization_id, id, name) VALUES ($1, 's1', 's1')", org.id)
        hook, _ = await make_webhook(db, org.id, receiver.url("/ordered"), event_types=["order.updated"],
                                     store_ids=["s1"], ordering="per_resource")
        events = [make_event("order.updated", organization_id=org.id, store_id="s1",
                             data={"order": {"id": f"ord_{r}", "total": f"{k}.00", "currency": "EUR"}},
                             event_id=f"evt_{r}_{k}") for k in range(5) for r in range(2)]
        receiver.set("/ordered", Behaviour(status=410, body="gone"))
        spawn("router")
        spawn("sender")
        await publish_events(hs_settings, events)

        async def all_failed():
            return await db.fetchval("SELECT count(*) FROM deliveries WHERE webhook_id = $1 AND status = 'failed'",
                                     hook) == len(events)
        await wait_for(all_failed, timeout_s=60, message="every delivery to fail")
        assert await db.fetchval("SELECT count(*) FROM resource_heads") == 0
        broken = len(receiver.at("/ordered"))

        receiver.set("/ordered", Behaviour(status=200, delay_s=0.15))
        client = TestClient(TestServer(build_app(Settings.from_env(hs_env), pool)))
        await client.start_server()
        try:
            async with client.post(f"/v1/webhooks/{hook}/recover", headers=org.headers,
                                   data=orjson.dumps({"since": "2000-01-01T00:00:00Z"})) as response:
                recovery = await response.json()
                assert response.status == 202, recovery
            assert recovery["total"] == len(events)
            # two resources, so two deliveries go first; the other eight wait in their queues
            assert await db.fetchval("SELECT count(*) FROM deliveries WHERE webhook_id = $1 AND ordered_waiting",
                                     hook) == len(events) - 2

            async def finished():
                async with client.get(f"/v1/webhooks/{hook}/recoveries/{recovery['id']}",
                                      headers=org.headers) as response:
                    body = await response.json()
                return body if body["status"] == "finished" else None
            done = await wait_for(finished, timeout_s=90, message="the recovery to finish")
        finally:
            await client.close()
        assert (done["succeeded"], done["failed"]) == (len(events), 0)
        recovered = receiver.at("/ordered")[broken:]
        seq = collections.defaultdict(list)
        for request in recovered:
            _, r, k = orjson.loads(request.body)["id"].split("_")
            seq[int(r)].append(int(k))
        assert seq == {0: [0, 1, 2, 3, 4], 1: [0, 1, 2, 3, 4]}
        assert await db.fetchval("SELECT count(*) FROM resource_heads") == 0
