"""The sender's release of deliveries held by a circuit breaker that closed, on the real ``Sender`` with a
recording pool and sink (the statement itself runs against PostgreSQL in tests/integration/test_breaker.py):
it waits for the holds to be durable, releases a webhook at most once per interval however often its
breaker flaps, and a failed release does not stop later ones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from hookstream.core.settings import Settings
from hookstream.sender import sender as sender_module
from hookstream.sender.endpoints import HOLD_NOTE_PREFIX
from hookstream.sender.sender import Sender


class Pool:
    """Records each release statement's webhook ids; answers one released delivery per webhook."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail_next = False

    async def fetch(self, sql: str, webhook_ids: list[str], prefix: str) -> list[dict]:
        assert "UPDATE deliveries SET next_attempt_at = now()" in sql and prefix == HOLD_NOTE_PREFIX
        self.calls.append(list(webhook_ids))
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("connection refused")
        return [{"webhook_id": w, "n": 1} for w in webhook_ids]


class Sink:
    def __init__(self) -> None:
        self.pending: list[asyncio.Future] = []

    def unflushed(self) -> list[asyncio.Future]:
        return [f for f in self.pending if not f.done()]


async def until(predicate, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.005)


@pytest.fixture
async def running(monkeypatch):
    monkeypatch.setattr(sender_module, "RELEASE_MIN_INTERVAL_S", 0.3)
    pool, sink, wakes = Pool(), Sink(), []
    sender = Sender(Settings(), pool, None, None, sink, wake_pump=lambda: wakes.append(1))  # type: ignore[arg-type]
    releaser = asyncio.create_task(sender._release_held())
    yield sender, pool, sink, wakes
    releaser.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await releaser


async def test_a_release_waits_until_the_holds_made_before_the_close_are_durable(running) -> None:
    sender, pool, sink, wakes = running
    hold = asyncio.get_running_loop().create_future()
    sink.pending.append(hold)
    sender._breaker_closed("wh_1")
    await asyncio.sleep(0.05)
    assert pool.calls == []  # the hold is not in PostgreSQL yet: releasing now would miss it
    hold.set_result(None)
    await until(lambda: pool.calls == [["wh_1"]])
    assert wakes == [1]  # the retry pump is woken for what was released


async def test_a_flapping_breaker_releases_its_holds_once_per_interval_and_others_are_not_held_up(running) -> None:
    sender, pool, _, _ = running
    sender._breaker_closed("wh_flaps")
    await until(lambda: pool.calls == [["wh_flaps"]])
    for _ in range(20):  # closes again and again within the interval
        sender._breaker_closed("wh_flaps")
        await asyncio.sleep(0.005)
    sender._breaker_closed("wh_other")  # another webhook's close is released at once
    await until(lambda: len(pool.calls) == 2)
    assert pool.calls[1] == ["wh_other"]
    await until(lambda: len(pool.calls) == 3)  # after the interval: the later closes, in one statement
    assert pool.calls[2] == ["wh_flaps"]
    await asyncio.sleep(0.4)
    assert len(pool.calls) == 3


async def test_a_failed_release_is_logged_and_later_closes_are_still_released(running, caplog) -> None:
    sender, pool, _, wakes = running
    caplog.set_level(logging.WARNING, logger=sender_module.__name__)
    pool.fail_next = True
    sender._breaker_closed("wh_1")
    await until(lambda: len(pool.calls) == 1)
    await until(lambda: any("could not release" in r.getMessage() for r in caplog.records))
    assert wakes == []
    sender._breaker_closed("wh_2")
    await until(lambda: pool.calls[1:] == [["wh_2"]])
    assert wakes == [1]
