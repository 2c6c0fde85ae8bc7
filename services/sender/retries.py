"""The durable retry scheduler: deliveries waiting for their next attempt live in PostgreSQL.

A failed attempt's outcome sets ``deliveries.next_attempt_at`` in the same transaction that records
it, so no waiting retry exists only in memory. Every sender replica runs a pump that claims due
rows (``FOR UPDATE SKIP LOCKED``: replicas never claim the same row), puts them back on the
delivery topic and clears the schedule in the same transaction once Kafka has acknowledged them:
a crash in between re-sends (a possible duplicate), never loses. A retry waiting 30 minutes is
just a row, so it blocks nothing. Redeliveries and test sends from the API use the same path.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from aiokafka.errors import KafkaError

from services.core import metrics
from services.core.db import TRANSIENT_DB_ERRORS
from services.core.kafka import RenewableProducer
from services.core.model import DeliveryTask

log = logging.getLogger(__name__)

PUMP_BATCH = 500
PUMP_IDLE_S = 0.1
BACKLOG_REFRESH_S = 5.0

_CLAIM_DUE_SQL = """
SELECT d.id, d.webhook_id, d.event_id, d.event_type, d.store_id, d.attempts, d.next_retry_index,
       d.next_manual, e.organization_id, e.occurred_at, e.body
FROM deliveries d JOIN events e ON e.seq = d.event_seq
WHERE d.next_attempt_at <= now()
ORDER BY d.next_attempt_at
LIMIT $1
FOR UPDATE OF d SKIP LOCKED
"""

_BACKLOG_SQL = """
SELECT next_retry_index AS tier, count(*) AS n FROM deliveries
WHERE next_attempt_at IS NOT NULL GROUP BY next_retry_index
"""


def _iso(value) -> str:
    return value.isoformat().replace("+00:00", "Z")


def task_from_row(row: asyncpg.Record) -> DeliveryTask:
    return DeliveryTask(
        delivery_id=row["id"], webhook_id=row["webhook_id"], organization_id=row["organization_id"],
        event_id=row["event_id"], event_type=row["event_type"], store_id=row["store_id"],
        occurred_at=_iso(row["occurred_at"]), attempt=row["attempts"] + 1,
        retry_index=row["next_retry_index"] or 0, manual=row["next_manual"], body=row["body"],
    )


async def pump_due_retries(pool: asyncpg.Pool, producer: RenewableProducer, delivery_topic: str) -> int:
    """Move one batch of due deliveries back onto the delivery topic; returns how many."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(_CLAIM_DUE_SQL, PUMP_BATCH)
        if not rows:
            return 0
        tasks = [task_from_row(row) for row in rows]
        sends = [await producer.send(delivery_topic, value=t.encode(), key=t.kafka_key) for t in tasks]
        await producer.acked(sends)
        await conn.execute("UPDATE deliveries SET next_attempt_at = NULL WHERE id = ANY($1::bigint[])",
                           [t.delivery_id for t in tasks])
    return len(tasks)


async def run_retry_pump(pool: asyncpg.Pool, producer: RenewableProducer, delivery_topic: str,
                         stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    next_backlog = 0.0
    while not stop.is_set():
        try:
            moved = await pump_due_retries(pool, producer, delivery_topic)
            if loop.time() >= next_backlog:
                next_backlog = loop.time() + BACKLOG_REFRESH_S
                async with pool.acquire() as conn:
                    rows = await conn.fetch(_BACKLOG_SQL)
                for tier in ("1", "2", "3"):
                    metrics.RETRY_BACKLOG.labels(tier).set(0)
                for row in rows:
                    metrics.RETRY_BACKLOG.labels(str(row["tier"] or 0)).set(row["n"])
        except (*TRANSIENT_DB_ERRORS, KafkaError, TimeoutError) as exc:
            log.warning("retry pump failed (%s: %s); trying again shortly", type(exc).__name__, exc)
            moved = 0
            await asyncio.sleep(1.0)
        if moved < PUMP_BATCH:
            try:
                await asyncio.wait_for(stop.wait(), PUMP_IDLE_S)
            except TimeoutError:
                pass
