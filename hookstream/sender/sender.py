"""The sender: deliveries in, HTTP attempts out, outcomes recorded.

Sender._consume (delivery topic) -> _deliver -> attempt -> EndpointGates.call -> post_webhook ->
decide_outcome -> OutcomeSink.record (PostgreSQL + status topic) -> OffsetTracker.finished -> commit.
Whatever ``attempt`` raises becomes a failed, retryable attempt: every delivery reaches an outcome.

Offset-commit design: many attempts run at once, within a partition too, so a partition's offsets
finish out of order. The tracker keeps each partition's in-flight offsets; the committable offset
is the lowest one still in flight (or one past the last fetched). An offset leaves the in-flight
set only after its outcome (and, on failure, its retry schedule) is durable in PostgreSQL and on
the status topic. Commits run every ``COMMIT_INTERVAL_S`` and on partition revocation, after the
revoked partitions' in-flight attempts finish. A crash replays from the last commit; records that
predate this replica's assignment of their partition are checked against the attempt counts in
PostgreSQL (one query per fetch), so attempts already recorded are skipped and only those in
flight at the crash are made again: duplicates are possible, losses are not. Records at or past
the partition's high watermark as first seen after the assignment were never fetched by the previous
owner (it stopped before this replica got the partition), so they skip the check.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import random
import time
from collections.abc import Callable

import aiohttp
import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from hookstream.core import liveness, metrics
from hookstream.core.errors import describe, retry_transient
from hookstream.core.kafka import (
    commit_offsets,
    make_consumer,
    open_producer,
)
from hookstream.core.logs import LogSampler, loggable
from hookstream.core.model import (
    AttemptRecord,
    AttemptResult,
    BadTaskError,
    Deferred,
    DeliveryTask,
    Failed,
    Succeeded,
    format_rfc3339,
    parse_validated_rfc3339,
)
from hookstream.core.retry import RetryPolicy
from hookstream.core.settings import Settings
from hookstream.core.states import AttemptStatus, BreakerState
from hookstream.core.tasks import cancel_and_wait, wait_for_any
from hookstream.core.topics import apply_topic_specs, topic_specs
from hookstream.core.webhooks import Webhook, WebhookDirectory
from hookstream.sender.endpoints import HOLD_NOTE_PREFIX, EndpointGates
from hookstream.sender.http import make_session, post_webhook, storable_error
from hookstream.sender.offsets import OffsetTracker
from hookstream.sender.outcomes import OutcomeSink
from hookstream.sender.retries import run_retry_pump

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 0.2
# A webhook's breaker holds are released on its first close; a close soon after a release waits this
# long, doubling with each release of the streak, up to the open period (Sender._release_held).
RELEASE_BACKOFF_START_S = 1.0
HEARTBEAT = "sender"
FETCH_MAX_RECORDS = 500
# Failed attempts that will be retried are logged at INFO at most this often per sender; the rest at
# DEBUG, with one line saying how many were suppressed (a failing endpoint cannot fill the disk).
RETRY_LOG_LIMIT = 20
RETRY_LOG_INTERVAL_S = 60.0

# The claim an ordered delivery's automatic attempt takes just before it is POSTed (0004_ordering.sql):
# another copy of the same attempt (Kafka is at least once) is not sent while it holds, nor once
# the attempt is recorded. It holds for longer than one POST can last (the request timeout).
_CLAIM_ORDERED_SQL = """
UPDATE deliveries SET sending_attempt = $2, sending_until = now() + make_interval(secs => $3)
WHERE id = $1 AND status = 'pending' AND NOT ordered_waiting AND attempts < $2
  AND (sending_attempt IS DISTINCT FROM $2 OR sending_until < now())
RETURNING id
"""


# How a hold's note (the held delivery's last_error) goes on after the breaker's reason: a manual
# attempt the breaker refused fails with the reason alone, so its delivery's waiting retry keeps its time.
HOLD_WAITING = ", waiting for its probe; next try at "
# Breakers that closed release their webhooks' deliveries held for the probe (their last_error is
# a hold's note, HELD_PATTERN): due now, rather than at the probe time.
HELD_PATTERN = f"{HOLD_NOTE_PREFIX}%{HOLD_WAITING}%"
_RELEASE_HELD_SQL = """
WITH released AS (
    UPDATE deliveries SET next_attempt_at = now()
    WHERE webhook_id = ANY($1::text[]) AND status = 'pending' AND NOT in_flight AND next_attempt_at > now()
      AND last_error LIKE $2
    RETURNING webhook_id
)
SELECT webhook_id, count(*) AS n FROM released GROUP BY webhook_id ORDER BY webhook_id
"""


class _ClaimRefused(Exception):
    """Another copy of this ordered attempt is being sent, or the attempt is no longer due."""


def decide_outcome(task: DeliveryTask, result: AttemptResult, policy: RetryPolicy, started_at: dt.datetime,
                   duration_ms: float, *, hold_slack_s: float = 0.0) -> AttemptRecord:
    """Turn an attempt's result into its durable record: succeeded, retrying (with when), failed, or
    deferred (put back without an attempt).

    A breaker's hold (a :class:`Deferred` with ``breaker``) keeps the delivery's retry index: it waits
    for the probe, but not past :meth:`RetryPolicy.hold_deadline` (its retry window plus
    ``hold_slack_s``): it comes back by then at the latest, and a hold after it fails the delivery.
    A manual attempt is never held: refused, it fails at once (one attempt, as always).
    """
    if isinstance(result, Succeeded):
        return AttemptRecord(task, started_at, duration_ms, result, AttemptStatus.SUCCEEDED)
    if isinstance(result, Deferred):
        if result.breaker:
            return _decide_hold(task, result, policy, started_at, duration_ms, hold_slack_s)
        record = AttemptRecord(task, started_at, duration_ms, result, AttemptStatus.DEFERRED)
        jitter = random.uniform(0, result.delay_s / 2)
        return dataclasses.replace(record, next_attempt_at=record.finished_at + dt.timedelta(
            seconds=result.delay_s + jitter))
    delay_s = None if task.manual else policy.next_delay_s(
        task.retry_index, retryable=result.retryable, retry_after_s=result.retry_after_s)
    if delay_s is None:
        return AttemptRecord(task, started_at, duration_ms, result, AttemptStatus.FAILED)
    record = AttemptRecord(task, started_at, duration_ms, result, AttemptStatus.RETRYING)
    return dataclasses.replace(record, next_attempt_at=record.finished_at + dt.timedelta(seconds=delay_s))


def _decide_hold(task: DeliveryTask, held: Deferred, policy: RetryPolicy, started_at: dt.datetime,
                 duration_ms: float, slack_s: float) -> AttemptRecord:
    if task.manual:
        refused = Failed(retryable=False, error=held.reason, sent=False)
        return AttemptRecord(task, started_at, duration_ms, refused, AttemptStatus.FAILED)
    window_from = started_at
    if task.window_from is not None:
        with contextlib.suppress(ValueError):
            window_from = min(started_at, parse_validated_rfc3339(task.window_from))
    deadline = policy.hold_deadline(window_from, slack_s)
    if started_at >= deadline:
        expired = Failed(retryable=False, sent=False, error=(
            f"circuit breaker stayed open past the retry window ({policy.window_s + slack_s:g}s after"
            f" {format_rfc3339(window_from, timespec='milliseconds')}); not sent"))
        return AttemptRecord(task, started_at, duration_ms, expired, AttemptStatus.FAILED)
    # Spread like the fair-capacity deferrals, but back by the deadline at the latest.
    finished_at = started_at + dt.timedelta(milliseconds=duration_ms)
    due = min(finished_at + dt.timedelta(seconds=held.delay_s + random.uniform(0, held.delay_s / 2)), deadline)
    which = f"retry {task.retry_index} of {policy.max_retries}" if task.retry_index else "the first attempt"
    shown = dataclasses.replace(held, reason=f"{held.reason}{HOLD_WAITING}"
                                             f"{format_rfc3339(due, timespec='milliseconds')}, still {which}")
    return AttemptRecord(task, started_at, duration_ms, shown, AttemptStatus.DEFERRED, next_attempt_at=due)


def make_sender_consumer(settings: Settings) -> AIOKafkaConsumer:
    """The delivery-topic consumer. The group waits for this replica's revoke drain (up to
    ``drain_timeout_s``, plus room for the commit) before it hands the partitions on; with the default
    rebalance timeout (the 10 s session timeout) a drain of up to 20 s would be cut short."""
    return make_consumer(settings.kafka_bootstrap_servers, settings.sender_group,
                         rebalance_timeout_ms=int((settings.drain_timeout_s + 10) * 1000))


class Sender:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, directory: WebhookDirectory,
                 session: aiohttp.ClientSession, sink: OutcomeSink,
                 wake_pump: Callable[[], None] | None = None) -> None:
        self._settings = settings
        self._pool = pool
        self._directory = directory
        self._session = session
        self._sink = sink
        self._policy = RetryPolicy(settings.retry_delays_s, settings.retry_jitter_ratio)
        self._gates = EndpointGates(
            max_concurrency=settings.endpoint_max_concurrency, max_queued=settings.endpoint_max_queued,
            failure_threshold=settings.breaker_failure_threshold, open_s=settings.breaker_open_s,
            max_in_flight=settings.sender_max_in_flight, on_close=self._breaker_closed)
        self._wake_pump = wake_pump
        # Per webhook whose breaker closed since its last release, how many outcomes had been recorded
        # by its latest close (its holds are among them).
        self._closed: dict[str, int] = {}
        self._closed_signal = asyncio.Event()
        # Per webhook released lately: when, and how many releases in a row followed one another
        # closely (the back-off's exponent).
        self._released: dict[str, tuple[float, int]] = {}
        self._tracker = OffsetTracker()
        self._retry_lines = LogSampler(RETRY_LOG_LIMIT, RETRY_LOG_INTERVAL_S)
        self._tasks: dict[asyncio.Task, TopicPartition] = {}
        self._capacity = asyncio.Event()
        self._capacity.set()
        # Per assigned partition: the offset below which a record may have been fetched by the
        # partition's previous owner (the high watermark first seen after the assignment).
        self._replay_horizon: dict[TopicPartition, int] = {}
        self._horizons_unknown = False

    async def run(self, stop: asyncio.Event) -> None:
        consumer = make_sender_consumer(self._settings)
        consumer.subscribe([self._settings.delivery_topic], listener=_DrainOnRevoke(self, consumer))
        await consumer.start()
        committer = asyncio.create_task(self._commit_periodically(consumer, stop), name="sender-commit")
        releaser = asyncio.create_task(self._release_held(), name="sender-release-held")
        try:
            await self._consume(consumer, stop)
            # Drain: no more fetching; let what is in flight finish and be recorded, then commit.
            await self._wait_for_tasks(set(self._tasks), self._settings.drain_timeout_s)
            await self._commit(consumer, None)
        finally:
            liveness.forget(HEARTBEAT)
            liveness.forget("sender-commit")
            await cancel_and_wait(committer)
            await cancel_and_wait(releaser)
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await consumer.stop()

    async def _consume(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        limit = self._settings.sender_max_in_flight
        while not stop.is_set():
            liveness.beat(HEARTBEAT)
            room = limit - len(self._tasks)
            if room <= 0:
                self._capacity.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._capacity.wait(), 0.5)
                continue
            batches = await consumer.getmany(timeout_ms=100, max_records=min(room, FETCH_MAX_RECORDS))
            if self._horizons_unknown:
                self._note_horizons(consumer)
            fetched: list[tuple[TopicPartition, int, DeliveryTask]] = []
            maybe_replayed: list[DeliveryTask] = []
            for tp, messages in batches.items():
                # Only a record the partition's previous owner could have fetched can have been worked
                # on already (a replay); newer ones need no database check.
                horizon = self._replay_horizon.get(tp)
                for message in messages:
                    self._tracker.started(tp, message.offset)
                    try:
                        task = DeliveryTask.decode(message.value)
                        fetched.append((tp, message.offset, task))
                        if horizon is None or message.offset < horizon:
                            maybe_replayed.append(task)
                    except BadTaskError as exc:
                        log.error("skipping unreadable delivery task at %s[%d]@%d: %s",
                                  tp.topic, tp.partition, message.offset, exc)
                        self._tracker.finished(tp, message.offset)
            if not fetched:
                continue
            done = await self._already_attempted(maybe_replayed) if maybe_replayed else set()
            for tp, offset, task in fetched:
                if (task.delivery_id, task.attempt) in done:
                    metrics.REPLAYS_SKIPPED.inc()
                    self._tracker.finished(tp, offset)
                    continue
                job = asyncio.create_task(self._deliver(task, tp, offset))
                self._tasks[job] = tp
                job.add_done_callback(self._job_done)
            metrics.INFLIGHT.set(len(self._tasks))

    def _note_horizons(self, consumer: AIOKafkaConsumer) -> None:
        """Note, for each assigned partition, the offset from which its records cannot be replays.

        The partition's previous owner stopped fetching before this replica was assigned it, so it
        fetched nothing at or past any high watermark this replica sees afterwards (every fetch
        response carries one, records or not); the first seen is kept until the next assignment.
        Until a partition's is known, all its records are checked. A zombie (an owner that lost the
        group but still fetches) can still duplicate an attempt: a duplicate, never a loss."""
        unknown = False
        for tp in consumer.assignment():
            if tp not in self._replay_horizon:
                highwater = consumer.highwater(tp)
                if highwater is None:
                    unknown = True
                else:
                    self._replay_horizon[tp] = highwater
        self._horizons_unknown = unknown

    async def _already_attempted(self, tasks: list[DeliveryTask]) -> set[tuple[int, int]]:
        """Tasks whose attempt is already durably recorded (a replay after a crash or rebalance).

        Skipping them keeps duplicates to the attempts that were in flight at the crash. If the
        database cannot answer, nothing is skipped: a duplicate is acceptable, a loss is not.
        """
        try:
            rows = await self._pool.fetch(
                "SELECT id, attempts FROM deliveries WHERE id = ANY($1::bigint[])",
                list({t.delivery_id for t in tasks}))
        except Exception as exc:
            log.warning("could not check for replayed deliveries (%s); sending them all", describe(exc))
            return set()
        attempts = {r["id"]: r["attempts"] for r in rows}
        return {(t.delivery_id, t.attempt) for t in tasks if attempts.get(t.delivery_id, 0) >= t.attempt}

    def _job_done(self, job: asyncio.Task) -> None:
        self._tasks.pop(job, None)
        metrics.INFLIGHT.set(len(self._tasks))
        if not job.cancelled() and job.exception() is not None:
            log.error("delivery job crashed; its offset stays uncommitted", exc_info=job.exception())
        self._capacity.set()

    async def _deliver(self, task: DeliveryTask, tp: TopicPartition, offset: int) -> None:
        try:
            record = await self.attempt(task)
        except Exception as exc:
            # Whatever went wrong, the delivery still reaches an outcome: a failed, retryable attempt
            # saying why (a bug must not leave it pending with nothing scheduled, nor pin the offset).
            metrics.ATTEMPT_CRASHES.inc()
            log.exception("attempt crashed; recorded as a failed attempt",
                          extra={"webhook_id": task.webhook_id, "event_id": task.event_id})
            failed = Failed(retryable=True, error=storable_error(f"internal error: {describe(exc)}"))
            record = decide_outcome(task, failed, self._policy, dt.datetime.now(dt.UTC), 0.0,
                                    hold_slack_s=self._settings.breaker_open_s)
        if record is not None:
            await self._sink.record(record)
            self._observe(record)
        self._tracker.finished(tp, offset)

    async def attempt(self, task: DeliveryTask) -> AttemptRecord | None:
        """Make one attempt of ``task``; None when its webhook no longer exists (nothing to record)."""
        webhook = await self._lookup_webhook(task.webhook_id)
        if webhook is None:
            log.info("webhook deleted; dropping its delivery", extra={"webhook_id": task.webhook_id,
                                                                      "event_id": task.event_id})
            return None
        started_at = dt.datetime.now(dt.UTC)
        clock = time.perf_counter()
        if not webhook.enabled:
            result: AttemptResult = Failed(retryable=False, error="webhook is disabled; not sent", sent=False)
        elif webhook.key_error is not None:
            result = Failed(retryable=True, error=f"cannot sign: {webhook.key_error}; not sent", sent=False)
        else:
            async def send() -> AttemptResult:
                if task.ordered and not task.manual:
                    await self._claim_ordered(task)  # with the endpoint's slot held: just before the POST
                return await post_webhook(
                    self._session, webhook, task, timeout_s=self._settings.request_timeout_s,
                    excerpt_cap_bytes=self._settings.max_response_excerpt_bytes,
                    allow_private_networks=self._settings.allow_private_networks)

            try:
                result = await self._gates.call(webhook.id, send, webhook.organization_id)
            except _ClaimRefused:
                # Put back, not dropped: if the copy holding the claim never records its outcome (its
                # sender died mid-POST), this one is attempted once the claim has lapsed.
                result = Deferred("another copy of this ordered attempt is being sent", self._claim_lease_s)
        duration_ms = (time.perf_counter() - clock) * 1000
        return decide_outcome(task, result, self._policy, started_at, duration_ms,
                              hold_slack_s=self._settings.breaker_open_s)

    def _breaker_closed(self, webhook_id: str) -> None:
        """A webhook's breaker closed: its held deliveries are released once their holds are durable.

        Every hold made before this moment is already among the sink's recorded outcomes (a refusal
        reaches ``record`` without yielding to the loop), so the release waits for those to be durable."""
        self._closed[webhook_id] = self._sink.recorded
        self._closed_signal.set()

    async def _release_held(self) -> None:
        """Make the deliveries held by breakers that closed due now, in one statement for every
        breaker closed meanwhile, and wake the retry pump.

        A webhook's first close releases at once. A close soon after a release waits for a gap that
        starts at ``RELEASE_BACKOFF_START_S`` and doubles with each release in the streak, up to the
        open period; an open period of quiet past the next allowed release ends the streak. An endpoint
        that makes its breaker flap (quick failures, then a slow success) so soon brings its held
        backlog back no more often than the probes would have. A release that fails is not retried:
        those holds come back at their probe time, as without it."""
        clock = asyncio.get_running_loop().time
        while True:
            try:
                await self._release_once(clock)
            except Exception:  # a bug here must not end the releases for good
                log.exception("releasing the deliveries held by closed breakers failed; trying again in 1 s")
                await asyncio.sleep(1.0)

    async def _release_once(self, clock: Callable[[], float]) -> None:
        """Wait for a close whose release is due, then release every webhook that is due."""
        now = clock()
        # a webhook that stayed quiet for an open period past its next allowed release starts over
        self._released = {w: (at, streak) for w, (at, streak) in self._released.items()
                          if now < at + self._release_gap_s(streak) + self._settings.breaker_open_s}
        due = {w: self._next_release_at(w) for w in self._closed}
        ready = sorted(w for w, at in due.items() if at <= now)
        if not ready:
            self._closed_signal.clear()
            await wait_for_any(self._closed_signal, within_s=max(0.0, min(due.values()) - now) if due else None)
            return
        await self._sink.durable_through(max(self._closed.pop(w) for w in ready))
        # A breaker that opened again meanwhile is left alone: its holds wait for its probe (and its
        # next close), rather than cycle through the pump only to be held again.
        ready = [w for w in ready if self._gates.state_of(w) == BreakerState.CLOSED]
        if not ready:
            return
        try:
            rows = await self._pool.fetch(_RELEASE_HELD_SQL, ready, HELD_PATTERN)
        except Exception as exc:
            log.warning("could not release the deliveries held by %d closed breakers (%s); they wait"
                        " for their probe time", len(ready), describe(exc))
            return
        released_at = clock()
        for webhook_id in ready:
            previous = self._released.get(webhook_id)
            self._released[webhook_id] = (released_at, previous[1] + 1 if previous else 0)
        for row in rows:
            log.info("%d deliveries held by the circuit breaker are due now (it closed)", row["n"],
                     extra={"webhook_id": row["webhook_id"]})
        if rows and self._wake_pump is not None:
            self._wake_pump()

    def _release_gap_s(self, streak: int) -> float:
        return min(self._settings.breaker_open_s, RELEASE_BACKOFF_START_S * 2 ** min(streak, 30))

    def _next_release_at(self, webhook_id: str) -> float:
        previous = self._released.get(webhook_id)
        if previous is None:
            return float("-inf")
        at, streak = previous
        return at + self._release_gap_s(streak)

    @property
    def _claim_lease_s(self) -> float:
        return self._settings.request_timeout_s + 5.0

    async def _claim_ordered(self, task: DeliveryTask) -> None:
        """Claim the ordered ``task``'s attempt, or raise :class:`_ClaimRefused`. Waits out a database
        outage (an ordered attempt is never sent unclaimed)."""
        claimed = await retry_transient(
            lambda: self._pool.fetchval(_CLAIM_ORDERED_SQL, task.delivery_id, task.attempt, self._claim_lease_s),
            what="claiming an ordered attempt", heartbeat=HEARTBEAT,
            extra={"webhook_id": task.webhook_id, "event_id": task.event_id})
        if claimed is None:
            raise _ClaimRefused

    async def _lookup_webhook(self, webhook_id: str) -> Webhook | None:
        """The webhook, from memory or (when just created) PostgreSQL; waits out database outages and
        raises permanent errors (the caller records them as the attempt's outcome)."""
        webhook = self._directory.get(webhook_id)
        if webhook is not None:
            return webhook
        return await retry_transient(lambda: self._directory.fetch(self._pool, webhook_id),
                                     what="looking up a webhook", heartbeat=HEARTBEAT,
                                     extra={"webhook_id": webhook_id})

    def _observe(self, record: AttemptRecord) -> None:
        self._log_outcome(record)
        if record.status == AttemptStatus.DEFERRED:
            return
        outcome = "success" if record.status == AttemptStatus.SUCCEEDED else "failure"
        metrics.attempts_counter(outcome, metrics.status_class(record.http_status), record.task.event_type).inc()
        metrics.ATTEMPT_DURATION.observe(record.duration_ms / 1000)
        if record.status == AttemptStatus.RETRYING:
            metrics.RETRIES_SCHEDULED.labels(str(record.task.retry_index + 1)).inc()
        else:
            metrics.finished_counter(record.status).inc()
        # End-to-end latency is the automatic path's: a redelivery of an old event, or a test send,
        # would report how long ago the event happened, not how fast hookstream delivers.
        if record.status == AttemptStatus.SUCCEEDED and not record.task.manual:
            with contextlib.suppress(ValueError):
                occurred = parse_validated_rfc3339(record.task.occurred_at)
                metrics.DELIVERY_LATENCY.observe(max(0.0, (dt.datetime.now(dt.UTC) - occurred).total_seconds()))

    def _log_outcome(self, record: AttemptRecord) -> None:
        """The operator's lines, once the outcome is durable: every delivery that ends ``failed`` (and
        every manual attempt that fails) at INFO; attempts that will be retried at INFO up to
        ``RETRY_LOG_LIMIT`` per ``RETRY_LOG_INTERVAL_S``, then at DEBUG with one summary line of how
        many were suppressed; successes and deferrals at DEBUG. Tenant text goes through ``loggable``."""
        task = record.task
        if record.status in (AttemptStatus.SUCCEEDED, AttemptStatus.DEFERRED):
            if log.isEnabledFor(logging.DEBUG):
                log.debug("attempt %s", record.status, extra={"event_id": loggable(task.event_id),
                                                              "webhook_id": task.webhook_id,
                                                              "attempt": task.attempt})
            return
        level = logging.INFO
        if record.status == AttemptStatus.RETRYING:
            admitted, suppressed = self._retry_lines.admit()
            if suppressed:
                log.info("suppressed %d lines of failed attempts that will be retried (at most %d per %gs)",
                         suppressed, RETRY_LOG_LIMIT, RETRY_LOG_INTERVAL_S)
            if not admitted:
                if not log.isEnabledFor(logging.DEBUG):
                    return
                level = logging.DEBUG
        extra = {"webhook_id": task.webhook_id, "organization_id": loggable(task.organization_id),
                 "event_id": loggable(task.event_id), "event_type": loggable(task.event_type),
                 "attempts": task.attempt, "error": loggable(record.error or "")}
        if record.status == AttemptStatus.RETRYING:
            if record.next_attempt_at is not None:
                extra["next_attempt_at"] = format_rfc3339(record.next_attempt_at, timespec="milliseconds")
            log.log(level, "attempt failed; it will be retried", extra=extra)
        else:
            log.info("manual attempt failed" if task.manual else "delivery failed", extra=extra)

    async def _wait_for_tasks(self, tasks: set[asyncio.Task], timeout_s: float) -> None:
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    async def drain_partitions(self, consumer: AIOKafkaConsumer, revoked: set[TopicPartition]) -> None:
        """On revocation: finish the revoked partitions' attempts, commit them, forget them."""
        tasks = {t for t, tp in self._tasks.items() if tp in revoked}
        await self._wait_for_tasks(tasks, self._settings.drain_timeout_s)
        await self._commit(consumer, revoked)
        self._tracker.forget(revoked)
        for tp in revoked:
            self._replay_horizon.pop(tp, None)
        metrics.forget_lag(self._settings.sender_group, revoked)

    async def _commit(self, consumer: AIOKafkaConsumer, partitions) -> None:
        offsets = self._tracker.committable(partitions)
        if not offsets:
            return
        await commit_offsets(consumer, offsets, owner="sender", otherwise="uncommitted deliveries will be replayed")

    async def _commit_periodically(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        last: dict[TopicPartition, int] = {}
        while not stop.is_set():
            await asyncio.sleep(COMMIT_INTERVAL_S)
            liveness.beat("sender-commit")
            offsets = self._tracker.committable(consumer.assignment())
            if offsets and offsets != last and await commit_offsets(consumer, offsets, owner="sender",
                                                                   otherwise="will retry"):
                last = offsets
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                if highwater is not None and tp in offsets:
                    metrics.CONSUMER_LAG.labels(self._settings.sender_group, tp.topic, tp.partition).set(
                        max(0, highwater - offsets[tp]))


class _DrainOnRevoke(ConsumerRebalanceListener):
    def __init__(self, sender: Sender, consumer: AIOKafkaConsumer) -> None:
        self._sender = sender
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked) -> None:
        if revoked:
            await self._sender.drain_partitions(self._consumer, set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        # One line per rebalance: which partitions of the delivery topic this replica now works on.
        log.info("sender assigned partitions %s", ",".join(str(p) for p in sorted(tp.partition for tp in assigned))
                 or "(none)")
        for tp in assigned:  # a new assignment: the high watermark is seen afresh
            self._sender._replay_horizon.pop(tp, None)
        self._sender._horizons_unknown = bool(assigned)


async def run_sender(settings: Settings, stop: asyncio.Event, *, pool: asyncpg.Pool,
                     directory: WebhookDirectory) -> None:
    """Run one sender replica (attempts, outcome flusher, retry pump) until ``stop`` is set, then drain."""
    await apply_topic_specs(settings.kafka_bootstrap_servers, [s for s in topic_specs(settings) if s.owned])
    async with open_producer(settings.kafka_bootstrap_servers) as producer, \
            make_session(allow_private_networks=settings.allow_private_networks) as session:
        # An ordered delivery that finished released the next one of its resource, or a breaker that
        # closed released its held deliveries (made due now): the pump is woken instead of waiting
        # out its idle delay.
        released = asyncio.Event()
        async with OutcomeSink(pool, producer, settings.status_topic,
                               flush_interval_ms=settings.outcome_flush_interval_ms,
                               flush_max=settings.outcome_flush_max, on_ordered_finished=released.set) as sink:
            pump = asyncio.create_task(run_retry_pump(pool, producer, settings.delivery_topic, stop, wake=released),
                                       name="retry-pump")
            try:
                await Sender(settings, pool, directory, session, sink, wake_pump=released.set).run(stop)
            finally:
                await cancel_and_wait(pump)
