"""The error taxonomy, the one retry helper, poison isolation and liveness (issue 11)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from aiokafka import errors as kafka_errors

from hookstream.core import liveness
from hookstream.core.errors import Stopped, is_transient, isolate_poison, retry_transient


def pg(cls: type[asyncpg.PostgresError]) -> asyncpg.PostgresError:
    return cls("refused")


TRANSIENT = [
    pg(asyncpg.exceptions.ConnectionDoesNotExistError),
    pg(asyncpg.exceptions.ConnectionFailureError),
    pg(asyncpg.exceptions.CannotConnectNowError),
    pg(asyncpg.exceptions.AdminShutdownError),
    pg(asyncpg.exceptions.TooManyConnectionsError),
    pg(asyncpg.exceptions.SerializationError),
    pg(asyncpg.exceptions.DeadlockDetectedError),
    pg(asyncpg.exceptions.LockNotAvailableError),
    pg(asyncpg.exceptions.QueryCanceledError),
    asyncpg.InterfaceError("connection is closed"),
    asyncpg.InternalClientError("cannot switch to state 15"),
    ConnectionResetError(),
    OSError("network unreachable"),
    TimeoutError(),
    kafka_errors.KafkaConnectionError(),
    kafka_errors.NotLeaderForPartitionError(),
    kafka_errors.RequestTimedOutError(),
    kafka_errors.KafkaTimeoutError(),
    kafka_errors.NodeNotReadyError(),
    kafka_errors.OutOfOrderSequenceNumber(),
]
PERMANENT = [
    pg(asyncpg.exceptions.CharacterNotInRepertoireError),
    pg(asyncpg.exceptions.ForeignKeyViolationError),
    pg(asyncpg.exceptions.UniqueViolationError),
    pg(asyncpg.exceptions.CheckViolationError),
    pg(asyncpg.exceptions.DatetimeFieldOverflowError),
    pg(asyncpg.exceptions.NumericValueOutOfRangeError),
    pg(asyncpg.exceptions.UndefinedTableError),
    asyncpg.exceptions._base.DataError("invalid input for query argument $1"),
    OverflowError("date value out of range"),
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    ValueError("second must be in 0..59"),
    kafka_errors.MessageSizeTooLargeError(),
    kafka_errors.RecordListTooLargeError(),
    kafka_errors.TopicAuthorizationFailedError(),
]


@pytest.mark.parametrize("exc", TRANSIENT, ids=lambda e: type(e).__name__)
def test_transient_errors(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", PERMANENT, ids=lambda e: type(e).__name__)
def test_permanent_errors(exc: BaseException) -> None:
    assert not is_transient(exc)


async def test_retry_transient_waits_out_transient_errors() -> None:
    calls = []

    async def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("gone")
        return "done"

    assert await retry_transient(flaky, what="test", start_s=0.01, max_s=0.02, heartbeat="test-loop") == "done"
    assert len(calls) == 3
    assert "test-loop" in liveness._beats  # waiting out an outage counts as alive
    liveness.forget("test-loop")


async def test_retry_transient_raises_a_permanent_error_at_once() -> None:
    calls = 0

    async def refused():
        nonlocal calls
        calls += 1
        raise asyncpg.exceptions.ForeignKeyViolationError("no such delivery")

    with pytest.raises(asyncpg.exceptions.ForeignKeyViolationError):
        await retry_transient(refused, what="test", start_s=0.01)
    assert calls == 1


async def test_retry_transient_gives_up_when_stopping() -> None:
    stop = asyncio.Event()

    async def down():
        stop.set()
        raise OSError("connection refused")

    with pytest.raises(Stopped):
        await retry_transient(down, what="test", stop=stop, start_s=0.01)


@pytest.mark.parametrize("size", [1, 2, 7, 64, 1000])
@pytest.mark.parametrize("bad", [set(), {0}, {3}, {0, 5, 6}, "all"])
async def test_isolate_poison_writes_everything_but_the_refused_items(size: int, bad) -> None:
    items = list(range(size))
    poison = set(items) if bad == "all" else {b for b in bad if b < size}
    written: list[int] = []
    refused: dict[int, BaseException] = {}
    writes = 0

    async def write(part):
        nonlocal writes
        writes += 1
        if poison & set(part):
            raise asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence")
        written.extend(part)

    async def on_poison(item, exc):
        refused[item] = exc

    await isolate_poison(items, write, on_poison)
    assert sorted(written) == sorted(set(items) - poison)
    assert set(refused) == poison
    if len(poison) == 1:  # about 2·log2(n) extra writes for one bad record, not n
        assert writes <= 2 * max(1, size.bit_length()) + 1


async def test_isolate_poison_lets_transient_errors_through() -> None:
    async def write(_part):
        raise asyncpg.exceptions.AdminShutdownError("terminating connection")

    async def on_poison(_item, _exc):  # pragma: no cover - must not be called
        raise AssertionError("a transient error is not poison")

    with pytest.raises(asyncpg.exceptions.AdminShutdownError):
        await isolate_poison([1, 2, 3], write, on_poison)


def test_liveness_reports_stale_loops_only() -> None:
    now = time.monotonic()
    liveness._beats.update({"fresh": now - 1, "wedged": now - 500})
    try:
        assert liveness.stale(now, 90) == {"wedged": 500.0}
        status, body = liveness.health()
        assert status == 503 and "wedged" in body["stale_loops"] and "fresh" not in body["stale_loops"]
        liveness.forget("wedged")
        assert liveness.health() == (200, {"status": "ok"})
    finally:
        liveness.forget("fresh")
        liveness.forget("wedged")


async def test_the_sender_rebalance_waits_for_its_whole_drain() -> None:
    from hookstream.core.settings import Settings
    from hookstream.sender.sender import make_sender_consumer

    settings = Settings.from_env({"HOOKSTREAM_REQUEST_TIMEOUT": "25s"})
    consumer = make_sender_consumer(settings)
    try:
        assert consumer._rebalance_timeout_ms == 45_000 > consumer._session_timeout_ms
    finally:
        await consumer.stop()  # never started: only releases what the constructor made
    assert settings.drain_timeout_s == 35
    assert settings.liveness_stale_s > settings.drain_timeout_s + 30  # a drain plus an ack wait is not "wedged"
