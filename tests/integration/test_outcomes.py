"""Writing a batch of outcomes to PostgreSQL: attempt rows and delivery summaries, all or nothing."""

from __future__ import annotations

import dataclasses
import datetime as dt

import asyncpg
import pytest

from hookstream.core.db import open_pool
from hookstream.core.model import AttemptRecord, Deferred, DeliveryTask, Failed, Succeeded
from hookstream.sender.outcomes import write_outcomes
from tests.support import make_org, make_webhook

pytestmark = pytest.mark.integration

STARTED = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


async def _deliveries(db: asyncpg.Connection, n: int) -> list[DeliveryTask]:
    org, _ = await make_org(db, "Org", stores=("s1",))
    hook, _ = await make_webhook(db, org, "https://example.com/hook", store_ids=["s1"])
    tasks = []
    for i in range(n):
        seq = await db.fetchval(
            "INSERT INTO events (organization_id, event_id, event_type, store_id, occurred_at, body,"
            " source_topic, source_partition, source_offset)"
            " VALUES ($1, $2, 'order.created', 's1', now(), '{}', 'orders', 0, $3) RETURNING seq",
            org, f"evt_{i}", i)
        delivery_id = await db.fetchval(
            "INSERT INTO deliveries (webhook_id, event_seq, event_id, event_type, store_id, in_flight, issued_attempt)"
            " VALUES ($1, $2, $3, 'order.created', 's1', true, 1) RETURNING id", hook, seq, f"evt_{i}")  # as routed
        tasks.append(DeliveryTask(delivery_id=delivery_id, webhook_id=hook, organization_id=org, event_id=f"evt_{i}",
                                  event_type="order.created", store_id="s1", occurred_at="2026-11-28T12:00:00Z",
                                  attempt=1, retry_index=0, manual=False, body="{}"))
    return tasks


async def test_a_mixed_batch_records_attempts_summaries_and_deferrals(db, database_url):
    ok, retrying, failed, deferred = await _deliveries(db, 4)
    later = STARTED + dt.timedelta(minutes=5)
    batch = [
        AttemptRecord(ok, STARTED, 12.5, Succeeded(http_status=204, response_excerpt="fine"), "succeeded"),
        AttemptRecord(retrying, STARTED, 30.0, Failed(True, "HTTP 503", http_status=503), "retrying",
                      next_attempt_at=later),
        AttemptRecord(failed, STARTED, 8.0, Failed(False, "HTTP 410", http_status=410), "failed"),
        AttemptRecord(deferred, STARTED, 0.0, Deferred("endpoint saturated", 60.0), "deferred",
                      next_attempt_at=later),
    ]
    async with open_pool(database_url, max_size=2) as pool:
        await write_outcomes(pool, batch)

    attempts = await db.fetch("SELECT delivery_id, attempt, http_status, error, response_excerpt, outcome,"
                              " duration_ms FROM attempts ORDER BY delivery_id")
    assert [(a["delivery_id"], a["outcome"], a["http_status"], a["error"], a["response_excerpt"], a["duration_ms"])
            for a in attempts] == [
        (ok.delivery_id, "succeeded", 204, None, "fine", 12.5),
        (retrying.delivery_id, "retrying", 503, "HTTP 503", None, 30.0),
        (failed.delivery_id, "failed", 410, "HTTP 410", None, 8.0),
    ]  # a deferral is not an attempt: no row
    rows = {r["id"]: r for r in await db.fetch("SELECT * FROM deliveries")}
    assert (rows[ok.delivery_id]["status"], rows[ok.delivery_id]["attempts"]) == ("succeeded", 1)
    assert rows[ok.delivery_id]["finished_at"] is not None and rows[ok.delivery_id]["next_attempt_at"] is None
    assert (rows[retrying.delivery_id]["status"], rows[retrying.delivery_id]["next_attempt_at"],
            rows[retrying.delivery_id]["next_retry_index"], rows[retrying.delivery_id]["finished_at"]) == (
        "pending", later, 1, None)
    assert (rows[failed.delivery_id]["status"], rows[failed.delivery_id]["last_error"]) == ("failed", "HTTP 410")
    assert (rows[deferred.delivery_id]["status"], rows[deferred.delivery_id]["attempts"],
            rows[deferred.delivery_id]["next_attempt_at"]) == ("pending", 0, later)


async def test_a_batch_that_fails_writes_nothing_not_even_its_deferrals(db, database_url):
    """A flush is retried whole after an error, so a partly written batch would duplicate attempt rows."""
    deferred, ok = await _deliveries(db, 2)
    later = STARTED + dt.timedelta(minutes=5)
    batch = [
        AttemptRecord(deferred, STARTED, 0.0, Deferred("endpoint saturated", 60.0), "deferred",
                      next_attempt_at=later),
        AttemptRecord(ok, STARTED, 12.5, Succeeded(http_status=200, response_excerpt=None), "succeeded"),
        # U+0000 in text: PostgreSQL refuses the whole statement
        AttemptRecord(ok, STARTED, 12.5, Succeeded(http_status=200, response_excerpt="ok\x00"), "succeeded"),
    ]
    async with open_pool(database_url, max_size=2) as pool:
        with pytest.raises(asyncpg.CharacterNotInRepertoireError):
            await write_outcomes(pool, batch)
    assert await db.fetchval("SELECT count(*) FROM attempts") == 0
    assert [tuple(r) for r in await db.fetch("SELECT status, attempts, next_attempt_at FROM deliveries")] == [
        ("pending", 0, None), ("pending", 0, None)]


async def test_a_stale_outcome_never_changes_a_delivery_whose_next_attempt_is_in_flight(db, database_url):
    """A replayed or duplicated attempt 1 arrives after the pump issued attempt 2: it is logged as an
    attempt, but the delivery stays in flight for attempt 2 (no success claimed, nothing rescheduled)."""
    [task] = await _deliveries(db, 1)
    first_failed = AttemptRecord(task, STARTED, 5.0, Failed(retryable=True, error="HTTP 500", http_status=500),
                                 "retrying", next_attempt_at=STARTED)
    async with open_pool(database_url, max_size=2) as pool:
        await write_outcomes(pool, [first_failed])
        # the pump issues attempt 2
        await db.execute("UPDATE deliveries SET in_flight = true, issued_attempt = attempts + 1,"
                         " next_attempt_at = NULL WHERE id = $1", task.delivery_id)
        stale_ok = AttemptRecord(task, STARTED, 5.0, Succeeded(http_status=200, response_excerpt=None), "succeeded")
        stale_defer = AttemptRecord(task, STARTED, 0.0, Deferred("busy", 1.0), "deferred", next_attempt_at=STARTED)
        await write_outcomes(pool, [stale_ok])
        await write_outcomes(pool, [stale_defer])
    row = await db.fetchrow("SELECT * FROM deliveries WHERE id = $1", task.delivery_id)
    assert (row["status"], row["in_flight"], row["issued_attempt"], row["next_attempt_at"]) == ("pending", True, 2, None)
    # one attempt row per attempt number: the duplicate of attempt 1 is not recorded twice
    assert await db.fetchval("SELECT count(*) FROM attempts WHERE delivery_id = $1", task.delivery_id) == 1


async def test_two_attempts_of_one_delivery_in_one_flush_leave_the_newest(db, database_url):
    [task] = await _deliveries(db, 1)
    second = dataclasses.replace(task, attempt=2, retry_index=1)
    await db.execute("UPDATE deliveries SET issued_attempt = 2 WHERE id = $1", task.delivery_id)
    batch = [AttemptRecord(second, STARTED, 5.0, Succeeded(http_status=200, response_excerpt=None), "succeeded"),
             AttemptRecord(task, STARTED, 5.0, Failed(retryable=True, error="HTTP 500", http_status=500), "retrying",
                           next_attempt_at=STARTED)]
    async with open_pool(database_url, max_size=2) as pool:
        await write_outcomes(pool, batch)
    row = await db.fetchrow("SELECT * FROM deliveries WHERE id = $1", task.delivery_id)
    assert (row["status"], row["attempts"], row["next_attempt_at"]) == ("succeeded", 2, None)


async def test_a_second_copy_of_an_attempt_never_overwrites_the_first(db, database_url):
    """A router replay or a pump re-send can put one attempt on the wire twice: the first outcome
    recorded ends it; the other copy's (here a 500 after a 200) is not applied."""
    [task] = await _deliveries(db, 1)
    async with open_pool(database_url, max_size=2) as pool:
        await write_outcomes(pool, [AttemptRecord(task, STARTED, 5.0, Succeeded(200, None), "succeeded")])
        await write_outcomes(pool, [AttemptRecord(task, STARTED, 5.0, Failed(retryable=True, error="HTTP 500",
                                                                             http_status=500),
                                                  "retrying", next_attempt_at=STARTED)])
    row = await db.fetchrow("SELECT * FROM deliveries WHERE id = $1", task.delivery_id)
    assert (row["status"], row["next_attempt_at"], row["last_http_status"], row["in_flight"]) == (
        "succeeded", None, 200, False)
