"""Writing a batch of outcomes to PostgreSQL: attempt rows and delivery summaries, all or nothing."""

from __future__ import annotations

import datetime as dt

import asyncpg
import pytest

from services.core.db import open_pool
from services.core.model import AttemptRecord, Deferred, DeliveryTask, Failed, Succeeded
from services.sender.outcomes import write_outcomes
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
            "INSERT INTO deliveries (webhook_id, event_seq, event_id, event_type, store_id)"
            " VALUES ($1, $2, $3, 'order.created', 's1') RETURNING id", hook, seq, f"evt_{i}")
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
