"""The circuit breaker with the real pipeline (issue 16): a delivery the breaker refuses waits for the
probe in PostgreSQL without using up an attempt or a retry; a dead endpoint still ends every delivery
``failed`` once the retry window is over; a healthy tenant delivers throughout; the sender's log says
when a breaker opens and closes, and which deliveries failed."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt

import orjson
import pytest

from hookstream.core.db import open_pool
from hookstream.core.model import AttemptRecord, Deferred, DeliveryTask, Failed, parse_validated_rfc3339
from hookstream.core.publish import make_event
from hookstream.core.retry import RetryPolicy
from hookstream.sender import retries
from hookstream.sender import sender as sender_module
from hookstream.sender.outcomes import write_outcomes
from hookstream.sender.sender import decide_outcome
from tests.receiver import Behaviour, Receiver
from tests.support import free_port, make_org, make_webhook, publish_events, sample_event, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def log_lines(proc, text: str) -> list[str]:
    return [line for line in proc.output().splitlines() if text in line]


async def requests_per_event(receiver: Receiver, path: str) -> collections.Counter:
    return collections.Counter(r.headers["webhook-id"] for r in receiver.at(path))


async def failing_and_healthy(db, receiver: Receiver, path: str) -> tuple[str, str, str, str]:
    """(shop, other, webhook, healthy): the shop's webhook at ``path`` answers 500; another
    organization's webhook at /healthy answers 200. Both take order.created from store s1."""
    shop, _ = await make_org(db, "Shop", stores=("s1",))
    other, _ = await make_org(db, "Other", stores=("s1",))
    hook, _ = await make_webhook(db, shop, receiver.url(path), event_types=["order.created"], store_ids=["s1"])
    healthy, _ = await make_webhook(db, other, receiver.url("/healthy"), event_types=["order.created"],
                                    store_ids=["s1"])
    receiver.set(path, Behaviour(status=500))
    return shop, other, hook, healthy


async def test_refusals_while_open_use_no_retry_and_deliver_once_the_endpoint_recovers(db, hs_settings, spawn):
    async with Receiver() as receiver:
        shop, other, flaky, healthy = await failing_and_healthy(db, receiver, "/flaky")
        # a retry window (42 s) longer than the test keeps the endpoint down; probes every second
        env = {"HOOKSTREAM_RETRY_DELAYS": "5s,10s,20s", "HOOKSTREAM_BREAKER_OPEN": "1s"}
        metrics_port = free_port()
        spawn("router", env=env)
        sender = spawn("sender", env={**env, "HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"})
        events = [sample_event("order.created", shop, "s1", n, event_id=f"evt_flaky_{n}") for n in range(100)]
        await publish_events(hs_settings, events)
        await wait_for(lambda: log_lines(sender, "circuit breaker opened"), timeout_s=90, message="the breaker opened")

        # while it is open (the endpoint still fails), another tenant's webhook delivers at once
        fine = [sample_event("order.created", other, "s1", n, event_id=f"evt_fine_{n}") for n in range(20)]
        await publish_events(hs_settings, fine)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 20 FROM deliveries WHERE webhook_id = $1"
                                           " AND status = 'succeeded' AND attempts = 1", healthy),
                       timeout_s=60, message="the healthy tenant's deliveries")
        assert not log_lines(sender, "circuit breaker closed")  # it really was open all that time
        # the delivery log says why a held delivery waits, and until when; nothing was recorded for it
        held = await db.fetch("SELECT attempts, last_error, next_attempt_at FROM deliveries WHERE webhook_id = $1"
                              " AND status = 'pending' AND last_error LIKE 'circuit breaker %'", flaky)
        assert held, "no delivery is shown waiting for the breaker's probe"
        assert all("next try at" in r["last_error"] and r["next_attempt_at"] is not None for r in held)

        receiver.set("/flaky", Behaviour(status=200))
        await wait_for(lambda: db.fetchval("SELECT count(*) = 100 FROM deliveries WHERE webhook_id = $1"
                                           " AND status = 'succeeded'", flaky),
                       timeout_s=120, message="every held delivery delivered after the recovery")

        sent = await requests_per_event(receiver, "/flaky")
        rows = await db.fetch("SELECT event_id, attempts FROM deliveries WHERE webhook_id = $1", flaky)
        # every attempt recorded is a request the endpoint received: the refusals used none of them
        assert {r["event_id"]: r["attempts"] for r in rows} == dict(sent)
        assert max(sent.values()) <= 4
        refusals = await db.fetchval("SELECT count(*) FROM attempts a JOIN deliveries d ON d.id = a.delivery_id"
                                     " WHERE d.webhook_id = $1 AND a.error LIKE 'circuit breaker%'", flaky)
        assert refusals == 0
        # most deliveries were never sent before the recovery, and were delivered on their first attempt
        assert sum(1 for n in sent.values() if n == 1) >= 50

        opened = log_lines(sender, "circuit breaker opened")
        assert f"webhook_id={flaky}" in opened[0] and f"organization_id={shop}" in opened[0]
        assert "why=5 consecutive failures, the last: HTTP 500" in opened[0]
        closed = log_lines(sender, "circuit breaker closed")
        assert closed and f"webhook_id={flaky}" in closed[-1] and "why=probe succeeded (HTTP 200)" in closed[-1]
        assert not log_lines(sender, "delivery failed")


async def test_deliveries_held_when_the_breaker_closes_go_out_then_not_at_the_probe_time(db, hs_settings, spawn):
    """Five quick failures open the breaker while a slow attempt is still in flight; that attempt then
    succeeds and closes it. The deliveries held in between are sent at once, not two minutes later at
    the probe time the open breaker had given them."""
    open_s = 120
    async with Receiver() as receiver:
        shop, other, flaky, healthy = await failing_and_healthy(db, receiver, "/flaky")
        # the first request answers 200 after 5 s; the ones after it fail (the default) and open the breaker
        receiver.script("/flaky", Behaviour(status=200, delay_s=5.0))
        env = {"HOOKSTREAM_BREAKER_OPEN": f"{open_s}s", "HOOKSTREAM_RETRY_DELAYS": "1s,1s,1s",
               "HOOKSTREAM_ENDPOINT_MAX_CONCURRENCY": "6", "HOOKSTREAM_REQUEST_TIMEOUT": "15s"}
        spawn("router", env=env)
        sender = spawn("sender", env=env)
        events = [sample_event("order.created", shop, "s1", n, event_id=f"evt_held_{n}") for n in range(60)]
        await publish_events(hs_settings, events)
        await wait_for(lambda: log_lines(sender, "circuit breaker opened"), timeout_s=60, message="the breaker opened")
        receiver.set("/flaky", Behaviour(status=200))  # the endpoint has recovered
        fine = [sample_event("order.created", other, "s1", n, event_id=f"evt_fine_{n}") for n in range(10)]
        await publish_events(hs_settings, fine)
        await wait_for(lambda: log_lines(sender, "circuit breaker closed"), timeout_s=30, message="the breaker closed")
        # well before the probe time (open_s after the opening): each held delivery went out on the close
        await wait_for(lambda: db.fetchval("SELECT count(*) = 60 FROM deliveries WHERE webhook_id = $1"
                                           " AND status = 'succeeded'", flaky),
                       timeout_s=open_s / 2, message="the held deliveries delivered after the breaker closed")
        assert log_lines(sender, "deliveries held by the circuit breaker are due now")
        # a hold used up no attempt: what was held (never sent before the close) succeeded on its first
        sent = await requests_per_event(receiver, "/flaky")
        rows = await db.fetch("SELECT event_id, attempts FROM deliveries WHERE webhook_id = $1", flaky)
        assert {r["event_id"]: r["attempts"] for r in rows} == dict(sent)
        assert sum(1 for n in sent.values() if n == 1) >= 40
        await wait_for(lambda: db.fetchval("SELECT count(*) = 10 FROM deliveries WHERE webhook_id = $1"
                                           " AND status = 'succeeded' AND attempts = 1", healthy),
                       timeout_s=60, message="the healthy tenant's deliveries")


async def test_a_dead_endpoint_fails_its_deliveries_once_the_retry_window_is_over(db, hs_settings, spawn):
    delays_s = (1.0, 1.0, 1.0)
    open_s = 1.0
    window_s = RetryPolicy(delays_s, 0.2).window_s + open_s  # the schedule's span at its cap, plus one period
    async with Receiver() as receiver:
        shop, other, dead, healthy = await failing_and_healthy(db, receiver, "/dead")
        env = {"HOOKSTREAM_RETRY_DELAYS": "1s,1s,1s", "HOOKSTREAM_BREAKER_OPEN": "1s"}
        spawn("router", env=env)
        sender = spawn("sender", env={**env, "HOOKSTREAM_LOG_FORMAT": "json"})
        events = [sample_event("order.created", shop, "s1", n, event_id=f"evt_dead_{n}") for n in range(60)]
        await publish_events(hs_settings, events)
        fine = [sample_event("order.created", other, "s1", n, event_id=f"evt_fine_{n}") for n in range(10)]
        await publish_events(hs_settings, fine)
        await wait_for(lambda: db.fetchval("SELECT count(*) = 60 FROM deliveries WHERE webhook_id = $1"
                                           " AND status = 'failed'", dead),
                       timeout_s=150, message="every delivery to the dead endpoint failed")
        assert await db.fetchval("SELECT count(*) FROM deliveries WHERE webhook_id = $1 AND status = 'succeeded'"
                                 " AND attempts = 1", healthy) == 10

        sent = await requests_per_event(receiver, "/dead")
        assert max(sent.values()) <= 4
        rows = await db.fetch("""
            SELECT d.event_id, d.created_at, d.last_error, d.finished_at,
                   count(a.http_status) AS sent,
                   min(a.started_at) AS first_attempt, max(a.started_at) AS last_attempt,
                   (array_agg(a.error ORDER BY a.attempt DESC))[1] AS final_error
            FROM deliveries d LEFT JOIN attempts a ON a.delivery_id = d.id
            WHERE d.webhook_id = $1 GROUP BY d.id""", dead)
        expired = [r for r in rows if r["final_error"].startswith("circuit breaker stayed open past the retry window")]
        assert len(expired) >= 30, "most deliveries should have waited for the breaker, not used their retries"
        for r in rows:
            assert r["sent"] == sent.get(r["event_id"], 0)  # a recorded attempt with a status is a real request
            assert r["last_error"] == r["final_error"]
        for r in expired:
            # not before the schedule was over: no earlier than the window after the first attempt
            window_from = r["first_attempt"] if r["sent"] else r["created_at"]
            assert r["last_attempt"] - window_from >= dt.timedelta(seconds=window_s)
            # and not for ever: the holds bring it back by the window's end (loose bound: a noisy machine)
            assert r["last_attempt"] - window_from <= dt.timedelta(seconds=window_s + 60)

        # one operator line per failed delivery, as one JSON object per line (written just after the outcome)
        await wait_for(lambda: len(log_lines(sender, '"delivery failed"')) >= 60, timeout_s=30,
                       message="a line per failed delivery")
        failed_lines = [orjson.loads(line) for line in log_lines(sender, '"delivery failed"')]
        assert sorted(line["event_id"] for line in failed_lines) == sorted(e["id"] for e in events)
        line = next(line for line in failed_lines if line["event_id"] == expired[0]["event_id"])
        assert line["level"] == "info" and line["webhook_id"] == dead and line["organization_id"] == shop
        assert line["event_type"] == "order.created" and line["attempts"] >= 1
        assert line["error"].startswith("circuit breaker stayed open past the retry window")
        opened = orjson.loads(log_lines(sender, '"circuit breaker opened')[0])
        assert opened["why"] == "5 consecutive failures, the last: HTTP 500" and opened["webhook_id"] == dead


async def test_ordered_deliveries_held_by_the_breaker_keep_their_order(db, hs_settings, spawn):
    """A per_resource webhook whose endpoint fails until its breaker opens, then recovers: the heads the
    breaker holds keep their place, so each order's events still arrive in publish order (every request
    for event k before the first for k + 1), and no retry was used by a refusal."""
    orders, per_order = 10, 4
    async with Receiver() as receiver:
        shop, _ = await make_org(db, "Shop", stores=("s1",))
        hook, _ = await make_webhook(db, shop, receiver.url("/ordered"), event_types=["order.updated"],
                                     store_ids=["s1"], ordering="per_resource")
        receiver.set("/ordered", Behaviour(status=500))
        env = {"HOOKSTREAM_RETRY_DELAYS": "5s,10s,20s", "HOOKSTREAM_BREAKER_OPEN": "1s"}
        spawn("router", env=env)
        sender = spawn("sender", env=env)
        events = [make_event("order.updated", organization_id=shop, store_id="s1",
                             data={"order": {"id": f"ord_{r}", "total": f"{k}.00", "currency": "EUR"}},
                             event_id=f"evt_{r}_{k}")
                  for k in range(per_order) for r in range(orders)]
        await publish_events(hs_settings, events)
        await wait_for(lambda: log_lines(sender, "circuit breaker opened"), timeout_s=90, message="the breaker opened")
        await wait_for(lambda: db.fetchval("SELECT count(*) > 0 FROM deliveries WHERE webhook_id = $1"
                                           " AND last_error LIKE 'circuit breaker %'", hook),
                       timeout_s=30, message="a head held for the probe")
        receiver.set("/ordered", Behaviour(status=200))
        await wait_for(lambda: db.fetchval("SELECT count(*) = $2 FROM deliveries WHERE webhook_id = $1"
                                           " AND status = 'succeeded'", hook, orders * per_order),
                       timeout_s=150, message="every ordered delivery delivered")
        seq: dict[str, list[int]] = collections.defaultdict(list)
        for request in receiver.at("/ordered"):
            _, r, k = orjson.loads(request.body)["id"].split("_")
            seq[r].append(int(k))
        assert len(seq) == orders
        for r, ks in seq.items():
            assert ks == sorted(ks) and set(ks) == set(range(per_order)), f"ord_{r} out of order: {ks}"
        sent = await requests_per_event(receiver, "/ordered")
        rows = await db.fetch("SELECT event_id, attempts FROM deliveries WHERE webhook_id = $1", hook)
        assert {r["event_id"]: r["attempts"] for r in rows} == dict(sent)
        assert await db.fetchval("SELECT count(*) FROM resource_heads WHERE webhook_id = $1", hook) == 0


async def _routed_delivery(db, org: str, hook: str, event_id: str) -> DeliveryTask:
    seq = await db.fetchval(
        "INSERT INTO events (organization_id, event_id, event_type, store_id, occurred_at, body,"
        " source_topic, source_partition, source_offset)"
        " VALUES ($1, $2, 'order.created', 's1', now(), '{}', 'orders', 0, 0) RETURNING seq", org, event_id)
    delivery_id = await db.fetchval(
        "INSERT INTO deliveries (webhook_id, event_seq, event_id, event_type, store_id, in_flight, issued_attempt)"
        " VALUES ($1, $2, $3, 'order.created', 's1', true, 1) RETURNING id", hook, seq, event_id)
    return DeliveryTask(delivery_id=delivery_id, webhook_id=hook, organization_id=org, event_id=event_id,
                        event_type="order.created", store_id="s1", occurred_at="2026-12-01T00:00:00Z",
                        attempt=1, retry_index=0, manual=False, body="{}")


async def _task_the_pump_would_issue(db, delivery_id: int) -> DeliveryTask:
    row = await db.fetchrow(retries._SELECT_TASK + " WHERE d.id = $1", delivery_id)
    return retries.task_from_row(row, manual=False)


async def test_a_hold_is_recorded_without_an_attempt_and_the_log_says_until_when(db, database_url):
    """Against PostgreSQL: a breaker's hold keeps the attempt count and the retry index, and shows in
    ``last_error``; the pump's next task carries the window's start (the first attempt, else creation)."""
    org, _ = await make_org(db, "Org", stores=("s1",))
    hook, _ = await make_webhook(db, org, "https://example.com/hook", store_ids=["s1"])
    tried, fresh = await _routed_delivery(db, org, hook, "evt_tried"), await _routed_delivery(db, org, hook, "evt_new")
    policy = RetryPolicy((30.0, 300.0, 1800.0))
    first = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60)
    hold = Deferred("circuit breaker open: endpoint is failing; not sent", 10.0, breaker=True)
    async with open_pool(database_url, max_size=2) as pool:
        await write_outcomes(pool, [
            AttemptRecord(tried, first, 5.0, Failed(True, "HTTP 500", http_status=500), "retrying",
                          next_attempt_at=first),
            decide_outcome(fresh, hold, policy, first, 0.0, hold_slack_s=30.0)])
        retry = await _task_the_pump_would_issue(db, tried.delivery_id)
        assert (retry.attempt, retry.retry_index) == (2, 1)
        assert parse_validated_rfc3339(retry.window_from) == first  # the first attempt's start
        created = await db.fetchval("SELECT created_at FROM deliveries WHERE id = $1", fresh.delivery_id)
        assert parse_validated_rfc3339((await _task_the_pump_would_issue(db, fresh.delivery_id)).window_from) == created

        await db.execute("UPDATE deliveries SET in_flight = true, issued_attempt = attempts + 1")  # as the pump does
        now = dt.datetime.now(dt.UTC)
        held = decide_outcome(retry, hold, policy, now, 0.0, hold_slack_s=30.0)
        await write_outcomes(pool, [held])
        row = await db.fetchrow("SELECT * FROM deliveries WHERE id = $1", tried.delivery_id)
        assert (row["status"], row["attempts"], row["next_retry_index"], row["in_flight"]) == ("pending", 1, 1, False)
        assert row["next_attempt_at"] == held.next_attempt_at
        assert row["last_error"].startswith("circuit breaker open: endpoint is failing; not sent, waiting for its probe"
                                            "; next try at ")
        assert "still retry 1 of 3" in row["last_error"]
        assert await db.fetchval("SELECT count(*) FROM attempts WHERE delivery_id = $1", tried.delivery_id) == 1

        # another deferral (fair capacity) leaves the last error as it was
        await db.execute("UPDATE deliveries SET in_flight = true, issued_attempt = attempts + 1")
        await write_outcomes(pool, [decide_outcome(retry, Deferred("endpoint saturated", 1.0), policy, now, 0.0)])
        assert await db.fetchval("SELECT last_error FROM deliveries WHERE id = $1", tried.delivery_id) == (
            row["last_error"])

        # past the window, the next hold fails the delivery with an attempt saying why
        await db.execute("UPDATE deliveries SET in_flight = true, issued_attempt = attempts + 1")
        late = first + dt.timedelta(seconds=policy.window_s + 30.0)
        await write_outcomes(pool, [decide_outcome(retry, hold, policy, late, 0.0, hold_slack_s=30.0)])
        row = await db.fetchrow("SELECT * FROM deliveries WHERE id = $1", tried.delivery_id)
        assert (row["status"], row["attempts"], row["next_attempt_at"]) == ("failed", 2, None)
        assert row["last_error"].startswith("circuit breaker stayed open past the retry window")


async def test_a_release_makes_only_the_closed_webhooks_held_deliveries_due(db, database_url):
    """Against PostgreSQL: the release statement a closed breaker runs moves the webhook's holds to now
    and nothing else: not a real retry waiting out its backoff, not the waiting retry of a delivery whose
    manual redelivery the breaker refused (its last_error is the refusal), not a hold in flight again,
    not another webhook's hold."""
    org, _ = await make_org(db, "Org", stores=("s1",))
    hook, _ = await make_webhook(db, org, "https://example.com/hook", store_ids=["s1"])
    other, _ = await make_webhook(db, org, "https://example.com/other", store_ids=["s1"])
    policy = RetryPolicy((30.0, 300.0, 1800.0))
    now = dt.datetime.now(dt.UTC)
    hold = Deferred("circuit breaker open: endpoint is failing; not sent", 60.0, breaker=True)
    held, retrying, refused, in_flight = [await _routed_delivery(db, org, hook, f"evt_{n}")
                                          for n in ("held", "retrying", "refused", "in_flight")]
    elsewhere = await _routed_delivery(db, org, other, "evt_elsewhere")
    async with open_pool(database_url, max_size=2) as pool:
        await write_outcomes(pool, [
            decide_outcome(held, hold, policy, now, 0.0, hold_slack_s=30.0),
            decide_outcome(in_flight, hold, policy, now, 0.0, hold_slack_s=30.0),
            decide_outcome(elsewhere, hold, policy, now, 0.0, hold_slack_s=30.0),
            decide_outcome(retrying, Failed(True, "HTTP 500", http_status=500), policy, now, 0.0),
            decide_outcome(refused, Failed(True, "HTTP 500", http_status=500), policy, now, 0.0)])
        # a redelivery of ``refused`` while its retry waits: the open breaker refuses it (it fails, not held)
        await db.execute("UPDATE deliveries SET in_flight = true, issued_attempt = 2 WHERE id = $1", refused.delivery_id)
        manual = dataclasses.replace(refused, attempt=2, manual=True)
        await write_outcomes(pool, [decide_outcome(manual, hold, policy, now, 0.0, hold_slack_s=30.0)])
        await db.execute("UPDATE deliveries SET in_flight = true WHERE id = $1", in_flight.delivery_id)  # pumped
        before = {r["id"]: r for r in await db.fetch("SELECT id, status, last_error, next_attempt_at FROM deliveries")}
        assert before[refused.delivery_id]["status"] == "pending"
        assert before[refused.delivery_id]["last_error"] == "circuit breaker open: endpoint is failing; not sent"
        assert all(r["next_attempt_at"] > now for r in before.values())

        rows = await db.fetch(sender_module._RELEASE_HELD_SQL, [hook], sender_module.HELD_PATTERN)
        assert [(r["webhook_id"], r["n"]) for r in rows] == [(hook, 1)]
        after = {r["id"]: r["next_attempt_at"] for r in await db.fetch("SELECT id, next_attempt_at FROM deliveries")}
        assert after[held.delivery_id] <= await db.fetchval("SELECT now()")
        for unchanged in (retrying, refused, in_flight, elsewhere):
            assert after[unchanged.delivery_id] == before[unchanged.delivery_id]["next_attempt_at"]
