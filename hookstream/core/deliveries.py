"""Delivery rows changed outside the attempt path: failing a delivery that can never be attempted."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from hookstream.core.text import storable_text

MAX_STORED_ERROR_BYTES = 1000


async def fail_undeliverable(conn: asyncpg.Connection | asyncpg.Pool, failures: Sequence[tuple[int, str]]) -> None:
    """Mark deliveries ``failed`` with the reason, nothing scheduled and nothing in flight: used when
    no attempt can ever be made (Kafka refuses the delivery task for good). Not an attempt: no
    attempt row, the attempt count stays."""
    if not failures:
        return
    await conn.execute(
        """
        UPDATE deliveries AS d SET status = 'failed', last_error = u.error, finished_at = now(),
            next_attempt_at = NULL, manual_due_at = NULL, in_flight = false
        FROM unnest($1::bigint[], $2::text[]) AS u(id, error)
        WHERE d.id = u.id
        """,
        [delivery_id for delivery_id, _ in failures],
        [storable_text(error, MAX_STORED_ERROR_BYTES) for _, error in failures],
    )

