"""The states of deliveries, attempts and circuit breakers, as the one spelling of each.

They are ``StrEnum`` members, so each *is* its wire value: orjson, asyncpg, Prometheus labels,
``%s`` and f-strings all see the plain text (``"succeeded"``), and a plain string read back from
PostgreSQL or JSON compares equal to its member. The values are fixed by the schemas that also
spell them (``hookstream/schemas/sql/0001_init.sql``'s CHECK constraints, ``openapi.json``,
``delivery-status.schema.json``); tests/unit/test_states.py holds the two to each other. SQL in
the code names the values as literals, the way the CHECK constraints do.
"""

from __future__ import annotations

import enum


class DeliveryStatus(enum.StrEnum):
    """A delivery's summary (``deliveries.status``, the delivery log's ``status``): pending until it
    succeeds or has no attempt left."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class AttemptStatus(enum.StrEnum):
    """What one attempt came to (``attempts.outcome``, the status record's ``status``, CONTRACT §4):
    ``retrying`` means it failed and another attempt is scheduled, ``failed`` that it was the last.

    ``DEFERRED`` is the sender's own: a delivery put back without an attempt (its endpoint was
    saturated). It is never stored as an outcome nor sent as a status record.
    """

    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"
    DEFERRED = "deferred"


class BreakerState(enum.StrEnum):
    """An endpoint's circuit breaker (the ``state`` label of
    ``hookstream_circuit_breaker_transitions_total``)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
