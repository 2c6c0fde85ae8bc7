"""Messages between pipeline stages: frozen, versioned values.

router --DeliveryTask--> delivery topic --> sender --AttemptResult--> AttemptRecord --> PostgreSQL + status topic
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import orjson

DELIVERY_TASK_VERSION = 1


def parse_rfc3339(value: str) -> dt.datetime:
    """An RFC 3339 timestamp (``Z`` or an offset) as an aware datetime."""
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))


class BadTaskError(ValueError):
    """A delivery-topic record that is not a delivery task this version understands."""


@dataclass(frozen=True, slots=True)
class DeliveryTask:
    """One attempt to make: what the sender needs without touching the database."""

    delivery_id: int
    webhook_id: str
    organization_id: str
    event_id: str
    event_type: str
    store_id: str
    occurred_at: str  # RFC 3339, for the end-to-end latency metric
    attempt: int  # 1 for the first attempt
    retry_index: int  # 0 for the first attempt, n for the n-th automatic retry
    manual: bool  # a redelivery or test send: one attempt, no automatic retries
    body: str  # the exact JSON body to POST

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "v": DELIVERY_TASK_VERSION,
                "delivery_id": self.delivery_id,
                "webhook_id": self.webhook_id,
                "organization_id": self.organization_id,
                "event_id": self.event_id,
                "event_type": self.event_type,
                "store_id": self.store_id,
                "occurred_at": self.occurred_at,
                "attempt": self.attempt,
                "retry_index": self.retry_index,
                "manual": self.manual,
                "body": self.body,
            }
        )

    @property
    def kafka_key(self) -> bytes:
        # Keyed per delivery, not per webhook: one busy webhook must spread over every sender replica.
        return f"{self.webhook_id}:{self.event_id}".encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> DeliveryTask:
        try:
            obj = orjson.loads(raw or b"")
            if obj.get("v") != DELIVERY_TASK_VERSION:
                raise BadTaskError(f"unsupported delivery task version {obj.get('v')!r}")
            return cls(
                delivery_id=int(obj["delivery_id"]),
                webhook_id=str(obj["webhook_id"]),
                organization_id=str(obj["organization_id"]),
                event_id=str(obj["event_id"]),
                event_type=str(obj["event_type"]),
                store_id=str(obj["store_id"]),
                occurred_at=str(obj["occurred_at"]),
                attempt=int(obj["attempt"]),
                retry_index=int(obj["retry_index"]),
                manual=obj["manual"] is True,
                body=str(obj["body"]),
            )
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, BadTaskError):
                raise
            raise BadTaskError(f"malformed delivery task: {exc}") from None


@dataclass(frozen=True, slots=True)
class Succeeded:
    http_status: int
    response_excerpt: str | None


@dataclass(frozen=True, slots=True)
class Failed:
    retryable: bool
    error: str
    http_status: int | None = None
    response_excerpt: str | None = None
    retry_after_s: float | None = None
    sent: bool = True  # False when the breaker or a local check answered without the network
    not_before_s: float = 0.0  # the next attempt waits at least this long (the breaker's remaining open time)


@dataclass(frozen=True, slots=True)
class Deferred:
    """Not attempted: the endpoint is saturated. Rescheduled durably without using up an attempt."""

    reason: str
    delay_s: float
    http_status: None = None
    response_excerpt: None = None


AttemptResult = Succeeded | Failed | Deferred


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """The durable outcome of one attempt; ``status`` is the contract's succeeded | retrying | failed,
    or ``deferred`` for a delivery put back without an attempt (no attempt row, no status record)."""

    task: DeliveryTask
    started_at: dt.datetime
    duration_ms: float
    result: AttemptResult
    status: str
    next_attempt_at: dt.datetime | None = None

    @property
    def finished_at(self) -> dt.datetime:
        return self.started_at + dt.timedelta(milliseconds=self.duration_ms)

    @property
    def http_status(self) -> int | None:
        return self.result.http_status

    @property
    def error(self) -> str | None:
        return self.result.error if isinstance(self.result, Failed) else None

    def status_record(self) -> bytes:
        """The delivery-status topic record (CONTRACT §4); ``at`` is when the attempt finished."""
        return orjson.dumps(
            {
                "webhook_id": self.task.webhook_id,
                "event_id": self.task.event_id,
                "event_type": self.task.event_type,
                "organization_id": self.task.organization_id,
                "store_id": self.task.store_id,
                "attempt": self.task.attempt,
                "status": self.status,
                "http_status": self.http_status,
                "error": self.error,
                "duration_ms": round(self.duration_ms, 3),
                "at": self.finished_at.isoformat().replace("+00:00", "Z"),
            }
        )
