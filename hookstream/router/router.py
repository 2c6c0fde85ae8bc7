"""The router: domain events in, one delivery per matched webhook out.

Router.run -> route_batch -> validate_batch (hookstream.core.validation) -> match_batch
(WebhookDirectory, then each webhook's filter) -> _deliver_batch: _dead_letter (the rejected records,
meanwhile) and _store (store_batch; a refused event isolated and dead-lettered) -> _enqueue
(delivery topic) -> commit.

Offsets: a batch's source offsets are committed (every 200 ms, and on revocation and stop) only
after its events and deliveries are stored in PostgreSQL and every delivery task and dead-letter
record is acknowledged by Kafka. A crash
in between replays the batch; the events table remembers each event's source position, so a
replay re-enqueues the still-pending deliveries (a possible duplicate, never a loss) while a second
publish of the same event id at another position is dropped (routed once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from hookstream.core import liveness, metrics
from hookstream.core.db import GENERIC_PLAN_SETTINGS, open_pool
from hookstream.core.deliveries import fail_undeliverable
from hookstream.core.errors import Stopped, describe, is_transient, isolate_poison, retry_transient
from hookstream.core.filters import FilterFailure, evaluate, make_context, webhook_payload
from hookstream.core.kafka import (
    RECORD_OVERHEAD_BYTES,
    RenewableProducer,
    commit_offsets,
    make_consumer,
    open_producer,
    send_isolated,
)
from hookstream.core.model import TASK_ENVELOPE_MAX_BYTES, DeliveryTask
from hookstream.core.ordering import resource_key
from hookstream.core.partitions import DAY_SHIFT, on_or_after_day_of
from hookstream.core.settings import Settings
from hookstream.core.tasks import cancel_and_wait
from hookstream.core.text import storable_text
from hookstream.core.topics import DELIVERY_MAX_MESSAGE_BYTES, apply_topic_specs, topic_specs
from hookstream.core.validation import DomainEvent, Rejection, validate_event
from hookstream.core.webhooks import WebhookDirectory

log = logging.getLogger(__name__)
_UNMATCHED_UNKNOWN_ORGANIZATION = metrics.EVENTS_UNMATCHED.labels("unknown_organization")
_UNMATCHED_NO_WEBHOOK = metrics.EVENTS_UNMATCHED.labels("no_webhook")
_UNMATCHED_FILTERED = metrics.EVENTS_UNMATCHED.labels("filtered")

MAX_BATCH_RECORDS = 1000
COMMIT_INTERVAL_S = 0.2
# The largest delivery task the delivery topic takes (the body is escaped into the task's JSON).
MAX_TASK_BYTES = DELIVERY_MAX_MESSAGE_BYTES - RECORD_OVERHEAD_BYTES
HEARTBEAT = "router"
FILTER_ERRORS_FLUSH_S = 2.0
# One filter evaluation slower than this suspends the webhook's filter (nothing routed, counted as
# filter errors) for SLOW_FILTER_SUSPEND_S.
SLOW_FILTER_MS = 50
SLOW_FILTER_SUSPEND_S = 60.0
# How long a rebalance waits for this replica's revoke (the batch in hand, then a commit).
ROUTER_REVOKE_BOUND_S = 60.0
# The organization ids behind hookstream_events_unmatched_total{reason="unknown_organization"}: reloaded
# this often, and sooner (at most every ORGANIZATIONS_MIN_RELOAD_S) after an event of an id not known.
ORGANIZATIONS_RELOAD_S = 30.0
ORGANIZATIONS_MIN_RELOAD_S = 1.0


@dataclass(frozen=True, slots=True)
class SourceRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def build_webhook_body(event: DomainEvent) -> str:
    """The outbound payload (CONTRACT §3): compact JSON, created_at = the event's occurred_at."""
    return orjson.dumps(
        {
            "id": event.id,
            "type": event.type,
            "created_at": event.occurred_at,
            "organization_id": event.organization_id,
            "store_id": event.store_id,
            "data": event.data,
        }
    ).decode()


def dead_letter_headers(record: SourceRecord, rejection: Rejection) -> list[tuple[str, bytes]]:
    return [
        ("hookstream-reason", rejection.reason.encode()),
        ("hookstream-error", rejection.detail.encode()[:1000].decode(errors="ignore").encode()),
        ("hookstream-source-topic", record.topic.encode()),
        ("hookstream-source-partition", str(record.partition).encode()),
        ("hookstream-source-offset", str(record.offset).encode()),
        *record.headers,
    ]


# One statement, so one round trip and atomic without an explicit transaction: key each event id
# once (event_keys, partitioned by week: the first record of an id is its key's source position),
# store the new events, keep
# the events this record may route (new, or a replay of the same position), and insert their
# deliveries (a replay's only where none exists: deliveries are partitioned by day, so (webhook_id,
# event_id) cannot be a unique constraint). Returns the deliveries (organization_id NULL: the
# webhook's), then one row with a NULL id per event left out as a second publish, and one per
# replayed event.
_STORE_BATCH_SQL = f"""
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
                         $7::text[], $8::int[], $9::bigint[])
        AS i(organization_id, event_id, event_type, store_id, occurred_at, body,
             source_topic, source_partition, source_offset)
), earlier AS (
    -- keys of every span kept (each partition's primary key leads with these two columns)
    SELECT k.organization_id, k.event_id, k.event_seq AS seq, k.source_topic, k.source_partition,
           k.source_offset, true AS existed
    -- probed by its index for each input row (OFFSET 0 keeps the subquery from being turned into a
    -- join): the plan is generic, cached, and one made while the keys were few (or trusting unnest's
    -- guess of 10 rows) would otherwise hash every key of the span, or of the organization, per batch
    FROM input i CROSS JOIN LATERAL (
        SELECT * FROM event_keys x WHERE x.organization_id = i.organization_id AND x.event_id = i.event_id
        OFFSET 0) k
), keyed AS (
    -- DO NOTHING: a router storing the same id at this moment (not committed yet, so not in
    -- ``earlier``) stores and routes it; this record is left out, as a second publish (were it the
    -- same record, the other router's offset is committed only once that router's batch is stored)
    INSERT INTO event_keys AS k (organization_id, event_id, span, event_seq, source_topic, source_partition,
                                 source_offset)
    SELECT i.organization_id, i.event_id, hookstream_span(now()), hookstream_id('events_seq_seq', now()),
           i.source_topic, i.source_partition, i.source_offset
    FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM earlier e WHERE e.organization_id = i.organization_id AND e.event_id = i.event_id)
    ON CONFLICT (organization_id, event_id, span) DO NOTHING
    RETURNING k.organization_id, k.event_id, k.event_seq AS seq, k.source_topic, k.source_partition,
              k.source_offset, false AS existed
), stored AS (
    SELECT * FROM keyed UNION ALL SELECT * FROM earlier
), new_events AS (
    INSERT INTO events (seq, organization_id, event_id, event_type, store_id, occurred_at, body,
                        source_topic, source_partition, source_offset)
    SELECT s.seq, i.organization_id, i.event_id, i.event_type, i.store_id, i.occurred_at, i.body,
           i.source_topic, i.source_partition, i.source_offset
    FROM keyed s JOIN input i USING (organization_id, event_id)
    WHERE NOT s.existed
), routable AS (
    SELECT s.seq, s.organization_id, s.event_id, s.existed, i.event_type, i.store_id
    FROM stored s JOIN input i USING (organization_id, event_id)
    WHERE (s.source_topic, s.source_partition, s.source_offset)
        = (i.source_topic, i.source_partition, i.source_offset)
      -- a replay whose event retention has dropped (its key lives on a little longer) is not routed again
      AND CASE WHEN s.existed THEN EXISTS (SELECT 1 FROM events e WHERE e.seq = s.seq) ELSE true END
), routed AS (
    -- Per (webhook, resource) in the batch's order, the source order of its records: an ordered
    -- webhook's deliveries of one resource are admitted in that order (deliveries_admit_ordered,
    -- 0004_ordering.sql; a waiting one comes back not in flight, so no task is issued for it), and
    -- resource_heads rows are locked in (webhook, resource) order, as outcomes lock them.
    INSERT INTO deliveries AS d (webhook_id, event_seq, event_id, event_type, store_id, in_flight, issued_attempt,
                                 resource_key)
    SELECT m.webhook_id, r.seq, r.event_id, r.event_type, r.store_id, true, 1, m.resource_key
    FROM unnest($10::text[], $11::text[], $12::text[], $13::text[]) WITH ORDINALITY
        AS m(webhook_id, organization_id, event_id, resource_key, n)
    JOIN routable r USING (organization_id, event_id)
    -- a replay's stored deliveries are on or after its event's day (ids carry the day)
    WHERE CASE WHEN r.existed THEN NOT EXISTS (
        SELECT 1 FROM deliveries x
        WHERE x.event_seq = r.seq AND x.webhook_id = m.webhook_id AND {on_or_after_day_of("x.id", "r.seq")}) ELSE true END
    ORDER BY m.webhook_id, m.resource_key, m.n
    RETURNING d.id, d.webhook_id, d.event_id, d.status, d.attempts = 0 AND d.in_flight AS first_in_flight,
              d.resource_key IS NOT NULL AS ordered
)
-- A delivery's organization is its webhook's, known to the caller: joining ``routed`` back to
-- ``routable`` here made the planner (which estimates one row for either) loop over both, quadratic
-- in the batch: 95 of a 1,000-event batch's 143 ms.
SELECT x.id, x.webhook_id, x.event_id, x.status, x.first_in_flight, x.ordered, NULL::text AS organization_id,
       NULL::bigint AS replayed_seq, false AS raced
FROM routed x
UNION ALL
SELECT NULL, NULL, s.event_id, NULL, NULL, NULL, s.organization_id, NULL, false FROM stored s
WHERE NOT EXISTS (SELECT 1 FROM routable r
                  WHERE r.organization_id = s.organization_id AND r.event_id = s.event_id)
UNION ALL  -- replays of the same source position: their stored deliveries are looked up apart
SELECT NULL, NULL, r.event_id, NULL, NULL, NULL, r.organization_id, r.seq, false FROM routable r WHERE r.existed
UNION ALL  -- keyed by another router meanwhile (DO NOTHING): looked up apart once it has committed
SELECT NULL, NULL, i.event_id, NULL, NULL, NULL, i.organization_id, NULL, true FROM input i
WHERE NOT EXISTS (SELECT 1 FROM stored s WHERE s.organization_id = i.organization_id AND s.event_id = i.event_id)
"""

# The keys another router stored while this batch's statement ran (it waited for that router's commit,
# so a new statement sees them): the same source position is a replay (two routers with one record, in
# a rebalance: its deliveries are handed back, to be enqueued should the other router die before
# Kafka took its tasks), another one a second publish.
_RACED_SQL = """
SELECT k.event_seq, (k.source_topic, k.source_partition, k.source_offset) = (i.topic, i.part, i.off) AS same
FROM event_keys k
JOIN unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::bigint[]) AS i(org, event_id, topic, part, off)
  ON k.organization_id = i.org AND k.event_id = i.event_id
-- named outright too, so the keys are found by their index whatever the planner thinks of the join
WHERE k.organization_id = ANY($1::text[]) AND k.event_id = ANY($2::text[])
"""

# A replay (the router crashed after storing a batch, maybe before Kafka took its tasks): every
# stored delivery of the replayed events, whatever the webhooks match now (a filter or subscription
# changed since must not strand one in flight); the never-attempted ones are enqueued again. Only run
# when a batch holds replays.
_REPLAYED_SQL = """
SELECT d.id, d.webhook_id, d.event_id, d.status, d.attempts = 0 AND d.in_flight AS first_in_flight,
       d.resource_key IS NOT NULL AS ordered, e.organization_id
FROM deliveries d JOIN events e ON e.seq = d.event_seq
-- ``e.seq = ANY($1)`` too, and a replay's deliveries are on or after its event's day: only those
-- partitions are read (the planner does not count the pruning it would do row by row)
WHERE d.event_seq = ANY($1::bigint[]) AND e.seq = ANY($1::bigint[])
  AND d.id >= $2  -- the oldest replayed event's first day id
"""


async def store_batch(
    conn: asyncpg.Connection | asyncpg.Pool,
    events: Sequence[tuple[SourceRecord, DomainEvent, str]],
    matches: Sequence[tuple[str, DomainEvent]],
    ordered: Collection[str] = (),
    *,
    lookups: asyncpg.Connection | asyncpg.Pool | None = None,
) -> tuple[list[asyncpg.Record], int]:
    """Store events idempotently and the deliveries of ``matches`` (webhook id, event) for the events
    this record may route; returns (delivery rows, number of events left out as second publishes).
    The deliveries of the ``ordered`` webhooks carry their event's resource key and are admitted in
    order (:mod:`hookstream.core.ordering`).

    An event is routed when this record is the one that first carried its id (new, or a replay of
    the same source position after a crash); a second publish of the id is left out. The rare
    look-ups of raced and replayed events run on ``lookups`` (default ``conn``): sessions planning
    each call, so that the replayed ids' partitions are pruned by their values.
    """
    lookups = lookups or conn
    rows = await conn.fetch(
        _STORE_BATCH_SQL,
        [e.organization_id for _, e, _ in events],
        [e.id for _, e, _ in events],
        [e.type for _, e, _ in events],
        [e.store_id for _, e, _ in events],
        [e.occurred_at_utc for _, e, _ in events],
        [body for _, _, body in events],
        [r.topic for r, _, _ in events],
        [r.partition for r, _, _ in events],
        [r.offset for r, _, _ in events],
        [webhook_id for webhook_id, _ in matches],
        [e.organization_id for _, e in matches],
        [e.id for _, e in matches],
        [resource_key(e.type, e.data) if webhook_id in ordered else None for webhook_id, e in matches],
    )
    deliveries = [row for row in rows if row["id"] is not None]
    replayed = [row["replayed_seq"] for row in rows if row["replayed_seq"] is not None]
    raced = {(row["organization_id"], row["event_id"]) for row in rows if row["raced"]}
    second_publishes = len(rows) - len(deliveries) - len(replayed) - len(raced)
    if raced:
        mine = [(r, e) for r, e, _ in events if (e.organization_id, e.id) in raced]
        found = await lookups.fetch(_RACED_SQL, [e.organization_id for _, e in mine], [e.id for _, e in mine],
                                    [r.topic for r, _ in mine], [r.partition for r, _ in mine],
                                    [r.offset for r, _ in mine])
        replayed += [row["event_seq"] for row in found if row["same"]]
        second_publishes += sum(1 for row in found if not row["same"])
    if replayed:
        known = {row["id"] for row in deliveries}
        oldest_day = min(replayed) >> DAY_SHIFT << DAY_SHIFT
        deliveries += [row for row in await lookups.fetch(_REPLAYED_SQL, replayed, oldest_day) if row["id"] not in known]
    return deliveries, second_publishes


class FilterErrorLog:
    """Filter errors per webhook, added up in memory and written to ``filter_errors`` every
    ``FILTER_ERRORS_FLUSH_S`` (one upsert per webhook and hour), for "filter errors in the last 24 h"."""

    def __init__(self) -> None:
        self._pending: dict[str, tuple[int, str, str]] = {}
        self._pruned_at = float("-inf")

    def add(self, webhook_id: str, event_id: str, error: str) -> None:
        count, _, _ = self._pending.get(webhook_id, (0, "", ""))
        # an error can quote the event's text (a NUL would make PostgreSQL refuse the whole flush)
        self._pending[webhook_id] = (count + 1, storable_text(error, 500), event_id)

    async def flush(self, pool: asyncpg.Pool) -> None:
        if time.monotonic() - self._pruned_at > 3600:  # hours older than a week are no longer shown
            with contextlib.suppress(Exception):
                await pool.execute("DELETE FROM filter_errors WHERE hour < now() - interval '7 days'")
            self._pruned_at = time.monotonic()
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            await pool.execute(
                """
                INSERT INTO filter_errors AS f (webhook_id, hour, errors, last_error, last_event_id, last_at)
                SELECT u.webhook_id, date_trunc('hour', now()), u.errors, u.last_error, u.last_event_id, now()
                FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[])
                    AS u(webhook_id, errors, last_error, last_event_id)
                JOIN webhooks w ON w.id = u.webhook_id  -- a webhook deleted meanwhile: nothing to count
                ON CONFLICT (webhook_id, hour) DO UPDATE SET errors = f.errors + EXCLUDED.errors,
                    last_error = EXCLUDED.last_error, last_event_id = EXCLUDED.last_event_id, last_at = now()
                """,
                list(pending), [n for n, _, _ in pending.values()], [e for _, e, _ in pending.values()],
                [i for _, _, i in pending.values()])
        except Exception as exc:
            if not is_transient(exc):
                log.error("could not record %d webhooks' filter errors (%s); dropped", len(pending), describe(exc))
                return
            for webhook_id, (count, error, event_id) in pending.items():  # kept for the next flush
                now_count, now_error, now_event = self._pending.get(webhook_id, (0, error, event_id))
                self._pending[webhook_id] = (count + now_count, now_error, now_event)
            log.warning("recording filter errors failed (%s); will retry", describe(exc))


class KnownOrganizations:
    """The organization ids in PostgreSQL, for telling "no such organization" from "no webhook wants
    this" when an event routes nowhere. Only that metric reads it: routing itself goes by the webhook
    directory. Loaded off the hot loop (``run``), never per event: all ids every
    ``ORGANIZATIONS_RELOAD_S``, and in between, at most every ``ORGANIZATIONS_MIN_RELOAD_S``, only the
    ids seen missing (an organization created since; at most ``MAX_PENDING`` of them, so a flood of
    made-up ids costs one bounded lookup a second). Until the first load every id counts as known;
    while PostgreSQL is away the last known set stands."""

    MAX_PENDING = 1000

    def __init__(self) -> None:
        self._ids: set[str] | None = None
        self._pending: set[str] = set()
        self._wake = asyncio.Event()

    def knows(self, organization_id: str) -> bool:
        if self._ids is None or organization_id in self._ids:
            return True
        if len(self._pending) < self.MAX_PENDING:
            self._pending.add(organization_id)
            self._wake.set()
        return False

    async def reload(self, pool: asyncpg.Pool) -> None:
        self._ids = {row["id"] for row in await pool.fetch("SELECT id FROM organizations")}

    async def look_up_pending(self, pool: asyncpg.Pool) -> None:
        pending, self._pending = self._pending, set()
        rows = await pool.fetch("SELECT id FROM organizations WHERE id = ANY($1::text[])", list(pending))
        if self._ids is not None:
            self._ids.update(row["id"] for row in rows)

    async def run(self, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_full = loop.time()
        while not stop.is_set():
            self._wake.clear()  # before the lookups: an id missed during them wakes the next round
            try:
                if loop.time() >= next_full:
                    self._pending.clear()
                    await self.reload(pool)
                    next_full = loop.time() + ORGANIZATIONS_RELOAD_S
                elif self._pending:
                    await self.look_up_pending(pool)
            except Exception as exc:  # only a metric's label depends on it: never stop the router
                log.warning("could not load the organization ids (%s); keeping the last ones", describe(exc))
            await asyncio.sleep(ORGANIZATIONS_MIN_RELOAD_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_full - loop.time()))


class Router:
    """One router replica. ``run()`` until ``stop`` is set; then it finishes the batch in hand and commits."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, directory: WebhookDirectory,
                 producer: RenewableProducer, *, store_pool: asyncpg.Pool | None = None) -> None:
        self._settings = settings
        self._pool = pool
        # where the batches are stored: sessions with generic plans (run_router; db.GENERIC_PLAN_SETTINGS)
        self._store_pool = store_pool or pool
        self._directory = directory
        self._producer = producer
        self._batch_lock = asyncio.Lock()
        self._commit_lock = asyncio.Lock()
        self._done: dict[TopicPartition, int] = {}  # next offset to commit, per partition
        self._committed: dict[TopicPartition, int] = {}  # last offset this replica committed, per partition
        self.filter_errors = FilterErrorLog()
        self._slow_filters: dict[str, float] = {}  # webhook id -> monotonic time its filter is suspended until
        self.organizations = KnownOrganizations()

    async def run(self, stop: asyncio.Event) -> None:
        consumer = make_consumer(self._settings.kafka_bootstrap_servers, self._settings.router_group,
                                 rebalance_timeout_ms=int(ROUTER_REVOKE_BOUND_S * 1000))
        router = self

        class CommitOnRevoke(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                # Wait for the batch in hand, then commit what is done before the partitions move on.
                async with router._batch_lock:
                    await router._commit_done(consumer, set(revoked))
                    metrics.forget_lag(router._settings.router_group, revoked)
                    for tp in revoked:
                        router._committed.pop(tp, None)

            async def on_partitions_assigned(self, assigned):
                pass

        consumer.subscribe(list(self._settings.source_topics), listener=CommitOnRevoke())
        await consumer.start()
        helpers = [asyncio.create_task(self._report_lag(consumer, stop), name="router-lag"),
                   asyncio.create_task(self._commit_periodically(consumer, stop), name="router-commit"),
                   asyncio.create_task(self._flush_filter_errors(stop), name="router-filter-errors"),
                   asyncio.create_task(self.organizations.run(self._pool, stop), name="router-organizations")]
        try:
            while not stop.is_set():
                liveness.beat(HEARTBEAT)
                batches = await consumer.getmany(timeout_ms=200, max_records=MAX_BATCH_RECORDS)
                if not batches:
                    continue
                async with self._batch_lock:
                    records = [
                        SourceRecord(tp.topic, tp.partition, m.offset, m.key, m.value, tuple(m.headers or ()))
                        for tp, messages in batches.items()
                        for m in messages
                    ]
                    if not await self.route_batch(records, stop):
                        break  # stopping while PostgreSQL or Kafka is down: the batch is replayed later
                    self._done.update({tp: messages[-1].offset + 1 for tp, messages in batches.items()})
            await self._commit_done(consumer)
        finally:
            liveness.forget(HEARTBEAT)
            for helper in helpers:
                await cancel_and_wait(helper)
            await consumer.stop()

    async def _flush_filter_errors(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                await asyncio.sleep(FILTER_ERRORS_FLUSH_S)
                await self.filter_errors.flush(self._pool)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.filter_errors.flush(self._pool), 2.0)

    async def _commit_periodically(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """Offsets of durable batches are committed every ``COMMIT_INTERVAL_S``, off the hot loop; a
        crash replays at most that much, and replays are recognised by source position."""
        while not stop.is_set():
            await asyncio.sleep(COMMIT_INTERVAL_S)
            await self._commit_done(consumer)

    async def _commit_done(self, consumer: AIOKafkaConsumer, partitions: set[TopicPartition] | None = None) -> None:
        """Commit the offsets of every batch already durable (only ``partitions``, when given)."""
        async with self._commit_lock:
            offsets = {tp: offset for tp, offset in self._done.items() if partitions is None or tp in partitions}
            if not offsets:
                return
            # On failure the replay is recognised by source position, so this duplicates at worst.
            if await commit_offsets(consumer, offsets, owner="router", otherwise="those batches will be replayed"):
                assigned = consumer.assignment()  # a partition revoked meanwhile is no longer this replica's lag
                self._committed.update({tp: offset for tp, offset in offsets.items() if tp in assigned})
            for tp, offset in offsets.items():
                if self._done.get(tp) == offset:
                    del self._done[tp]

    async def route_batch(self, records: Sequence[SourceRecord], stop: asyncio.Event) -> bool:
        """Validate, store, match and enqueue one batch, retrying transient failures until it is
        durable (never skipped). A record that PostgreSQL or Kafka refuses permanently is isolated and
        dealt with on its own (dead-lettered, or its delivery marked failed); the rest goes through.

        Returns False only when ``stop`` is set before that succeeded: the caller must not commit.
        """
        good, rejected = self.validate_batch(records)
        matches = self.match_batch(good)  # once per batch: filter errors are counted once, whatever is retried
        try:
            await retry_transient(lambda: self._deliver_batch(good, matches, rejected),
                                  what=f"routing a batch of {len(records)} records", stop=stop, heartbeat=HEARTBEAT)
        except Stopped:
            return False
        return True

    def validate_batch(self, records: Sequence[SourceRecord]) -> tuple[
            list[tuple[SourceRecord, DomainEvent, str]], list[tuple[SourceRecord, Rejection]]]:
        """Split a batch into events to route (with their webhook body) and rejected records."""
        good: list[tuple[SourceRecord, DomainEvent, str]] = []
        rejected: list[tuple[SourceRecord, Rejection]] = []
        seen: set[tuple[str, str]] = set()
        for record in records:
            metrics.EVENTS_CONSUMED.labels(record.topic).inc()
            result = validate_event(record.value, max_bytes=self._settings.max_event_bytes)
            if isinstance(result, Rejection):
                rejected.append((record, result))
                continue
            key = (result.organization_id, result.id)
            if key in seen:  # the same id twice in one batch: the first one wins
                metrics.EVENTS_DUPLICATE.inc()
                continue
            body = build_webhook_body(result)
            # Re-serialising can grow a body (1e15 -> 1000000000000000.0) and the task escapes it
            # again: a task the delivery topic would refuse is refused here, before anything is stored.
            task_bytes = len(orjson.dumps(body)) + TASK_ENVELOPE_MAX_BYTES
            if task_bytes > MAX_TASK_BYTES:
                rejected.append((record, Rejection(
                    "too_large", f"its delivery task would be about {task_bytes} bytes; the delivery topic"
                                 f" takes at most {MAX_TASK_BYTES}")))
                continue
            seen.add(key)
            good.append((record, result, body))
        return good, rejected

    def match_batch(self, good: list[tuple[SourceRecord, DomainEvent, str]]) -> list[tuple[str, DomainEvent]]:
        """(webhook id, event) for every webhook subscribed to an event's type and store whose filter,
        if it has one, evaluates to true. A filter that fails routes nothing to its webhook and is
        counted (metric, and per webhook in PostgreSQL for the API)."""
        matches: list[tuple[str, DomainEvent]] = []
        for _, event, _ in good:
            hooks = self._directory.match(event.organization_id, event.type, event.store_id)
            if not hooks:
                known = self.organizations.knows(event.organization_id)
                (_UNMATCHED_NO_WEBHOOK if known else _UNMATCHED_UNKNOWN_ORGANIZATION).inc()
                continue
            context = None
            kept = 0
            for hook in hooks:
                if hook.filtered:
                    if hook.filter is None:
                        outcome: bool | FilterFailure = FilterFailure(hook.filter_error or "filter unusable")
                    elif (until := self._slow_filters.get(hook.id)) is not None and time.monotonic() < until:
                        outcome = FilterFailure(f"filter suspended: an evaluation took over {SLOW_FILTER_MS} ms")
                    else:
                        if context is None:  # converted once per event, for every filter that reads it
                            needs = set().union(*(h.filter.needs for h in hooks if h.filter is not None))
                            context = make_context(webhook_payload(
                                event.id, event.type, event.occurred_at, event.organization_id, event.store_id,
                                event.data), needs)
                        started = time.perf_counter()
                        outcome = evaluate(hook.filter, context)
                        took_ms = (time.perf_counter() - started) * 1000
                        if took_ms > SLOW_FILTER_MS:
                            # The router is shared: a filter that is slow on these events (a comprehension
                            # over a huge list) is suspended for a while rather than slow every tenant.
                            self._slow_filters[hook.id] = time.monotonic() + SLOW_FILTER_SUSPEND_S
                            log.warning("filter took %.0f ms; suspended for %.0f s", took_ms, SLOW_FILTER_SUSPEND_S,
                                        extra={"webhook_id": hook.id, "event_id": event.id})
                    if outcome is not True:
                        if isinstance(outcome, FilterFailure):
                            metrics.FILTER_ERRORS.inc()
                            self.filter_errors.add(hook.id, event.id, outcome.error)
                        continue
                matches.append((hook.id, event))
                kept += 1
            if not kept:
                _UNMATCHED_FILTERED.inc()
        return matches

    async def _send_dead_letter(self, record: SourceRecord, rejection: Rejection, *, omit_value: bool = False):
        """Queue one dead-letter copy; returns the send's future."""
        headers = dead_letter_headers(record, rejection)
        if omit_value:
            size = len(record.value or b"")
            headers += [("hookstream-value-omitted", b"too_large"), ("hookstream-value-bytes", str(size).encode())]
        try:
            return await self._producer.send(self._settings.dead_letter_topic, key=record.key, headers=headers,
                                             value=None if omit_value else record.value)
        except MessageSizeTooLargeError:
            if omit_value:
                raise
            return await self._send_dead_letter(record, rejection, omit_value=True)

    async def _dead_letter(self, rejected: list[tuple[SourceRecord, Rejection]]) -> None:
        """Copy rejected records to the dead-letter topic, unchanged, with headers that say why.

        A copy the broker refuses as too large (the original plus headers can exceed its limit)
        is sent without its value, saying so in headers: a record that cannot be copied must not
        stop the flow, and its source position still points at the original.
        """
        if not rejected:
            return
        sends = [await self._send_dead_letter(record, rejection) for record, rejection in rejected]
        results = await self._producer.acked(sends, return_exceptions=True)
        retries = []
        for (record, rejection), result in zip(rejected, results, strict=True):
            if isinstance(result, MessageSizeTooLargeError):
                retries.append(await self._send_dead_letter(record, rejection, omit_value=True))
            elif isinstance(result, BaseException):
                raise result
        await self._producer.acked(retries)

    async def _deliver_batch(
        self, good: list[tuple[SourceRecord, DomainEvent, str]], matches: list[tuple[str, DomainEvent]],
        rejected: list[tuple[SourceRecord, Rejection]],
    ) -> None:
        # Dead-letter copies go out while the batch is stored; most batches have none.
        dead_letters = asyncio.ensure_future(self._dead_letter(rejected)) if rejected else None
        tasks: list[DeliveryTask] = []
        unstorable: list[tuple[SourceRecord, Rejection]] = []
        try:
            if good:
                tasks, unstorable = await self._store(good, matches)
                await self._dead_letter(unstorable)
            if tasks:
                await self._enqueue(tasks)
        finally:
            if dead_letters is not None:
                await dead_letters
        for record, rejection in (*rejected, *unstorable):
            metrics.EVENTS_REJECTED.labels(rejection.reason).inc()
            log.info("dead-lettered %s[%d]@%d: %s (%s)", record.topic, record.partition, record.offset,
                     rejection.reason, rejection.detail)
        if unstorable:
            metrics.POISON_RECORDS.labels("router", "dead_lettered").inc(len(unstorable))
        for task in tasks:
            metrics.DELIVERIES_SCHEDULED.labels(task.event_type).inc()

    async def _enqueue(self, tasks: list[DeliveryTask]) -> None:
        """Put the tasks on the delivery topic. A task Kafka refuses for good (too large for a topic
        created before its limit was raised, say) fails its delivery at once, saying why; a transient
        refusal raises, and the whole batch is tried again."""
        results = await send_isolated(self._producer, self._settings.delivery_topic,
                                      [(task.kafka_key, task.encode()) for task in tasks])
        refused = [(task, exc) for task, exc in zip(tasks, results, strict=True) if exc is not None]
        if refused:
            await fail_undeliverable(self._pool, [(t.delivery_id, f"Kafka refused the delivery task: {describe(e)}")
                                                  for t, e in refused])
            metrics.POISON_RECORDS.labels("router", "failed").inc(len(refused))
            for task, exc in refused:
                log.error("delivery task refused by Kafka; delivery marked failed (%s)", describe(exc),
                          extra={"event_id": task.event_id, "webhook_id": task.webhook_id})

    async def _store(self, good: list[tuple[SourceRecord, DomainEvent, str]],
                     all_matches: list[tuple[str, DomainEvent]]) -> tuple[
            list[DeliveryTask], list[tuple[SourceRecord, Rejection]]]:
        """Store the events and their matches; return the delivery tasks to enqueue (pending
        deliveries only) and the events PostgreSQL refused for good, each with the database's reason
        (isolated by halving the batch until the refused events stand alone; everything else is stored)."""
        tasks: list[DeliveryTask] = []
        unstorable: list[tuple[SourceRecord, Rejection]] = []

        async def write(part: Sequence[tuple[SourceRecord, DomainEvent, str]]) -> None:
            keys = {(event.organization_id, event.id) for _, event, _ in part}
            matches = all_matches if len(part) == len(good) else [
                (hook_id, event) for hook_id, event in all_matches if (event.organization_id, event.id) in keys]
            rows, duplicates = await store_batch(self._store_pool, part, matches, self._ordered(matches),
                                                 lookups=self._pool)
            if duplicates:
                metrics.EVENTS_DUPLICATE.inc(duplicates)
            tasks.extend(self._tasks_for(part, matches, rows))

        async def refuse(item: tuple[SourceRecord, DomainEvent, str], exc: BaseException) -> None:
            unstorable.append((item[0], Rejection("unstorable", f"PostgreSQL refused the event: {describe(exc)}")))

        await isolate_poison(good, write, refuse)
        return tasks, unstorable

    @staticmethod
    def _tasks_for(part, matches, rows) -> list[DeliveryTask]:
        by_key = {(event.organization_id, event.id): (event, body) for _, event, body in part}
        # a webhook matches only its own organization's events; a replay's rows carry theirs
        organization_of = {webhook_id: event.organization_id for webhook_id, event in matches}
        tasks = []
        for row in rows:
            if not row["first_in_flight"]:
                # a replay of an event whose delivery already moved on (attempted, finished, or waiting
                # in the retry schedule): the pump or the sender has it, enqueueing it again would only
                # repeat attempt 1
                continue
            organization_id = row["organization_id"]
            if organization_id is None:
                organization_id = organization_of[row["webhook_id"]]
            event, body = by_key[(organization_id, row["event_id"])]
            tasks.append(DeliveryTask(
                delivery_id=row["id"], webhook_id=row["webhook_id"], organization_id=event.organization_id,
                event_id=event.id, event_type=event.type, store_id=event.store_id, occurred_at=event.occurred_at,
                attempt=1, retry_index=0, manual=False, body=body, ordered=row["ordered"],
            ))
        return tasks

    def _ordered(self, matches: Sequence[tuple[str, DomainEvent]]) -> set[str]:
        """The matched webhooks whose ordering is per_resource (as the directory knows them now:
        a change applies to events routed after it)."""
        ordered = set()
        for webhook_id in {webhook_id for webhook_id, _ in matches}:
            hook = self._directory.get(webhook_id)
            if hook is not None and hook.ordered:
                ordered.add(webhook_id)
        return ordered

    async def _report_lag(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(5)
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                end = consumer.last_stable_offset(tp) if highwater is None else highwater
                # What this replica committed (known locally: asking the coordinator for each of the
                # partitions every few seconds was most of an idle router's traffic), or, before its
                # first commit of the partition, where it is reading (nothing routed there yet).
                committed = self._committed.get(tp)
                if committed is None:
                    with contextlib.suppress(Exception):
                        committed = await consumer.position(tp)
                if end is not None and committed is not None:
                    metrics.CONSUMER_LAG.labels(self._settings.router_group, tp.topic, tp.partition).set(
                        max(0, end - committed))


async def run_router(settings: Settings, stop: asyncio.Event, *, pool: asyncpg.Pool,
                     directory: WebhookDirectory) -> None:
    """Run one router replica until ``stop`` is set."""
    specs = topic_specs(settings)
    await apply_topic_specs(settings.kafka_bootstrap_servers, [s for s in specs if s.owned])
    try:
        # Upstream owns the source topics; creating missing ones keeps a fresh setup quiet and lets
        # the consumer see them at once. Without the right to create topics, just wait for them.
        await apply_topic_specs(settings.kafka_bootstrap_servers, [s for s in specs if not s.owned])
    except KafkaError as exc:
        log.warning("could not create missing source topics (%s); waiting for them to appear", exc)
    # min_size 0: connected on first use, so a PostgreSQL outage at start-up is waited out like any
    # other (store calls are retried); one batch is stored at a time, halved ones included.
    async with open_producer(settings.kafka_bootstrap_servers) as producer, \
            open_pool(settings.database_url, min_size=0, max_size=2, settings=GENERIC_PLAN_SETTINGS) as store_pool:
        await Router(settings, pool, directory, producer, store_pool=store_pool).run(stop)
