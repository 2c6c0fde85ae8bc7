"""Recording outcomes: attempts in PostgreSQL and one record per attempt on the status topic, in batches.

``record()`` returns once the outcome is durable in both places; the caller commits the delivery's
offset only then. A batch is flushed when it reaches ``outcome_flush_max`` records or has waited
``outcome_flush_interval_ms``. A failing flush is retried with backoff (nothing is dropped);
meanwhile callers wait, in-flight work stays bounded and the consumer stops fetching.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import asyncpg
from aiokafka.errors import KafkaError

from services.core import metrics
from services.core.db import TRANSIENT_DB_ERRORS
from services.core.kafka import RenewableProducer, discard
from services.core.model import AttemptRecord
from services.core.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_BACKOFF_START_S = 0.2
_BACKOFF_MAX_S = 5.0
EXIT_FLUSH_TIMEOUT_S = 15.0

# One statement, so one round trip and atomic without an explicit transaction: insert the attempts
# and update each delivery's summary and retry schedule.
_RECORD_ATTEMPTS_SQL = """
WITH u AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::float8[], $5::int[], $6::text[],
                         $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::int[])
        AS u(id, attempt, started_at, duration_ms, http_status, error, response_excerpt, outcome, status,
             next_attempt_at, next_retry_index)
), recorded AS (
    INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, http_status, error, response_excerpt,
                          outcome)
    SELECT id, attempt, started_at, duration_ms, http_status, error, response_excerpt, outcome FROM u
)
UPDATE deliveries AS d SET
    status = u.status,
    attempts = GREATEST(d.attempts, u.attempt),
    last_attempt_at = u.started_at,
    last_http_status = u.http_status,
    last_error = u.error,
    finished_at = CASE WHEN u.status = 'pending' THEN NULL ELSE now() END,
    next_attempt_at = u.next_attempt_at,
    next_retry_index = u.next_retry_index,
    next_manual = false
FROM u
WHERE d.id = u.id AND d.attempts <= u.attempt
"""

_DEFER_DELIVERIES_SQL = """
UPDATE deliveries AS d SET
    next_attempt_at = u.next_attempt_at,
    next_retry_index = u.retry_index,
    next_manual = u.manual
FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::int[], $5::bool[])
    AS u(id, attempt, next_attempt_at, retry_index, manual)
WHERE d.id = u.id AND d.attempts < u.attempt
"""

DELIVERY_STATUS = {"succeeded": "succeeded", "retrying": "pending", "failed": "failed"}


async def write_outcomes(conn: asyncpg.Connection | asyncpg.Pool, records: list[AttemptRecord]) -> None:
    """Insert the attempts and update each delivery's summary and retry schedule, atomically: one
    statement, or a transaction around two when the batch also holds deferrals.

    Deferred deliveries get only their new schedule: no attempt row, and their attempt count,
    status and last outcome stay as they were.
    """
    deferred = [r for r in records if r.status == "deferred"]
    records = [r for r in records if r.status != "deferred"]
    if deferred and records and isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as one, one.transaction():
            await write_outcomes(one, deferred)
            await write_outcomes(one, records)
        return
    if deferred:
        await conn.execute(
            _DEFER_DELIVERIES_SQL,
            [r.task.delivery_id for r in deferred], [r.task.attempt for r in deferred],
            [r.next_attempt_at for r in deferred], [r.task.retry_index for r in deferred],
            [r.task.manual for r in deferred],
        )
    if records:
        await conn.execute(
            _RECORD_ATTEMPTS_SQL,
            [r.task.delivery_id for r in records],
            [r.task.attempt for r in records],
            [r.started_at for r in records],
            [r.duration_ms for r in records],
            [r.http_status for r in records],
            [r.error for r in records],
            [r.result.response_excerpt for r in records],
            [r.status for r in records],
            [DELIVERY_STATUS[r.status] for r in records],
            [r.next_attempt_at for r in records],
            [r.task.retry_index + 1 if r.next_attempt_at else None for r in records],
        )


class OutcomeSink:
    def __init__(self, pool: asyncpg.Pool, producer: RenewableProducer, status_topic: str, *,
                 flush_interval_ms: int, flush_max: int) -> None:
        self._pool = pool
        self._producer = producer
        self._status_topic = status_topic
        self._interval_s = flush_interval_ms / 1000
        self._flush_max = flush_max
        self._buffer: list[tuple[AttemptRecord, asyncio.Future]] = []
        self._has_work = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> OutcomeSink:
        self._task = asyncio.create_task(self._run(), name="outcome-flusher")
        return self

    async def __aexit__(self, *exc_info) -> None:
        """Flush whatever is buffered, then stop; gives up after ``EXIT_FLUSH_TIMEOUT_S`` (for example
        while Kafka or PostgreSQL is down): what was not flushed is not committed, so it is replayed."""
        await cancel_and_wait(self._task)
        try:
            async with asyncio.timeout(EXIT_FLUSH_TIMEOUT_S):
                while self._buffer:
                    await self._flush_once()
        except TimeoutError:
            log.warning("gave up flushing %d outcomes at shutdown; their deliveries will be replayed",
                        len(self._buffer))

    async def record(self, record: AttemptRecord) -> None:
        future = asyncio.get_running_loop().create_future()
        self._buffer.append((record, future))
        self._has_work.set()
        if len(self._buffer) >= self._flush_max:
            self._full.set()
        await future

    async def _run(self) -> None:
        while True:
            await self._has_work.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self._interval_s)
            await self._flush_once()

    async def _flush_once(self) -> None:
        batch, self._buffer = self._buffer[: self._flush_max], self._buffer[self._flush_max:]
        if not self._buffer:
            self._has_work.clear()
            self._full.clear()
        if not batch:
            return
        records = [r for r, _ in batch]
        started = time.perf_counter()
        await self._make_durable(records)
        metrics.FLUSH_BATCH_SIZE.observe(len(records))
        metrics.FLUSH_DURATION.observe(time.perf_counter() - started)
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _make_durable(self, records: list[AttemptRecord]) -> None:
        """Make a batch durable in both places, retrying until it is.

        The rows are written only after Kafka has acknowledged the batch's status records. A crash
        before the write leaves the attempts unrecorded, so they are replayed and their status records
        sent again (duplicates); a crash after it finds both durable. Never a recorded attempt without
        its status record.
        """
        attempted = [r for r in records if r.status != "deferred"]  # deferrals are not attempts: no status record
        delay = _BACKOFF_START_S
        while True:
            sends: list[asyncio.Future] = []
            try:
                for r in attempted:
                    sends.append(await self._producer.send(
                        self._status_topic, value=r.status_record(), key=r.task.webhook_id.encode()))
                await self._producer.acked(sends)
                await write_outcomes(self._pool, records)
                return
            except (*TRANSIENT_DB_ERRORS, KafkaError, TimeoutError) as exc:
                log.warning("recording %d outcomes failed (%s: %s); retrying in %.1fs",
                            len(records), type(exc).__name__, exc, delay)
            finally:
                discard(sends)  # after success they are all done; after a failure they are retried
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)
