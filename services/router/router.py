"""The router: domain events in, one delivery per matched webhook out.

consume_batches -> route_batch -> validate (services.core.validation) -> dead_letter | store_events
-> match (WebhookDirectory) -> store_deliveries -> enqueue_deliveries -> commit.

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
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from services.core import metrics
from services.core.db import TRANSIENT_DB_ERRORS
from services.core.kafka import (
    RenewableProducer,
    commit_offsets,
    ensure_topics,
    internal_topic_configs,
    make_consumer,
    open_producer,
)
from services.core.model import DeliveryTask, parse_rfc3339
from services.core.settings import Settings
from services.core.tasks import cancel_and_wait
from services.core.validation import DomainEvent, Rejection, validate_event
from services.core.webhooks import WebhookDirectory

log = logging.getLogger(__name__)

MAX_BATCH_RECORDS = 1000
COMMIT_INTERVAL_S = 0.2
_BACKOFF_START_S = 0.2
_BACKOFF_MAX_S = 5.0


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
        ("hookstream-error", rejection.detail.encode()[:1000]),
        ("hookstream-source-topic", record.topic.encode()),
        ("hookstream-source-partition", str(record.partition).encode()),
        ("hookstream-source-offset", str(record.offset).encode()),
        *record.headers,
    ]


# One statement, so one round trip and atomic without an explicit transaction: store each event
# once (the no-op update returns an existing row with its first source position), keep the events
# this record may route (new, or a replay of the same position), and insert their deliveries.
# Returns the deliveries, then one row with a NULL id per event left out as a second publish.
_STORE_BATCH_SQL = """
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
                         $7::text[], $8::int[], $9::bigint[])
        AS i(organization_id, event_id, event_type, store_id, occurred_at, body,
             source_topic, source_partition, source_offset)
), stored AS (
    INSERT INTO events AS e (organization_id, event_id, event_type, store_id, occurred_at, body,
                             source_topic, source_partition, source_offset)
    SELECT * FROM input
    ON CONFLICT (organization_id, event_id) DO UPDATE SET source_offset = e.source_offset
    RETURNING e.seq, e.organization_id, e.event_id, e.event_type, e.store_id,
              e.source_topic, e.source_partition, e.source_offset
), routable AS (
    SELECT s.* FROM stored s JOIN input i USING (organization_id, event_id)
    WHERE (s.source_topic, s.source_partition, s.source_offset)
        = (i.source_topic, i.source_partition, i.source_offset)
), routed AS (
    INSERT INTO deliveries AS d (webhook_id, event_seq, event_id, event_type, store_id)
    SELECT m.webhook_id, r.seq, r.event_id, r.event_type, r.store_id
    FROM unnest($10::text[], $11::text[], $12::text[]) AS m(webhook_id, organization_id, event_id)
    JOIN routable r USING (organization_id, event_id)
    ON CONFLICT (webhook_id, event_id) DO UPDATE SET webhook_id = EXCLUDED.webhook_id
    RETURNING d.id, d.webhook_id, d.event_id, d.status
)
SELECT id, webhook_id, event_id, status FROM routed
UNION ALL
SELECT NULL, NULL, s.event_id, NULL FROM stored s
WHERE NOT EXISTS (SELECT 1 FROM routable r
                  WHERE r.organization_id = s.organization_id AND r.event_id = s.event_id)
"""


async def store_batch(
    conn: asyncpg.Connection | asyncpg.Pool,
    events: Sequence[tuple[SourceRecord, DomainEvent, str]],
    matches: Sequence[tuple[str, DomainEvent]],
) -> tuple[list[asyncpg.Record], int]:
    """Store events idempotently and the deliveries of ``matches`` (webhook id, event) for the events
    this record may route; returns (delivery rows, number of events left out as second publishes).

    An event is routed when this record is the one that first carried its id (new, or a replay of
    the same source position after a crash); a second publish of the id is left out.
    """
    rows = await conn.fetch(
        _STORE_BATCH_SQL,
        [e.organization_id for _, e, _ in events],
        [e.id for _, e, _ in events],
        [e.type for _, e, _ in events],
        [e.store_id for _, e, _ in events],
        [parse_rfc3339(e.occurred_at) for _, e, _ in events],
        [body for _, _, body in events],
        [r.topic for r, _, _ in events],
        [r.partition for r, _, _ in events],
        [r.offset for r, _, _ in events],
        [webhook_id for webhook_id, _ in matches],
        [e.organization_id for _, e in matches],
        [e.id for _, e in matches],
    )
    deliveries = [row for row in rows if row["id"] is not None]
    return deliveries, len(rows) - len(deliveries)


class Router:
    """One router replica. ``run()`` until ``stop`` is set; then it finishes the batch in hand and commits."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, directory: WebhookDirectory,
                 producer: RenewableProducer) -> None:
        self._settings = settings
        self._pool = pool
        self._directory = directory
        self._producer = producer
        self._batch_lock = asyncio.Lock()
        self._commit_lock = asyncio.Lock()
        self._done: dict[TopicPartition, int] = {}  # next offset to commit, per partition

    async def run(self, stop: asyncio.Event) -> None:
        consumer = make_consumer(self._settings.kafka_bootstrap_servers, self._settings.router_group)
        router = self

        class CommitOnRevoke(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked):
                # Wait for the batch in hand, then commit what is done before the partitions move on.
                async with router._batch_lock:
                    await router._commit_done(consumer, set(revoked))
                    metrics.forget_lag(router._settings.router_group, revoked)

            async def on_partitions_assigned(self, assigned):
                pass

        consumer.subscribe(list(self._settings.source_topics), listener=CommitOnRevoke())
        await consumer.start()
        helpers = [asyncio.create_task(self._report_lag(consumer, stop), name="router-lag"),
                   asyncio.create_task(self._commit_periodically(consumer, stop), name="router-commit")]
        try:
            while not stop.is_set():
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
            for helper in helpers:
                await cancel_and_wait(helper)
            await consumer.stop()

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
            await commit_offsets(consumer, offsets, owner="router", otherwise="those batches will be replayed")
            for tp, offset in offsets.items():
                if self._done.get(tp) == offset:
                    del self._done[tp]

    async def route_batch(self, records: Sequence[SourceRecord], stop: asyncio.Event) -> bool:
        """Validate, store, match and enqueue one batch, retrying until it is durable (never skipped).

        Returns False only when ``stop`` is set before that succeeded: the caller must not commit.
        """
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
            seen.add(key)
            good.append((record, result, build_webhook_body(result)))

        delay = _BACKOFF_START_S
        while True:
            try:
                await self._deliver_batch(good, rejected)
                return True
            except (*TRANSIENT_DB_ERRORS, KafkaError, TimeoutError) as exc:
                log.warning("routing a batch of %d records failed (%s: %s); retrying in %.1fs",
                            len(records), type(exc).__name__, exc, delay)
            if stop.is_set():
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)

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
        self, good: list[tuple[SourceRecord, DomainEvent, str]], rejected: list[tuple[SourceRecord, Rejection]]
    ) -> None:
        # Dead-letter copies go out while the batch is stored; most batches have none.
        dead_letters = asyncio.ensure_future(self._dead_letter(rejected)) if rejected else None
        sends: list[asyncio.Future] = []
        tasks: list[DeliveryTask] = []
        try:
            if good:
                tasks = await self._store(good)
            for task in tasks:
                sends.append(await self._producer.send(
                    self._settings.delivery_topic, value=task.encode(), key=task.kafka_key))
            if sends:
                await self._producer.acked(sends)
        finally:
            if dead_letters is not None:
                await dead_letters
        for record, rejection in rejected:
            metrics.EVENTS_REJECTED.labels(rejection.reason).inc()
            log.info("dead-lettered %s[%d]@%d: %s (%s)", record.topic, record.partition, record.offset,
                     rejection.reason, rejection.detail)
        for task in tasks:
            metrics.DELIVERIES_SCHEDULED.labels(task.event_type).inc()

    async def _store(self, good: list[tuple[SourceRecord, DomainEvent, str]]) -> list[DeliveryTask]:
        """Match, store, and return the delivery tasks to enqueue (pending deliveries only)."""
        matches = [(hook.id, event) for _, event, _ in good
                   for hook in self._directory.match(event.organization_id, event.type, event.store_id)]
        rows, duplicates = await store_batch(self._pool, good, matches)
        if duplicates:
            metrics.EVENTS_DUPLICATE.inc(duplicates)
        bodies = {(event.organization_id, event.id): body for _, event, body in good}
        by_pair = {(webhook_id, event.id): event for webhook_id, event in matches}
        tasks = []
        for row in rows:
            if row["status"] != "pending":
                continue  # a replay of an event whose delivery already finished
            event = by_pair[(row["webhook_id"], row["event_id"])]
            tasks.append(DeliveryTask(
                delivery_id=row["id"], webhook_id=row["webhook_id"], organization_id=event.organization_id,
                event_id=event.id, event_type=event.type, store_id=event.store_id, occurred_at=event.occurred_at,
                attempt=1, retry_index=0, manual=False, body=bodies[(event.organization_id, event.id)],
            ))
        return tasks

    async def _report_lag(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(5)
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                position = consumer.last_stable_offset(tp) if highwater is None else highwater
                with contextlib.suppress(Exception):
                    committed = await consumer.committed(tp)
                    if position is not None and committed is not None:
                        metrics.CONSUMER_LAG.labels(self._settings.router_group, tp.topic, tp.partition).set(
                            max(0, position - committed))


async def run_router(settings: Settings, stop: asyncio.Event, *, pool: asyncpg.Pool,
                     directory: WebhookDirectory) -> None:
    """Run one router replica until ``stop`` is set."""
    await ensure_topics(settings.kafka_bootstrap_servers,
                        [settings.delivery_topic, settings.dead_letter_topic, settings.status_topic],
                        configs=internal_topic_configs(settings.dead_letter_topic))
    try:
        # Upstream owns the source topics; creating missing ones keeps a fresh setup quiet and lets
        # the consumer see them at once. Without the right to create topics, just wait for them.
        await ensure_topics(settings.kafka_bootstrap_servers, settings.source_topics)
    except KafkaError as exc:
        log.warning("could not create missing source topics (%s); waiting for them to appear", exc)
    async with open_producer(settings.kafka_bootstrap_servers) as producer:
        await Router(settings, pool, directory, producer).run(stop)
