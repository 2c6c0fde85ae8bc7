"""Test helpers that act through the real database and broker: organizations, webhooks, events, topics."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from hookstream.core.orgs import create_organization
from hookstream.core.publish import make_event
from hookstream.core.signing import generate_secret
from hookstream.core.validation import EVENT_TYPES


def isolated_topics(names: dict[str, str]) -> list[str]:
    """The topics named in ``isolated_names``' result (or any environment holding them)."""
    return [*names["HOOKSTREAM_SOURCE_TOPICS"].split(","), names["HOOKSTREAM_STATUS_TOPIC"],
            names["HOOKSTREAM_DEAD_LETTER_TOPIC"], names["HOOKSTREAM_DELIVERY_TOPIC"]]


async def delete_topics(bootstrap: str, topics: Iterable[str]) -> None:
    """Delete a test's own topics, those that exist. Left behind, every run's topics would pile up in
    the local broker (tens of partitions per test) until it takes minutes to start."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        doomed = set(topics) & set(await admin.list_topics())
        if doomed:
            await admin.delete_topics(sorted(doomed))
    finally:
        await admin.close()


def isolated_names(uid: str) -> dict[str, str]:
    """Topics and consumer groups of one's own, so concurrent tests and bench runs never share data."""
    return {
        "HOOKSTREAM_SOURCE_TOPICS": f"{uid}.products,{uid}.orders",
        "HOOKSTREAM_STATUS_TOPIC": f"{uid}.delivery-status",
        "HOOKSTREAM_DEAD_LETTER_TOPIC": f"{uid}.dead-letter",
        "HOOKSTREAM_DELIVERY_TOPIC": f"{uid}.deliveries",
        "HOOKSTREAM_ROUTER_GROUP": f"{uid}-router",
        "HOOKSTREAM_SENDER_GROUP": f"{uid}-sender",
    }


@dataclass(frozen=True)
class ApiOrg:
    """An organization as an API client sees it: its id and the headers that carry its key."""

    id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def make_org(conn: asyncpg.Connection, name: str, stores: Iterable[str] = ("store_1", "store_2")) -> tuple[str, str]:
    org_id, key = await create_organization(conn, name)
    for store in stores:
        await conn.execute("INSERT INTO stores (organization_id, id, name) VALUES ($1, $2, $3)", org_id, store, store)
    return org_id, key


async def make_webhook(conn: asyncpg.Connection, org_id: str, url: str, *, event_types: Iterable[str] = EVENT_TYPES,
                       store_ids: Iterable[str] = ("store_1",), enabled: bool = True) -> tuple[str, str]:
    """Insert a webhook directly (as the API would); returns (webhook id, secret)."""
    webhook_id = f"wh_{uuid.uuid4().hex[:16]}"
    secret = generate_secret()
    await conn.execute(
        "INSERT INTO webhooks (id, organization_id, url, event_types, store_ids, enabled, secret)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        webhook_id, org_id, url, list(event_types), list(store_ids), enabled, secret)
    return webhook_id, secret


def sample_data(event_type: str, n: int = 1) -> dict:
    if event_type.startswith("product."):
        return {"product": {"id": f"prod_{n}", "title": f"Product {n}"}}
    return {"order": {"id": f"ord_{n}", "total": "42.10", "currency": "USD"}}


def sample_event(event_type: str, org_id: str, store_id: str, n: int = 1, event_id: str | None = None) -> dict:
    return make_event(event_type, organization_id=org_id, store_id=store_id, data=sample_data(event_type, n),
                      event_id=event_id)


async def delivery_states(conn: asyncpg.Connection, webhook_id: str) -> dict[str, tuple[str, int]]:
    rows = await conn.fetch("SELECT event_id, status, attempts FROM deliveries WHERE webhook_id = $1", webhook_id)
    return {r["event_id"]: (r["status"], r["attempts"]) for r in rows}


async def count_final(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM deliveries WHERE status <> 'pending'")


async def read_topic(bootstrap: str, topic: str, *, expect: int, timeout_s: float = 30.0) -> list:
    """Read a topic from the beginning until ``expect`` records arrived (or the timeout); returns the records."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records = []
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while len(records) < expect:
                    batch = await consumer.getmany(timeout_ms=200)
                    for messages in batch.values():
                        records.extend(messages)
    finally:
        await consumer.stop()
    return records


async def read_topic_to_end(bootstrap: str, topic: str, *, timeout_s: float = 60.0) -> list:
    """Read a topic from the beginning up to the end offsets it has when the read starts: everything
    already acknowledged, however many duplicates it holds. Raises TimeoutError if that takes longer
    than ``timeout_s`` (a count-based stop cannot serve here: duplicates on one partition would end
    the read before the other partitions are read)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records = []
    try:
        async with asyncio.timeout(timeout_s):
            ends: dict = {}
            while not ends or [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(messages)
                if not ends and consumer.assignment():  # without a group: every partition, once metadata is in
                    ends = await consumer.end_offsets(list(consumer.assignment()))
    finally:
        await consumer.stop()
    return records


def status_records(records) -> list[dict]:
    return [orjson.loads(r.value) for r in records]
