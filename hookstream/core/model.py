"""Messages between pipeline stages: frozen, versioned values.

router --DeliveryTask--> delivery topic --> sender --AttemptResult--> AttemptRecord --> PostgreSQL + status topic
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal

import orjson

from hookstream.core.states import AttemptStatus

DELIVERY_TASK_VERSION = 1
# Bytes of an encoded task besides its body: ids of at most 128 characters (up to 4 UTF-8 bytes
# each, some escaped), the event type and time, small numbers and the keys, with room to spare.
TASK_ENVELOPE_MAX_BYTES = 8 * 1024


_RFC3339_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)


# asyncpg writes these two as PostgreSQL's -infinity and infinity (and reads them back naive).
_TIMESTAMP_ENDS = frozenset({dt.datetime.min.replace(tzinfo=dt.UTC), dt.datetime.max.replace(tzinfo=dt.UTC)})


def parse_rfc3339(value: str) -> dt.datetime:
    """An RFC 3339 date-time with a zone (``Z`` or ``±hh:mm``) as an aware datetime in UTC: the one
    parser of event and record times, so whatever validation accepts, storage and the code accept.

    - A leap second (``23:59:60``) is the next second's ``:00``, as POSIX time counts it.
    - Fractions are kept to the microsecond (digits beyond the sixth are dropped, not rounded).
    - The instant must lie within years 0001-9999 in UTC (what PostgreSQL's and Python's
      timestamps share): ``0001-01-01T00:30:00+01:00`` (year 0 in UTC) and
      ``9999-12-31T23:30:00-01:00`` (year 10000) are refused, and so are the two instants at the
      very ends, ``0001-01-01T00:00:00Z`` and ``9999-12-31T23:59:59.999999Z``, which asyncpg
      stores as PostgreSQL's ``-infinity`` and ``infinity``.

    Raises ValueError, saying why, for anything else.
    """
    match = _RFC3339_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"{value!r:.80} is not an RFC 3339 date-time with a zone")
    year, month, day, hour, minute, second, fraction, sign, off_h, off_m = match.groups()
    if int(hour) > 23 or int(minute) > 59 or int(second) > 60:
        raise ValueError(f"{value!r:.80} has an hour, minute or second out of range")
    if sign is not None and (int(off_h) > 23 or int(off_m) > 59):
        raise ValueError(f"{value!r:.80} has a zone offset out of range")
    try:
        midnight = dt.datetime(int(year), int(month), int(day), tzinfo=dt.UTC)  # raises on 30 February, year 0
    except ValueError:
        raise ValueError(f"{value!r:.80} is not a real date") from None
    since_midnight = dt.timedelta(hours=int(hour), minutes=int(minute), seconds=int(second),
                                  microseconds=int((fraction or "").ljust(6, "0")[:6]))
    if sign is not None:
        offset = dt.timedelta(hours=int(off_h), minutes=int(off_m))
        since_midnight += -offset if sign == "+" else offset
    try:
        instant = midnight + since_midnight
    except OverflowError:
        instant = None
    if instant is None or instant in _TIMESTAMP_ENDS:
        raise ValueError(f"{value!r:.80} lies outside the years 0001-9999 in UTC"
                         " (exclusive of their first and last microsecond)")
    return instant


def parse_validated_rfc3339(value: str) -> dt.datetime:
    """The fast path of :func:`parse_rfc3339`, for a text that already passed it (a routed event's
    occurred_at): the C parser first, an eighth of the cost on a hot path; :func:`parse_rfc3339`
    itself for what that refuses (a leap second) or leaves without a zone. The instant equals
    :func:`parse_rfc3339`'s, but may keep the text's own offset. Not a validator: the C parser also
    takes forms RFC 3339 does not (``20261127T101500Z``), so unchecked input goes to
    :func:`parse_rfc3339`."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return parse_rfc3339(value)
    return parsed if parsed.tzinfo is not None else parse_rfc3339(value)


def format_rfc3339(value: dt.datetime, *, timespec: Literal["auto", "milliseconds"] = "auto",
                   zone: Literal["Z", "+00:00"] = "Z") -> str:
    """The one formatter of the times hookstream writes: ``value`` in UTC, as RFC 3339.

    ``timespec="auto"`` writes microseconds only when there are any (status records, delivery
    tasks); ``"milliseconds"`` always writes three digits, truncated, not rounded (event and
    test-event times, log lines). ``zone`` is ``Z``, or ``+00:00`` for the JSON log lines' ``ts``
    (which have always been written that way).
    """
    text = value.astimezone(dt.UTC).isoformat(timespec=timespec)
    return text if zone == "+00:00" else text[:-6] + "Z"  # isoformat of a UTC time ends in +00:00


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
    ordered: bool = False  # of a per_resource webhook: a copy whose attempt is recorded is never sent again
    # RFC 3339: when the delivery's retry window began (its first attempt, else its creation), which
    # bounds how long an open circuit breaker may hold it back. None in a first attempt's task from
    # the router (the window begins now) and in tasks of versions before it.
    window_from: str | None = None

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
                "ordered": self.ordered,
                "window_from": self.window_from,
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
                ordered=obj.get("ordered") is True,  # absent in tasks of versions before ordering
                window_from=None if obj.get("window_from") is None else str(obj["window_from"]),
            )
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, BadTaskError):
                raise
            raise BadTaskError(f"malformed delivery task: {exc}") from None


@dataclass(frozen=True, slots=True)
class SentRequest:
    """What an attempt sent, for its detail view: the URL at that moment and the headers (the
    signature included; they never hold a secret). The body is the event's stored body."""

    url: str
    headers: dict[str, str]


# Response headers as received, in order, capped (sender/http.py ``capture_headers``).
ResponseHeaders = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Succeeded:
    http_status: int
    response_excerpt: str | None
    request: SentRequest | None = None
    response_headers: ResponseHeaders | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    retryable: bool
    error: str
    http_status: int | None = None
    response_excerpt: str | None = None
    retry_after_s: float | None = None
    sent: bool = True  # False when a local check (disabled webhook, unsafe address) answered without the network
    request: SentRequest | None = None  # None when nothing was sent, or the request never got built
    response_headers: ResponseHeaders | None = None  # None when no response came


@dataclass(frozen=True, slots=True)
class Deferred:
    """Not attempted: the endpoint is saturated, or its circuit breaker is open (``breaker``).
    Rescheduled durably without using up an attempt or a retry.

    A breaker's hold is bounded by the retry window (``decide_outcome``) and its ``reason`` is shown
    as the delivery's ``last_error`` (the log says the delivery waits for the probe, and until when).
    """

    reason: str
    delay_s: float
    http_status: None = None
    response_excerpt: None = None
    request: None = None
    response_headers: None = None
    breaker: bool = False


AttemptResult = Succeeded | Failed | Deferred


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """The durable outcome of one attempt; ``status`` is the contract's succeeded | retrying | failed,
    or ``deferred`` for a delivery put back without an attempt (no attempt row, no status record)."""

    task: DeliveryTask
    started_at: dt.datetime
    duration_ms: float
    result: AttemptResult
    status: AttemptStatus
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
                "at": format_rfc3339(self.finished_at),
            }
        )
