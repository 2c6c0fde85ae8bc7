"""The error taxonomy: which failures of PostgreSQL and Kafka are worth trying again, in one place.

Every infrastructure loop (the router's store, the outcome flush, the retry pump, the webhook
lookup) calls :func:`retry_transient`: it retries only what :func:`is_transient` says will pass on
a later try (the connection was lost, the server is shutting down or starting, a serialization
failure or deadlock, a broker or leader that is not there yet, a producer renewed after a stall)
and raises everything else. A permanent error (a value the database refuses, a broken constraint,
a record Kafka will never accept) is therefore never retried forever: the caller isolates the
record responsible with :func:`isolate_poison` and deals with it on its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg
from aiokafka import errors as kafka_errors

from hookstream.core import liveness

log = logging.getLogger(__name__)

T = TypeVar("T")
Item = TypeVar("Item")

BACKOFF_START_S = 0.2
BACKOFF_MAX_S = 5.0

# SQLSTATE classes after which the same statement can succeed later: 08 connection exception,
# 40 transaction rollback (serialization failure, deadlock), 53 insufficient resources (too many
# connections, disk full, out of memory), 57 operator intervention (shutdown, starting up, query
# cancelled), 58 system error (I/O), 55P03 lock not available, 25006 read-only transaction (a
# standby that is being promoted).
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_SQLSTATES = frozenset({"55P03", "25006"})
# asyncpg's client-side errors that are about the value, not the connection: permanent.
_PERMANENT_CLIENT_ERRORS = (
    asyncpg.exceptions._base.DataError,
    asyncpg.exceptions._base.ClientConfigurationError,
    asyncpg.exceptions._base.UnsupportedClientFeatureError,
    asyncpg.exceptions._base.UnsupportedServerFeatureError,
)
# Kafka errors that say "not now" though aiokafka does not mark them retriable: no broker reachable
# yet, a metadata or buffer wait that timed out, and the idempotent producer's lost state (the
# producer is renewed by hookstream.core.kafka.RenewableProducer before the caller retries).
_TRANSIENT_KAFKA_ERRORS = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.KafkaUnavailableError,
    kafka_errors.OutOfOrderSequenceNumber,
    kafka_errors.UnknownProducerId,
    kafka_errors.InvalidProducerEpoch,
    kafka_errors.ProducerFenced,
)


class Stopped(Exception):
    """``retry_transient`` gave up on a transient error because the service is stopping."""


def is_transient(exc: BaseException) -> bool:
    """True when the same operation may succeed if tried again later, unchanged."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state[:2] in _TRANSIENT_SQLSTATE_CLASSES or state in _TRANSIENT_SQLSTATES
    if isinstance(exc, _PERMANENT_CLIENT_ERRORS):
        return False
    if isinstance(exc, asyncpg.InterfaceError | asyncpg.InternalClientError):
        return True  # the connection was closed or left unusable mid-operation (a server restart)
    if isinstance(exc, kafka_errors.KafkaError):
        return isinstance(exc, _TRANSIENT_KAFKA_ERRORS) or bool(getattr(exc, "retriable", False))
    # OSError covers ConnectionError; TimeoutError is also how RenewableProducer.acked reports a stall.
    return isinstance(exc, OSError | TimeoutError)


def describe(exc: BaseException, limit: int = 300) -> str:
    """``Type: message``, on one line, at most ``limit`` characters (for logs and stored errors)."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return " ".join(text.split())[:limit]


async def retry_transient(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    stop: asyncio.Event | None = None,
    heartbeat: str | None = None,
    start_s: float = BACKOFF_START_S,
    max_s: float = BACKOFF_MAX_S,
    extra: dict[str, object] | None = None,
    retryable: Callable[[Exception], bool] = is_transient,
) -> T:
    """Run ``operation`` until it succeeds, backing off (capped, doubling) after transient errors.

    A permanent error propagates at once. When ``stop`` is set while failing, :class:`Stopped` is
    raised instead of trying again. ``heartbeat`` names the loop whose liveness stamp is renewed
    while waiting: a loop that waits out an outage is alive. ``retryable`` widens what is tried again
    for a caller whose permanent record errors are isolated inside ``operation``; an error retried
    that is not transient is logged with its traceback.
    """
    delay = start_s
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not retryable(exc):
                raise
            log.warning("%s failed (%s); retrying in %.1fs", what, describe(exc), delay, extra=extra,
                        exc_info=not is_transient(exc))
        if stop is not None and stop.is_set():
            raise Stopped(what)
        if heartbeat is not None:
            liveness.beat(heartbeat)
        if stop is None:
            await asyncio.sleep(delay)
        else:
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
        delay = min(delay * 2, max_s)


async def isolate_poison(
    items: Sequence[Item],
    write: Callable[[Sequence[Item]], Awaitable[None]],
    on_poison: Callable[[Item, BaseException], Awaitable[None]],
) -> None:
    """Write ``items`` with ``write``; when it fails permanently, write each half on its own, down to
    the single items that fail, which go to ``on_poison`` with their error.

    A batch with one bad record costs about 2·log2(n) extra writes; everything else is written.
    Transient errors propagate (the caller's :func:`retry_transient` tries the whole batch again),
    so ``write`` must be idempotent or atomic per call.
    """
    if not items:
        return
    try:
        await write(items)
        return
    except Exception as exc:
        if is_transient(exc):
            raise
        if len(items) == 1:
            await on_poison(items[0], exc)
            return
    middle = len(items) // 2
    await isolate_poison(items[:middle], write, on_poison)
    await isolate_poison(items[middle:], write, on_poison)
