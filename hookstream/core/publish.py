"""Publishing domain events to Kafka, for upstream teams, demos and tests.

``publish_event`` validates the event exactly as the router will, then sends it to the topic for
its kind (product.* or order.*) keyed by the resource id, and returns where it landed.
``unknown_to_database`` says whether PostgreSQL knows the event's organization and store (an event of
an unknown one is routed to no webhook), for a warning before publishing.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from hookstream.core.kafka import RenewableProducer
from hookstream.core.model import format_rfc3339
from hookstream.core.validation import DomainEvent, Rejection, validate_event


class PublishError(ValueError):
    """The event would be rejected by the router; the message says why."""


@dataclass(frozen=True, slots=True)
class Published:
    topic: str
    partition: int
    offset: int
    event_id: str


# How long `hookstream publish` waits for PostgreSQL to check the organization and store.
CHECK_TIMEOUT_S = 5.0


async def unknown_to_database(database_url: str, organization_id: str, store_id: str) -> str | None:
    """What PostgreSQL does not know of (``organization X``, ``store Y of organization X``), or None.
    Connection errors (unreachable, refused, timed out) propagate."""
    conn = await asyncpg.connect(database_url, timeout=CHECK_TIMEOUT_S)
    try:
        row = await conn.fetchrow(
            "SELECT EXISTS (SELECT 1 FROM organizations WHERE id = $1) AS org,"
            " EXISTS (SELECT 1 FROM stores WHERE organization_id = $1 AND id = $2) AS store",
            organization_id, store_id, timeout=CHECK_TIMEOUT_S)
    finally:
        await conn.close()
    if not row["org"]:
        return f"organization {organization_id!r}"
    if not row["store"]:
        return f"store {store_id!r} of organization {organization_id!r}"
    return None


def topic_for(event_type: str, source_topics: tuple[str, ...]) -> str:
    """product.* go to the first source topic, order.* to the second (``aiq.products``, ``aiq.orders``)."""
    if event_type.startswith("product.") or len(source_topics) == 1:
        return source_topics[0]
    return source_topics[1]


def make_event(event_type: str, *, organization_id: str, store_id: str, data: dict[str, Any],
               event_id: str | None = None, occurred_at: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{secrets.token_hex(10)}",
        "type": event_type,
        "occurred_at": occurred_at or format_rfc3339(dt.datetime.now(dt.UTC), timespec="milliseconds"),
        "organization_id": organization_id,
        "store_id": store_id,
        "data": data,
    }


def resource_key(event: dict[str, Any]) -> bytes:
    """The record key: the product or order id, falling back to the event id."""
    data = event.get("data") or {}
    resource = data.get("product") or data.get("order") or {}
    return str(resource.get("id") or event["id"]).encode()


async def publish_event(producer: RenewableProducer, event: dict[str, Any], source_topics: tuple[str, ...],
                        *, max_bytes: int = 256 * 1024) -> Published:
    """Validate and publish one domain event; raises :class:`PublishError` if the router would reject it."""
    value = orjson.dumps(event)
    result = check_publishable(value, max_bytes=max_bytes)
    topic = topic_for(result.type, source_topics)
    meta = await producer.send_and_wait(topic, value=value, key=resource_key(event))
    return Published(topic, meta.partition, meta.offset, result.id)


def check_publishable(value: bytes, *, max_bytes: int = 256 * 1024) -> DomainEvent:
    """The event as the router will read it; raises :class:`PublishError` if the router would reject it."""
    result = validate_event(value, max_bytes=max_bytes)
    if isinstance(result, Rejection):
        raise PublishError(f"{result.reason}: {result.detail}")
    return result
