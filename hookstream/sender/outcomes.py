"""Recording outcomes: attempts in PostgreSQL and one record per attempt on the status topic, in batches.

``record()`` returns once the outcome is durable in both places; the caller commits the delivery's
offset only then. A batch is flushed when it reaches ``outcome_flush_max`` records or has waited
``outcome_flush_interval_ms``. A flush that fails transiently is retried with backoff (nothing is
dropped); meanwhile callers wait, in-flight work stays bounded and the consumer stops fetching. A
record PostgreSQL refuses for good is isolated from its batch (see ``_make_durable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable

import asyncpg
import orjson

from hookstream.core import liveness, metrics
from hookstream.core.errors import describe, is_transient, isolate_poison, retry_transient
from hookstream.core.kafka import RenewableProducer, discard
from hookstream.core.model import AttemptRecord, Deferred, Failed, Succeeded
from hookstream.core.states import AttemptStatus
from hookstream.core.tasks import cancel_and_wait

log = logging.getLogger(__name__)

EXIT_FLUSH_TIMEOUT_S = 15.0
HEARTBEAT = "outcome-flusher"
IDLE_BEAT_S = 5.0
MAX_STORED_ERROR_CHARS = 1000

# The delivery's status after an attempt. An automatic outcome: its own, except that a failure
# with a manual redelivery still waiting stays pending. A manual outcome (a redelivery or test
# send, one attempt that never schedules retries): a success is final and clears a waiting
# automatic retry; a failure leaves a waiting automatic retry or redelivery in place (pending), and
# leaves an ordered delivery that waits behind its resource's head waiting for its turn.
_NEW_STATUS = """CASE
    WHEN u.outcome = 'succeeded' THEN 'succeeded'
    WHEN u.manual AND d.ordered_waiting THEN 'pending'
    WHEN NOT u.manual AND u.outcome = 'retrying' THEN 'pending'
    WHEN NOT u.manual AND d.manual_due_at IS NOT NULL THEN 'pending'
    WHEN u.manual AND (d.next_attempt_at IS NOT NULL OR d.manual_due_at IS NOT NULL) THEN 'pending'
    ELSE 'failed' END"""

# One statement, so one round trip and atomic without an explicit transaction: insert the attempts
# (of deliveries that still exist: a webhook deleted mid-attempt takes its deliveries with it; once
# per attempt number: an at-least-once duplicate of an attempt is not recorded twice) and
# update each delivery's summary and schedule. Only automatic outcomes write the automatic retry
# schedule; every outcome ends the attempt in flight.
_RECORD_ATTEMPTS_SQL = f"""
WITH u AS (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::float8[], $5::int[], $6::text[],
                         $7::text[], $8::text[], $9::bool[], $10::timestamptz[], $11::int[], $12::text[],
                         $13::text[], $14::text[], $15::text[])
        AS u(id, attempt, started_at, duration_ms, http_status, error, response_excerpt, outcome, manual,
             next_attempt_at, next_retry_index, webhook_id, request_url, request_headers, response_headers)
), recorded AS (
    INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, http_status, error, response_excerpt,
                          outcome, request_url, request_headers, response_headers)
    SELECT id, attempt, started_at, duration_ms, http_status, error, response_excerpt, outcome,
           request_url, request_headers::jsonb, response_headers::jsonb FROM u
    -- ``d.id = ANY($1)`` as well: deliveries are partitioned by id, and the planner, which does not
    -- count the pruning it would do row by row, otherwise hashes every day's partition
    WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.id = u.id AND d.id = ANY($1::bigint[]))
    ON CONFLICT (delivery_id, attempt) DO NOTHING  -- a duplicate of an attempt already recorded
    RETURNING delivery_id, started_at, outcome
), counted AS (  -- the webhook's hourly health figures, from exactly the attempts recorded above
    INSERT INTO webhook_stats_hourly AS s (webhook_id, hour, shard, attempts, succeeded)
    SELECT w.webhook_id, date_trunc('hour', r.started_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', $16,
           count(*), count(*) FILTER (WHERE r.outcome = 'succeeded')
    FROM recorded r JOIN (SELECT DISTINCT id, webhook_id FROM u) w ON w.id = r.delivery_id
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (webhook_id, hour, shard) DO UPDATE
        SET attempts = s.attempts + EXCLUDED.attempts, succeeded = s.succeeded + EXCLUDED.succeeded
), latest AS (  -- one row per delivery (its newest attempt), so the UPDATE is not order-dependent
    SELECT DISTINCT ON (id) * FROM u ORDER BY id, attempt DESC
)
UPDATE deliveries AS d SET
    status = {_NEW_STATUS},
    attempts = GREATEST(d.attempts, u.attempt),
    last_attempt_at = u.started_at,
    last_http_status = u.http_status,
    last_error = u.error,
    finished_at = CASE WHEN {_NEW_STATUS} = 'pending' THEN NULL ELSE now() END,
    next_attempt_at = CASE WHEN NOT u.manual THEN u.next_attempt_at
                           WHEN u.outcome = 'succeeded' THEN NULL ELSE d.next_attempt_at END,
    next_retry_index = CASE WHEN NOT u.manual THEN u.next_retry_index
                            WHEN u.outcome = 'succeeded' THEN NULL ELSE d.next_retry_index END,
    next_manual = false,
    in_flight = false
FROM latest AS u
-- an outcome older than the attempt last issued (a replayed or duplicated task) changes nothing, and
-- once the first copy of an attempt has been recorded a duplicate copy changes nothing either. Not
-- ``d.in_flight``: the pump marks a delivery in flight in a transaction that commits after Kafka took
-- the task, and an outcome whose snapshot predates that commit would skip the row instead of waiting
-- for its lock (READ COMMITTED re-checks only rows that matched), leaving it in flight for ever.
WHERE d.id = u.id AND d.id = ANY($1::bigint[])  -- only the partitions of these ids (as above)
  AND d.attempts < u.attempt AND u.attempt >= COALESCE(d.issued_attempt, 0)
"""

_LOCK_RESOURCES_SQL = """
SELECT 1 FROM resource_heads h JOIN deliveries d ON d.webhook_id = h.webhook_id AND d.resource_key = h.resource_key
WHERE d.id = ANY($1::bigint[])
ORDER BY h.webhook_id, h.resource_key
FOR UPDATE OF h
"""

# A deferral puts the task back without using up an attempt: an automatic one into the automatic
# schedule (same retry index), a manual one into the manual request. A breaker's hold also says so
# in last_error (``note``: waiting for the probe, and until when); other deferrals leave it alone.
_DEFER_DELIVERIES_SQL = """
UPDATE deliveries AS d SET
    next_attempt_at = CASE WHEN u.manual THEN d.next_attempt_at ELSE u.next_attempt_at END,
    next_retry_index = CASE WHEN u.manual THEN d.next_retry_index ELSE u.retry_index END,
    manual_due_at = CASE WHEN u.manual THEN u.next_attempt_at ELSE d.manual_due_at END,
    last_error = COALESCE(u.note, d.last_error),
    next_manual = false,
    in_flight = false
FROM unnest($1::bigint[], $2::int[], $3::timestamptz[], $4::int[], $5::bool[], $6::text[])
    AS u(id, attempt, next_attempt_at, retry_index, manual, note)
WHERE d.id = u.id AND d.id = ANY($1::bigint[])  -- only the partitions of these ids (_RECORD_ATTEMPTS_SQL)
  AND d.attempts < u.attempt AND u.attempt >= COALESCE(d.issued_attempt, 0)
"""

def finishes_ordered(record: AttemptRecord) -> bool:
    """The record ends an ordered delivery, which releases the next one of its resource."""
    return record.task.ordered and record.status in (AttemptStatus.SUCCEEDED, AttemptStatus.FAILED)


async def write_outcomes(conn: asyncpg.Connection | asyncpg.Pool, records: list[AttemptRecord]) -> None:
    """Insert the attempts and update each delivery's summary and retry schedule, atomically: one
    statement, or a transaction around two when the batch also holds deferrals.

    Deferred deliveries get only their new schedule: no attempt row, and their attempt count,
    status and last outcome stay as they were.
    """
    deferred = [r for r in records if r.status == AttemptStatus.DEFERRED]
    records = [r for r in records if r.status != AttemptStatus.DEFERRED]
    if deferred and records and isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as one, one.transaction():
            await write_outcomes(one, deferred)
            await write_outcomes(one, records)
        return
    if deferred:
        await write_deferrals(conn, deferred)
    finishing = sorted({r.task.delivery_id for r in records if finishes_ordered(r)})
    if finishing and isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as one, one.transaction():
            await write_outcomes(one, records)
        return
    if finishing:
        # Ordered deliveries that finish release their successors under their resource's row lock
        # (deliveries_release_ordered): take those locks first, in (webhook, resource) order, the
        # order routers take them in, so a flush and a router batch never deadlock.
        await conn.execute(_LOCK_RESOURCES_SQL, finishing)
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
            [r.task.manual for r in records],
            [r.next_attempt_at for r in records],
            [r.task.retry_index + 1 if r.next_attempt_at else None for r in records],
            [r.task.webhook_id for r in records],
            [r.result.request.url if r.result.request else None for r in records],
            [_json_or_none(r.result.request.headers if r.result.request else None) for r in records],
            [_json_or_none(r.result.response_headers) for r in records],
            STATS_SHARD,
        )


# This process's rows of webhook_stats_hourly. A process flushes one batch at a time, so its rows are
# never contended: the senders' flushes do not queue behind one another on a busy webhook's row
# (which each would hold until its commit), and the API sums the shards.
STATS_SHARD = secrets.randbelow(32768)


def _json_or_none(value: object) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


async def write_deferrals(conn: asyncpg.Connection | asyncpg.Pool, deferred: list[AttemptRecord]) -> None:
    """Put deferred deliveries back in the schedule (one statement); a breaker's hold also writes its
    reason, which says until when, as the delivery's ``last_error``."""
    await conn.execute(
        _DEFER_DELIVERIES_SQL,
        [r.task.delivery_id for r in deferred], [r.task.attempt for r in deferred],
        [r.next_attempt_at for r in deferred], [r.task.retry_index for r in deferred],
        [r.task.manual for r in deferred],
        [r.result.reason if isinstance(r.result, Deferred) and r.result.breaker else None for r in deferred],
    )


class OutcomeSink:
    def __init__(self, pool: asyncpg.Pool, producer: RenewableProducer, status_topic: str, *,
                 flush_interval_ms: int, flush_max: int,
                 on_ordered_finished: Callable[[], None] | None = None) -> None:
        self._pool = pool
        self._producer = producer
        self._status_topic = status_topic
        self._interval_s = flush_interval_ms / 1000
        self._flush_max = flush_max
        self._on_ordered_finished = on_ordered_finished
        self._buffer: list[tuple[AttemptRecord, asyncio.Future]] = []
        # Outcomes are made durable in the order they are recorded: the first ``_durable`` of the
        # ``_recorded`` so far are (waiters: durable_through).
        self._recorded = 0
        self._durable = 0
        self._durable_waiters: list[tuple[int, asyncio.Future]] = []
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
        liveness.forget(HEARTBEAT)
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
        self._recorded += 1
        self._has_work.set()
        if len(self._buffer) >= self._flush_max:
            self._full.set()
        await future

    @property
    def recorded(self) -> int:
        """How many outcomes have been recorded so far (durable or not)."""
        return self._recorded

    async def durable_through(self, count: int) -> None:
        """Return once the first ``count`` outcomes ever recorded are durable."""
        if self._durable >= count:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._durable_waiters.append((count, waiter))
        await waiter

    def _made_durable(self, n: int) -> None:
        self._durable += n
        waiting = []
        for count, waiter in self._durable_waiters:
            if waiter.done():  # its waiter was cancelled
                continue
            if count > self._durable:
                waiting.append((count, waiter))
            else:
                waiter.set_result(None)
        self._durable_waiters = waiting

    async def _run(self) -> None:
        while True:
            liveness.beat(HEARTBEAT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._has_work.wait(), IDLE_BEAT_S)
            if not self._has_work.is_set():
                continue
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
        self._made_durable(len(batch))
        if self._on_ordered_finished is not None and any(finishes_ordered(r) for r in records):
            self._on_ordered_finished()
        metrics.FLUSH_BATCH_SIZE.observe(len(records))
        metrics.FLUSH_DURATION.observe(time.perf_counter() - started)
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _make_durable(self, records: list[AttemptRecord]) -> None:
        """Make a batch durable in both places, trying again until it is.

        The rows are written only after Kafka has acknowledged the batch's status records. A crash
        before the write leaves the attempts unrecorded, so they are replayed and their status records
        sent again (duplicates); a crash after it finds both durable. Never a recorded attempt without
        its status record.

        Transient failures (and any refusal by the status topic, which is infrastructure, not a
        tenant's record) are retried with capped backoff. A record PostgreSQL refuses for good is
        isolated (:func:`isolate_poison`) and recorded without its details, or dropped when its
        delivery no longer exists: one tenant's attempt never holds up the others' outcomes.
        """
        # deferrals are not attempts: no status record
        attempted = [r for r in records if r.status != AttemptStatus.DEFERRED]

        async def once() -> None:
            sends: list[asyncio.Future] = []
            try:
                sends = await self._producer.send_many(
                    self._status_topic, [(r.task.webhook_id.encode(), r.status_record()) for r in attempted])
                await self._producer.acked(sends)
                await isolate_poison(records, lambda part: write_outcomes(self._pool, list(part)),
                                     self._record_poison)
            finally:
                discard(sends)  # after success they are all done; after a failure they are retried

        # Everything is tried again: database refusals of a record are isolated inside ``once``, a
        # status-topic refusal is infrastructure, and anything else is a bug that must not wedge the sender.
        await retry_transient(once, what=f"recording {len(records)} outcomes", heartbeat=HEARTBEAT,
                              retryable=lambda _exc: True)

    async def _record_poison(self, record: AttemptRecord, exc: BaseException) -> None:
        """One outcome PostgreSQL refused for good: record it without the details the database refused
        (response excerpt, error text), or drop it with a log line when its delivery is gone."""
        extra = {"event_id": record.task.event_id, "webhook_id": record.task.webhook_id}
        if isinstance(exc, asyncpg.ForeignKeyViolationError):
            metrics.POISON_RECORDS.labels("outcomes", "dropped").inc()
            log.info("delivery deleted while its attempt was in flight (webhook deleted); outcome dropped",
                     extra=extra)
            return
        reduced = dataclasses.replace(record, result=reduced_result(record.result, exc))
        try:
            await write_outcomes(self._pool, [reduced])
        except Exception as again:
            if is_transient(again):
                raise
            metrics.POISON_RECORDS.labels("outcomes", "dropped").inc()
            log.error("outcome refused by PostgreSQL even without its details (%s); dropped", describe(again),
                      extra=extra)
            await self._end_attempt_unrecorded(record, again)
            return
        metrics.POISON_RECORDS.labels("outcomes", "recorded_reduced").inc()
        log.warning("outcome refused by PostgreSQL (%s); recorded without its details", describe(exc), extra=extra)

    async def _end_attempt_unrecorded(self, record: AttemptRecord, exc: BaseException) -> None:
        """Last resort for an outcome that cannot be stored at all: the delivery must not stay in
        flight with nothing scheduled, so its attempt ends as a failure that is retried (or, for a
        manual attempt, simply ends) with an error saying why."""
        try:
            await self._pool.execute(
                "UPDATE deliveries SET in_flight = false, last_error = $2,"
                " next_attempt_at = CASE WHEN $3 THEN next_attempt_at ELSE now() + interval '30 seconds' END,"
                # a manual attempt with nothing else waiting ends the delivery, saying why
                " status = CASE WHEN $3 AND next_attempt_at IS NULL AND manual_due_at IS NULL"
                "          AND NOT ordered_waiting THEN 'failed' ELSE status END,"
                " finished_at = CASE WHEN $3 AND next_attempt_at IS NULL AND manual_due_at IS NULL"
                "          AND NOT ordered_waiting THEN now() ELSE finished_at END"
                " WHERE id = $1 AND attempts < $4 AND issued_attempt = $4",
                record.task.delivery_id, f"outcome of attempt {record.task.attempt} could not be stored"
                f" ({describe(exc, 200)})".encode("ascii", "backslashreplace").decode("ascii"),
                record.task.manual, record.task.attempt)
        except Exception as final:
            if is_transient(final):
                raise
            log.error("could not end the unrecorded attempt (%s)", describe(final),
                      extra={"event_id": record.task.event_id, "webhook_id": record.task.webhook_id})


def reduced_result(result, exc: BaseException):
    """``result`` with no response excerpt and an ASCII error naming why the details are missing."""
    note = f"details not stored: PostgreSQL refused them ({describe(exc, 200)})"
    note = note.encode("ascii", "backslashreplace").decode("ascii")
    if isinstance(result, Failed):
        original = (result.error or "").encode("ascii", "backslashreplace").decode("ascii")[:300]
        return dataclasses.replace(result, error=f"{original} [{note}]", response_excerpt=None,
                                   response_headers=None)
    if isinstance(result, Succeeded):
        return dataclasses.replace(result, response_excerpt=None, response_headers=None)
    return result
