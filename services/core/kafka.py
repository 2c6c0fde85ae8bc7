"""Kafka clients with hookstream's defaults: manual commits, acks from all replicas, topics ensured."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)

# Enough partitions that several sender replicas share the delivery topic.
INTERNAL_TOPIC_PARTITIONS = 12
# Room on the dead-letter topic for a copy of a record at the broker's default limit plus headers.
DEAD_LETTER_MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def internal_topic_configs(dead_letter_topic: str) -> dict[str, dict[str, str]]:
    return {dead_letter_topic: {"max.message.bytes": str(DEAD_LETTER_MAX_MESSAGE_BYTES)}}


@contextlib.asynccontextmanager
async def open_producer(bootstrap: str, **overrides) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer, stopped (and flushed) on exit. acks=all: a send is durable when awaited."""
    config = {"acks": "all", "linger_ms": 2, "max_batch_size": 256 * 1024, "enable_idempotence": True,
              "max_request_size": DEAD_LETTER_MAX_MESSAGE_BYTES, "request_timeout_ms": 30_000}
    config.update(overrides)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **config)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


def make_consumer(bootstrap: str, group_id: str, **overrides) -> AIOKafkaConsumer:
    """A consumer with manual commits that starts from the earliest offset for a new group."""
    config = {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": 50,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 1_000,
        "max_poll_interval_ms": 300_000,
        "isolation_level": "read_committed",
    }
    config.update(overrides)
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, **config)


async def ensure_topics(bootstrap: str, topics: Iterable[str], *, partitions: int = INTERNAL_TOPIC_PARTITIONS,
                        configs: dict[str, dict[str, str]] | None = None) -> None:
    """Create the topics hookstream owns if they are missing (existing ones are left as they are);
    ``configs`` gives per-topic settings for the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            try:
                await admin.create_topics([NewTopic(t, partitions, 1, topic_configs=(configs or {}).get(t))
                                           for t in missing])
            except TopicAlreadyExistsError:
                pass  # another process won the race
            log.info("created topics %s", ", ".join(missing))
    finally:
        await admin.close()
