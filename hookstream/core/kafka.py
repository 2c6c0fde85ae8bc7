"""Kafka clients with hookstream's defaults: manual commits, acks from all replicas. The topics
themselves (names, partitions, configs) are specified in hookstream/core/topics.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient, ConnectionGroup, CoordinationType
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
    for_code,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.commit import OffsetFetchRequest

from hookstream.core.errors import is_transient
from hookstream.core.topics import (
    DEAD_LETTER_MAX_MESSAGE_BYTES,
    DELIVERY_MAX_MESSAGE_BYTES,
    INTERNAL_TOPIC_PARTITIONS,
    TopicSpec,
    apply_topic_specs,
)

log = logging.getLogger(__name__)
# Record headers as aiokafka takes them: (name, value) pairs.
Headers = list[tuple[str, bytes]]

# Any task the delivery topic accepts (hookstream.core.topics.DELIVERY_MAX_MESSAGE_BYTES) can be fetched.
FETCH_MAX_PARTITION_BYTES = DELIVERY_MAX_MESSAGE_BYTES
# Record and batch overhead Kafka adds around a value (key, headers, batch header), with room to spare.
RECORD_OVERHEAD_BYTES = 4 * 1024


# How long a batch of sends may wait for acknowledgements before the producer is presumed stuck.
ACK_TIMEOUT_S = 30.0
# After a broker restart an idempotent producer can be left with sequence state the broker no longer
# accepts; every retry fails the same way until the producer starts over with a new producer id.
PRODUCER_STATE_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced)
_STOP_STUCK_PRODUCER_S = 5.0
# The producer's own key partitioner (murmur2, as Java clients), so that send_many and send agree.
_PARTITIONER = DefaultPartitioner()
# How long a consumer's start waits for its group coordinator (wait_for_group_coordinator) before it
# leaves the waiting to aiokafka; between lookups, COORDINATOR_POLL_S.
COORDINATOR_WAIT_S = 60.0
COORDINATOR_POLL_S = 0.2
COORDINATOR_SAY_AFTER_S = 10.0  # a wait longer than this is said once, at INFO


class RenewableProducer:
    """An AIOKafkaProducer that can be replaced when it stops making progress.

    After a broker restart an aiokafka producer can keep answering NotLeaderForPartitionError
    without ever refreshing to the new leader (aio-libs/aiokafka#1018), and its sends then never
    complete. Callers bound their wait for acknowledgements with :meth:`acked` (``ACK_TIMEOUT_S``);
    on timeout the producer is replaced and the caller retries its batch: duplicates, never a loss.
    """

    def __init__(self, bootstrap: str, config: dict[str, Any]) -> None:
        self._bootstrap = bootstrap
        self._config = config
        self._producer: AIOKafkaProducer | None = None
        self._renewing = asyncio.Lock()

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(bootstrap_servers=self._bootstrap, **self._config)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   headers: Headers | None = None) -> asyncio.Future[Any]:
        assert self._producer is not None
        future: asyncio.Future[Any] = await self._producer.send(topic, value=value, key=key, headers=headers)
        return future

    async def send_many(self, topic: str, records: list[tuple[bytes | None, bytes]]) -> list[asyncio.Future[Any]]:
        """Send ``(key, value)`` records, partitioned by key as :meth:`send` does, as one producer
        batch per partition (a third of the CPU of a send per record); returns a future per record,
        which records of one batch share (the broker accepts or refuses a batch whole). A record
        too large for a batch goes on its own, through :meth:`send` and its size check."""
        assert self._producer is not None
        if not records:
            return []
        producer = self._producer
        partitions = sorted(await producer.partitions_for(topic))
        limit = self._config.get("max_batch_size", 16384) - RECORD_OVERHEAD_BYTES
        futures: list[asyncio.Future[Any]] = []
        owners: list[int] = []  # per record, the index in ``futures`` of the send that carries it
        open_batches: dict[int, tuple[Any, list[int]]] = {}  # partition -> (batch, record indexes)
        partition_of: dict[bytes | None, int] = {}

        async def flush(partition: int) -> None:
            batch, members = open_batches.pop(partition)
            futures.append(await producer.send_batch(batch, topic, partition=partition))
            for i in members:
                owners[i] = len(futures) - 1

        try:
            for i, (key, value) in enumerate(records):
                owners.append(-1)
                partition = partition_of.get(key)
                if partition is None:  # murmur2 is pure Python: once per key and call (status records share keys)
                    partition = partition_of[key] = _PARTITIONER(key, partitions, partitions)
                if len(value) + len(key or b"") > limit:
                    if partition in open_batches:  # what came before it on its partition goes first
                        await flush(partition)
                    futures.append(await producer.send(topic, value=value, key=key, partition=partition))
                    owners[i] = len(futures) - 1
                    continue
                if partition not in open_batches:
                    open_batches[partition] = (producer.create_batch(), [])
                batch, members = open_batches[partition]
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start anew
                    await flush(partition)
                    batch, members = open_batches[partition] = (producer.create_batch(), [])
                    batch.append(key=key, value=value, timestamp=None)
                members.append(i)
            for partition in list(open_batches):
                await flush(partition)
        except ProducerClosed as exc:
            discard(futures)
            if self._producer is not producer:  # renewed by another caller while this one was sending
                raise KafkaTimeoutError("the producer was replaced mid-send; send again") from exc
            raise
        except BaseException:
            discard(futures)
            raise
        return [futures[owner] for owner in owners]

    async def send_and_wait(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                            headers: Headers | None = None) -> Any:
        """Send one record and return its RecordMetadata once acknowledged."""
        [metadata] = await self.acked([await self.send(topic, value=value, key=key, headers=headers)])
        return metadata

    async def acked(self, futures: list[asyncio.Future[Any]], *, return_exceptions: bool = False) -> list[Any]:
        """Wait for every send's acknowledgement; renews the producer and raises TimeoutError when
        they do not all arrive within ``ACK_TIMEOUT_S``."""
        stuck_on = self._producer
        try:
            async with asyncio.timeout(ACK_TIMEOUT_S):
                results = await asyncio.gather(*futures, return_exceptions=return_exceptions)
        except (TimeoutError, *PRODUCER_STATE_ERRORS):
            await self.renew(stuck_on)
            raise
        if any(isinstance(r, PRODUCER_STATE_ERRORS) for r in results):
            await self.renew(stuck_on)
        return results

    async def renew(self, stuck: AIOKafkaProducer | None) -> None:
        """Replace ``stuck`` with a started producer. If the broker cannot be reached yet, the error
        propagates and the old producer stays in place until the caller's next retry renews it."""
        async with self._renewing:
            if self._producer is not stuck:
                return  # another caller already replaced it
            log.warning("Kafka producer stuck (no acknowledgement within %.0fs, or its idempotence state was"
                        " lost); replacing it", ACK_TIMEOUT_S)
            fresh = AIOKafkaProducer(bootstrap_servers=self._bootstrap, **self._config)
            try:
                await fresh.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await fresh.stop()  # release what a failed start opened
                raise
            old, self._producer = self._producer, fresh
            if old is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(old.stop(), _STOP_STUCK_PRODUCER_S)


async def send_isolated(producer: RenewableProducer, topic: str,
                        records: list[tuple[bytes | None, bytes]]) -> list[Exception | None]:
    """Send ``(key, value)`` records and wait for every acknowledgement; returns, per record, None or
    the permanent error Kafka refused it with. A transient failure raises (the caller retries all).

    The broker refuses whole producer batches, so a record refused in a batch is sent once more on
    its own: only the records that Kafka refuses by themselves are reported, never their neighbours.
    """
    def check(result: object) -> Exception | None:
        if not isinstance(result, BaseException):
            return None
        if is_transient(result) or not isinstance(result, Exception):
            raise result
        return result

    sends = await producer.send_many(topic, records)
    outcomes = [check(r) for r in await producer.acked(sends, return_exceptions=True)]
    for i, outcome in enumerate(outcomes):
        if outcome is not None:
            key, value = records[i]
            [alone] = await producer.acked([await producer.send(topic, value=value, key=key)],
                                           return_exceptions=True)
            outcomes[i] = check(alone)
    return outcomes


def discard(futures: list[asyncio.Future[Any]]) -> None:
    """Let go of send futures whose outcome no longer matters, without waiting for them (a stuck
    producer may never complete them) and without leaving an exception unretrieved."""
    for future in futures:
        if future.done():
            if not future.cancelled():
                future.exception()
        else:
            future.add_done_callback(lambda f: f.cancelled() or f.exception())


@contextlib.asynccontextmanager
async def open_producer(bootstrap: str, **overrides: Any) -> AsyncIterator[RenewableProducer]:
    """A started producer, stopped (and flushed) on exit. acks=all: a send is durable when acknowledged."""
    config = {"acks": "all", "linger_ms": 0, "max_batch_size": 256 * 1024, "enable_idempotence": True,
              "max_request_size": DEAD_LETTER_MAX_MESSAGE_BYTES, "request_timeout_ms": 30_000}
    config.update(overrides)
    producer = RenewableProducer(bootstrap, config)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def commit_offsets(consumer: AIOKafkaConsumer, offsets: dict[Any, Any], *, owner: str, otherwise: str) -> bool:
    """Commit ``offsets``; True when committed. A failed commit (the partitions moved to another
    replica, or the broker is away) is logged, ``owner`` and ``otherwise`` saying whose and what
    follows: whatever stays uncommitted is replayed from the last commit, a duplicate, never a loss."""
    try:
        await consumer.commit(offsets)
    except KafkaError as exc:
        log.warning("%s offset commit failed (%s); %s", owner, exc, otherwise)
        return False
    return True


async def wait_for_group_coordinator(bootstrap: str, group_id: str, *,
                                    timeout_s: float = COORDINATOR_WAIT_S) -> bool:
    """Wait until the brokers name a coordinator for ``group_id`` and it answers for the group's
    offsets; True when it did.

    On a fresh broker the first lookup makes it create ``__consumer_offsets``; until that topic's
    partitions are led it answers COORDINATOR_NOT_AVAILABLE, and then, while the coordinator loads the
    partition, COORDINATOR_LOAD_IN_PROGRESS / NOT_COORDINATOR. aiokafka's consumer logs the first at
    ERROR and the others as a wall of "Marking the coordinator dead" warnings on every first start,
    though nothing is wrong. Those retriable answers are waited out here (logged at DEBUG). Anything else (the broker unreachable, a
    non-retriable error such as a refused authorization, ``timeout_s`` passed) returns False and is
    left to the consumer's own start, which reports and handles it as it always did.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    said = False
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    try:
        await client.bootstrap()
        while True:
            try:
                coordinator = await client.coordinator_lookup(CoordinationType.GROUP, group_id)
                # A read of the group's committed offsets (none yet, for a new group): answered only
                # once the coordinator has loaded the group's partition of __consumer_offsets.
                response = await client.send(coordinator, OffsetFetchRequest(group_id, None),
                                             group=ConnectionGroup.COORDINATION)
                code = getattr(response, "error_code", 0)
                if code:
                    raise for_code(code)()
                return True
            except KafkaError as exc:
                waited = loop.time() - started
                if not exc.retriable or waited > timeout_s:
                    return False
                if waited > COORDINATOR_SAY_AFTER_S and not said:
                    said = True
                    log.info("still waiting for the coordinator of consumer group %s (%s)", group_id, exc)
                else:
                    log.debug("no coordinator for consumer group %s yet (%s); waiting", group_id, exc)
            await asyncio.sleep(COORDINATOR_POLL_S)
    except KafkaError:
        return False
    finally:
        await client.close()


class Consumer(AIOKafkaConsumer):  # type: ignore[misc]  # aiokafka has no type information
    """An AIOKafkaConsumer whose ``start`` first waits for the group coordinator
    (:func:`wait_for_group_coordinator`), so that a normal first start logs no errors."""

    def __init__(self, *, bootstrap_servers: str, **config: Any) -> None:
        super().__init__(bootstrap_servers=bootstrap_servers, **config)
        self._hookstream_bootstrap = bootstrap_servers
        self._hookstream_group = str(config["group_id"])

    async def start(self) -> None:
        await wait_for_group_coordinator(self._hookstream_bootstrap, self._hookstream_group)
        await super().start()


def make_consumer(bootstrap: str, group_id: str, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer with manual commits that starts from the earliest offset for a new group."""
    config = {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        # A fetch returns as soon as any record has arrived and otherwise waits on the broker (long poll):
        # one record at a time when it is quiet (no wait added to a hop), and under load whatever piled
        # up while the previous batch was being worked on, so batches grow with the rate by themselves.
        # The earlier 64 KiB / 10 ms made every hop wait 10 ms at low rates and an idle consumer fetch
        # 100 times a second (BENCHMARKS.md, latency and cost).
        "fetch_max_wait_ms": 500,
        "fetch_min_bytes": 1,
        "max_partition_fetch_bytes": FETCH_MAX_PARTITION_BYTES,
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 1_000,
        "max_poll_interval_ms": 300_000,
        "isolation_level": "read_committed",
    }
    config.update(overrides)
    return Consumer(bootstrap_servers=bootstrap, **config)


async def ensure_topics(bootstrap: str, topics: Iterable[str], *, partitions: int = INTERNAL_TOPIC_PARTITIONS,
                        configs: dict[str, dict[str, str]] | None = None) -> None:
    """Create missing topics of one's own (tests, the bench); ``configs`` gives per-topic settings for
    the ones created. hookstream's own topics come from hookstream.core.topics.topic_specs instead."""
    await apply_topic_specs(bootstrap, [TopicSpec(t, partitions, (configs or {}).get(t, {})) for t in topics])
