"""The sender's release of deliveries held by a circuit breaker that closed, on the real ``Sender`` and the
real ``OutcomeSink`` (its writes replaced by a gate the test opens) with a recording pool; the statement
itself runs against PostgreSQL in tests/integration/test_breaker.py. The release waits for the holds
recorded before the close to be durable, releases a webhook at most once per open period however often its
breaker flaps, does not hold other webhooks up, survives a failed release, and stops when cancelled."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time

import pytest

from hookstream.core.model import Failed
from hookstream.core.settings import Settings
from hookstream.core.states import BreakerState
from hookstream.sender import sender as sender_module
from hookstream.sender.outcomes import OutcomeSink
from hookstream.sender.sender import Sender

OPEN_S = 0.4
BACKOFF_S = 0.05  # the first gap after a release (RELEASE_BACKOFF_START_S), then doubling up to OPEN_S


class Pool:
    """Records each release statement's webhook ids; answers one released delivery per webhook."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.times: list[float] = []  # time.monotonic() of each statement
        self.fail_next = False

    async def fetch(self, sql: str, webhook_ids: list[str], pattern: str) -> list[dict]:
        assert "UPDATE deliveries SET next_attempt_at = now()" in sql
        assert pattern == "circuit breaker %, waiting for its probe; next try at %"
        self.calls.append(list(webhook_ids))
        self.times.append(time.monotonic())
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("connection refused")
        return [{"webhook_id": w, "n": 1} for w in webhook_ids]


async def until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.005)


@pytest.fixture
async def running(monkeypatch):
    monkeypatch.setattr(sender_module, "RELEASE_BACKOFF_START_S", BACKOFF_S)
    pool, wakes, writes = Pool(), [], asyncio.Event()
    writes.set()
    sink = OutcomeSink(None, None, "status", flush_interval_ms=5, flush_max=100)  # type: ignore[arg-type]

    async def make_durable(records) -> None:  # PostgreSQL and the status topic, as far as the sink knows
        await writes.wait()

    sink._make_durable = make_durable  # type: ignore[method-assign]
    settings = dataclasses.replace(Settings(), breaker_open_s=OPEN_S)
    sender = Sender(settings, pool, None, None, sink, wake_pump=lambda: wakes.append(1))  # type: ignore[arg-type]
    async with sink:
        releaser = asyncio.create_task(sender._release_held())
        yield sender, sink, pool, wakes, writes
        releaser.cancel()
        # it stops when cancelled, whatever it was waiting for (a bounded wait: a hang fails the test)
        done, _ = await asyncio.wait([releaser], timeout=2.0)
        assert done, "the releaser ignored its cancellation"
        writes.set()


async def test_a_release_waits_until_the_holds_recorded_before_the_close_are_durable(running) -> None:
    sender, sink, pool, wakes, writes = running
    writes.clear()  # PostgreSQL is slow: the hold is recorded, not yet durable
    hold = asyncio.create_task(sink.record(object()))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    sender._breaker_closed("wh_1")
    await asyncio.sleep(0.1)
    assert pool.calls == []  # releasing now would miss the hold
    writes.set()
    await hold
    await until(lambda: pool.calls == [["wh_1"]])
    assert wakes == [1]  # the retry pump is woken for what was released


async def test_a_flapping_breaker_backs_off_to_one_release_per_open_period_and_others_are_not_held_up(
        running) -> None:
    sender, _, pool, _, _ = running
    deadline = time.monotonic() + 4 * OPEN_S
    while time.monotonic() < deadline:  # it closes again and again, every few milliseconds
        sender._breaker_closed("wh_flaps")
        await asyncio.sleep(0.005)
    releases = list(pool.times)
    assert all(call == ["wh_flaps"] for call in pool.calls) and len(releases) >= 3
    gaps = [b - a for a, b in itertools.pairwise(releases)]
    for i, gap in enumerate(gaps):  # 0.05, 0.1, 0.2, then one per open period (0.4 s)
        assert gap >= 0.9 * min(OPEN_S, BACKOFF_S * 2 ** i), gaps
    assert len(releases) <= 7  # at 0, 0.05, 0.15, 0.35 s, then every open period: 0.75, 1.15, 1.55 s
    sender._breaker_closed("wh_other")  # meanwhile another webhook's close is released at once
    await until(lambda: ["wh_other"] in pool.calls)
    # quiet for an open period past its next allowed release (the last flaps' release comes up to an
    # open period after they stopped): the streak ends, and a close releases at once
    await asyncio.sleep(3 * OPEN_S + 0.1)
    calls = len(pool.calls)
    sender._breaker_closed("wh_flaps")
    await until(lambda: len(pool.calls) == calls + 1)
    assert sender._released["wh_flaps"][1] == 0


async def test_a_failed_release_is_logged_and_later_closes_are_still_released(running, caplog) -> None:
    sender, _, pool, wakes, _ = running
    caplog.set_level(logging.WARNING, logger=sender_module.__name__)
    pool.fail_next = True
    sender._breaker_closed("wh_1")
    await until(lambda: any("could not release" in r.getMessage() for r in caplog.records))
    assert wakes == []
    sender._breaker_closed("wh_1")  # a failed release does not count: the next close releases at once
    await until(lambda: pool.calls == [["wh_1"], ["wh_1"]])
    assert sender._released["wh_1"][1] == 0 and wakes == [1]  # the first release of a streak


async def test_a_breaker_open_again_when_its_release_is_due_is_left_for_its_next_close(running) -> None:
    sender, _, pool, _, _ = running
    failing = Failed(retryable=True, error="HTTP 500", http_status=500)

    async def fail() -> Failed:
        return failing

    for _ in range(Settings().breaker_failure_threshold):
        await sender._gates.call("wh_open", fail)
    assert sender._gates.state_of("wh_open") == BreakerState.OPEN
    sender._breaker_closed("wh_open")  # closed a moment ago, open again by the time its release is due
    sender._breaker_closed("wh_closed")
    await until(lambda: pool.calls == [["wh_closed"]])
    await asyncio.sleep(0.05)
    assert pool.calls == [["wh_closed"]]  # its holds wait for its probe rather than cycle to be held again


async def test_the_releaser_stops_when_cancelled_while_a_webhook_waits_out_its_period(running) -> None:
    sender, _, pool, _, _ = running
    sender._breaker_closed("wh_1")
    await until(lambda: pool.calls == [["wh_1"]])
    sender._breaker_closed("wh_1")  # waits for the period's end; the fixture's teardown cancels it
    await asyncio.sleep(0.01)
    sender._breaker_closed("wh_2")
