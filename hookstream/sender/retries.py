"""The durable retry scheduler: deliveries waiting for their next attempt live in PostgreSQL.

A failed attempt's outcome sets ``deliveries.next_attempt_at`` in the same transaction that records
it, so no waiting retry exists only in memory. Every sender replica runs a pump that claims due
rows (``FOR UPDATE SKIP LOCKED``: replicas never claim the same row), puts them back on the
delivery topic and clears the schedule in the same transaction once Kafka has acknowledged them:
a crash in between re-sends (a possible duplicate), never loses. A retry waiting 30 minutes is
just a row, so it blocks nothing. Redeliveries and test sends from the API use the same path, as
``manual_due_at`` requests kept apart from the automatic schedule; a delivery with an attempt in
flight (``in_flight``) is never claimed, so a redelivery waits for that attempt to finish and the
two never overwrite each other's schedule.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from hookstream.core import liveness, metrics
from hookstream.core.deliveries import fail_undeliverable
from hookstream.core.errors import Stopped, describe, retry_transient
from hookstream.core.kafka import RenewableProducer, send_isolated
from hookstream.core.logs import loggable
from hookstream.core.model import DeliveryTask, format_rfc3339
from hookstream.core.tasks import wait_for_any

log = logging.getLogger(__name__)

PUMP_BATCH = 500
# After a pass that found nothing due the pump waits PUMP_IDLE_S, doubling up to PUMP_IDLE_MAX_S while
# nothing is due: an idle sender then asks PostgreSQL once a second instead of ten times, and a due
# retry or a manual redelivery starts at most PUMP_IDLE_MAX_S late (retries are scheduled seconds to
# hours ahead). Any pass that moves something resets the wait.
PUMP_IDLE_S = 0.1
PUMP_IDLE_MAX_S = 1.0
BACKLOG_REFRESH_S = 5.0
HEARTBEAT = "retry-pump"

# window_from: when the delivery's retry window began (its first attempt, else its creation), which
# bounds how long an open circuit breaker may hold it back; one index probe per claimed row
# (attempts_delivery), in the pump's batch statement, none on the sender's path.
_SELECT_TASK = """
SELECT d.id, d.webhook_id, d.event_id, d.event_type, d.store_id, d.attempts, d.next_retry_index,
       d.resource_key IS NOT NULL AS ordered, e.organization_id, e.occurred_at, e.body,
       COALESCE((SELECT a.started_at FROM attempts a WHERE a.delivery_id = d.id ORDER BY a.attempt LIMIT 1),
                d.created_at) AS window_from
FROM deliveries d JOIN events e ON e.seq = d.event_seq
"""
# Due manual requests (redeliveries, test sends: few, and a person waits for them; then bulk
# recoveries, which are spread out at their rate) first, up to a share of the batch, so a backlog of
# automatic retries never starves them; then due automatic
# retries (a pulled-forward retry is one of them). Never a delivery with an attempt in flight, so
# one delivery never has two attempts at once.
PUMP_MANUAL_SHARE = PUMP_BATCH // 5
_CLAIM_DUE_MANUAL_SQL = _SELECT_TASK + """
WHERE d.manual_due_at <= now() AND NOT d.in_flight
ORDER BY d.recovery_id IS NOT NULL, d.manual_due_at  -- single redeliveries and test sends before bulk recoveries
LIMIT $1
FOR UPDATE OF d SKIP LOCKED
"""
_CLAIM_DUE_RETRIES_SQL = _SELECT_TASK + """
WHERE d.next_attempt_at <= now() AND NOT d.in_flight AND NOT (d.id = ANY($2::bigint[]))
ORDER BY d.next_attempt_at
LIMIT $1
FOR UPDATE OF d SKIP LOCKED
"""
_ISSUED_SQL = """
UPDATE deliveries SET in_flight = true, issued_attempt = attempts + 1,
    next_attempt_at = CASE WHEN id = ANY($1::bigint[]) THEN NULL ELSE next_attempt_at END,
    manual_due_at = CASE WHEN id = ANY($2::bigint[]) THEN NULL ELSE manual_due_at END
WHERE id = ANY($1::bigint[]) OR id = ANY($2::bigint[])
"""

# Ordered resources whose head is not an unfinished delivery (a router that lost a race with a
# replay of the same record during a rebalance can leave one): released as if the head had
# finished, so no resource waits for ever. Normally there are none.
_STALE_HEADS_SQL = """
SELECT h.webhook_id, h.resource_key FROM resource_heads h
WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = h.head_delivery_id AND d.status = 'pending')
LIMIT 100
FOR UPDATE OF h SKIP LOCKED
"""
_RELEASE_SQL = """
SELECT release_resource(u.webhook_id, u.resource_key) FROM unnest($1::text[], $2::text[]) AS u(webhook_id, resource_key)
"""

_BACKLOG_SQL = """
SELECT next_retry_index AS tier, count(*) AS n FROM deliveries
WHERE next_attempt_at IS NOT NULL GROUP BY next_retry_index
"""


def task_from_row(row: asyncpg.Record, *, manual: bool) -> DeliveryTask:
    return DeliveryTask(
        delivery_id=row["id"], webhook_id=row["webhook_id"], organization_id=row["organization_id"],
        event_id=row["event_id"], event_type=row["event_type"], store_id=row["store_id"],
        occurred_at=format_rfc3339(row["occurred_at"]), attempt=row["attempts"] + 1,
        retry_index=0 if manual else row["next_retry_index"] or 0, manual=manual, body=row["body"],
        ordered=row["ordered"], window_from=format_rfc3339(row["window_from"]),
    )


async def pump_due_retries(pool: asyncpg.Pool, producer: RenewableProducer, delivery_topic: str) -> int:
    """Move one batch of due deliveries back onto the delivery topic; returns how many.

    A task Kafka refuses for good (too large for the topic's limit) fails its delivery, saying why,
    instead of being claimed again forever; a transient refusal rolls the claim back.
    """
    async with pool.acquire() as conn, conn.transaction():
        manual = await conn.fetch(_CLAIM_DUE_MANUAL_SQL, PUMP_MANUAL_SHARE)
        automatic = await conn.fetch(_CLAIM_DUE_RETRIES_SQL, PUMP_BATCH - len(manual), [r["id"] for r in manual])
        if not automatic and not manual:
            return 0
        tasks = ([task_from_row(row, manual=False) for row in automatic]
                 + [task_from_row(row, manual=True) for row in manual])
        results = await send_isolated(producer, delivery_topic, [(t.kafka_key, t.encode()) for t in tasks])
        refused = [(task.delivery_id, f"Kafka refused the delivery task: {describe(exc)}")
                   for task, exc in zip(tasks, results, strict=True) if exc is not None]
        await conn.execute(_ISSUED_SQL, [t.delivery_id for t in tasks if not t.manual],
                           [t.delivery_id for t in tasks if t.manual])
        if refused:
            await fail_undeliverable(conn, refused)
            metrics.POISON_RECORDS.labels("retry_pump", "failed").inc(len(refused))
            log.error("%d delivery tasks refused by Kafka; their deliveries are marked failed", len(refused))
    # once committed: the operator's line for each delivery that ended failed
    for task, exc in zip(tasks, results, strict=True):
        if exc is not None:
            log.info("delivery failed", extra={
                "webhook_id": task.webhook_id, "organization_id": loggable(task.organization_id),
                "event_id": loggable(task.event_id), "event_type": loggable(task.event_type),
                "attempts": task.attempt - 1, "error": loggable(f"Kafka refused the delivery task: {describe(exc)}")})
    return len(tasks)


async def run_retry_pump(pool: asyncpg.Pool, producer: RenewableProducer, delivery_topic: str,
                         stop: asyncio.Event, *, wake: asyncio.Event | None = None) -> None:
    """Pump due deliveries until ``stop`` is set. Outages are waited out (``retry_transient``); a
    permanent error stops the pump loudly (its heartbeat then goes stale and ``/healthz`` fails).
    ``wake`` set (an ordered delivery finished and released its successor) ends an idle wait early."""
    wake = wake or asyncio.Event()
    loop = asyncio.get_running_loop()
    next_backlog = 0.0
    idle_s = PUMP_IDLE_S / 2

    async def pump_once() -> int:
        nonlocal next_backlog
        moved = await pump_due_retries(pool, producer, delivery_topic)
        if loop.time() >= next_backlog:
            next_backlog = loop.time() + BACKLOG_REFRESH_S
            async with pool.acquire() as conn:
                rows = await conn.fetch(_BACKLOG_SQL)
                async with conn.transaction():
                    stale = await conn.fetch(_STALE_HEADS_SQL)
                    if stale:
                        await conn.execute(_RELEASE_SQL, [r["webhook_id"] for r in stale],
                                           [r["resource_key"] for r in stale])
                        log.warning("released %d ordered resources whose head delivery was gone", len(stale))
                        moved += len(stale)
            for tier in ("0", "1", "2", "3"):  # 0: deferred first attempts
                metrics.RETRY_BACKLOG.labels(tier).set(0)
            for row in rows:
                metrics.RETRY_BACKLOG.labels(str(row["tier"] or 0)).set(row["n"])
        return moved

    while not stop.is_set():
        liveness.beat(HEARTBEAT)
        try:
            moved = await retry_transient(pump_once, what="retry pump", stop=stop, heartbeat=HEARTBEAT,
                                          start_s=1.0)
        except Stopped:
            break
        except Exception:
            # The heartbeat is left to go stale: /healthz fails and the process is restarted.
            log.exception("retry pump stopped by a permanent error; /healthz will fail")
            raise
        idle_s = PUMP_IDLE_S if moved else min(idle_s * 2, PUMP_IDLE_MAX_S)
        if moved < PUMP_BATCH and not wake.is_set():
            await wait_for_any(stop, wake, within_s=idle_s)
        if wake.is_set():
            wake.clear()
            idle_s = PUMP_IDLE_S
    liveness.forget(HEARTBEAT)  # stopped on purpose
