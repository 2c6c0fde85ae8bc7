"""EndpointGates: per-webhook circuit breaker, concurrency cap and bounded queue (fake clock, no network)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from hookstream.core.model import AttemptResult, Deferred, Failed, Succeeded
from hookstream.core.states import BreakerState
from hookstream.sender.endpoints import SLOW_CALL_S, EndpointGates

WH = "wh_1"
OK = Succeeded(http_status=200, response_excerpt=None)
HTTP_500 = Failed(retryable=True, error="HTTP 500", http_status=500)
TIMEOUT = Failed(retryable=True, error="timeout after 10s")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Endpoint:
    """An attempt function that counts its calls and answers a fixed result."""

    def __init__(self, result: AttemptResult = OK) -> None:
        self.result = result
        self.calls = 0

    async def __call__(self) -> AttemptResult:
        self.calls += 1
        return self.result


class BlockingEndpoint:
    """An attempt function that holds each call until released; tracks concurrency."""

    def __init__(self, result: AttemptResult = OK) -> None:
        self.result = result
        self.calls = 0
        self.running = 0
        self.max_running = 0
        self.release = asyncio.Event()

    async def __call__(self) -> AttemptResult:
        self.calls += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await self.release.wait()
            return self.result
        finally:
            self.running -= 1


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.001)


def make_gates(
    clock: FakeClock,
    *,
    max_concurrency: int = 4,
    max_queued: int = 16,
    threshold: int = 3,
    open_s: float = 30.0,
) -> EndpointGates:
    return EndpointGates(
        max_concurrency=max_concurrency,
        max_queued=max_queued,
        failure_threshold=threshold,
        open_s=open_s,
        clock=clock,
    )


async def call_n(
    gates: EndpointGates, attempt: Callable[[], Awaitable[AttemptResult]], n: int, webhook_id: str = WH
) -> list[AttemptResult]:
    return [await gates.call(webhook_id, attempt) for _ in range(n)]


def assert_refused(result: AttemptResult, text: str) -> None:
    """A breaker's refusal is a hold: put back for the probe, not a failed attempt (no retry used)."""
    assert isinstance(result, Deferred)
    assert result.breaker is True
    assert text in result.reason


# ------------------------------------------------------------------------------------------ breaker


async def test_unknown_webhook_is_closed() -> None:
    assert make_gates(FakeClock()).state_of("nope") == BreakerState.CLOSED


async def test_success_passes_through() -> None:
    gates, endpoint = make_gates(FakeClock()), Endpoint(OK)
    assert await gates.call(WH, endpoint) is OK
    assert endpoint.calls == 1
    assert gates.state_of(WH) == BreakerState.CLOSED


@pytest.mark.parametrize(
    "failure",
    [
        HTTP_500,
        TIMEOUT,
        Failed(True, "HTTP 408", 408),
        Failed(True, "HTTP 429", 429),
        Failed(True, "HTTP 302", 302),
    ],
)
async def test_threshold_consecutive_failures_open_the_breaker(failure: Failed) -> None:
    gates, endpoint = make_gates(FakeClock(), threshold=3), Endpoint(failure)
    results = await call_n(gates, endpoint, 2)
    assert results == [failure, failure]
    assert gates.state_of(WH) == BreakerState.CLOSED
    assert await gates.call(WH, endpoint) == failure
    assert gates.state_of(WH) == BreakerState.OPEN
    assert endpoint.calls == 3


async def test_open_breaker_answers_without_calling_the_endpoint() -> None:
    clock = FakeClock()
    gates, endpoint = make_gates(clock, threshold=2), Endpoint(HTTP_500)
    await call_n(gates, endpoint, 2)
    for _ in range(5):
        clock.advance(5)
        assert_refused(await gates.call(WH, endpoint), "circuit breaker open")
    assert endpoint.calls == 2
    assert gates.state_of(WH) == BreakerState.OPEN


async def test_success_resets_the_consecutive_failure_count() -> None:
    gates = make_gates(FakeClock(), threshold=3)
    await call_n(gates, Endpoint(HTTP_500), 2)
    await gates.call(WH, Endpoint(OK))
    await call_n(gates, Endpoint(HTTP_500), 2)
    assert gates.state_of(WH) == BreakerState.CLOSED
    await gates.call(WH, Endpoint(HTTP_500))
    assert gates.state_of(WH) == BreakerState.OPEN


async def test_threshold_of_one_opens_on_first_failure() -> None:
    gates = make_gates(FakeClock(), threshold=1)
    await gates.call(WH, Endpoint(TIMEOUT))
    assert gates.state_of(WH) == BreakerState.OPEN


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 413, 422, 499])
async def test_client_errors_do_not_trip_the_breaker(status: int) -> None:
    gates, endpoint = make_gates(FakeClock(), threshold=2), Endpoint(Failed(True, f"HTTP {status}", status))
    await call_n(gates, endpoint, 10)
    assert gates.state_of(WH) == BreakerState.CLOSED
    assert endpoint.calls == 10


async def test_client_error_resets_the_failure_count() -> None:
    gates = make_gates(FakeClock(), threshold=2)
    await gates.call(WH, Endpoint(HTTP_500))
    await gates.call(WH, Endpoint(Failed(True, "HTTP 404", 404)))
    await gates.call(WH, Endpoint(HTTP_500))
    assert gates.state_of(WH) == BreakerState.CLOSED


async def test_unsent_failures_do_not_count() -> None:
    gates = make_gates(FakeClock(), threshold=2)
    unsent = Failed(retryable=False, error="unsafe endpoint: private", sent=False)
    await call_n(gates, Endpoint(unsent), 5)
    assert gates.state_of(WH) == BreakerState.CLOSED


async def test_breakers_are_per_webhook() -> None:
    gates = make_gates(FakeClock(), threshold=2)
    await call_n(gates, Endpoint(HTTP_500), 2, webhook_id="wh_bad")
    healthy = Endpoint(OK)
    assert await gates.call("wh_good", healthy) is OK
    assert healthy.calls == 1
    assert gates.state_of("wh_bad") == BreakerState.OPEN
    assert gates.state_of("wh_good") == BreakerState.CLOSED


async def test_still_open_just_before_open_period_ends() -> None:
    clock = FakeClock()
    gates, endpoint = make_gates(clock, threshold=1, open_s=30), Endpoint(HTTP_500)
    await gates.call(WH, endpoint)
    clock.advance(29.999)
    assert_refused(await gates.call(WH, endpoint), "open")
    assert endpoint.calls == 1


async def test_probe_success_closes_the_breaker() -> None:
    clock = FakeClock()
    gates = make_gates(clock, threshold=2, open_s=30)
    await call_n(gates, Endpoint(HTTP_500), 2)
    clock.advance(30)
    probe = Endpoint(OK)
    assert await gates.call(WH, probe) is OK
    assert probe.calls == 1
    assert gates.state_of(WH) == BreakerState.CLOSED
    # Closed again: normal traffic flows, and it takes a full threshold of failures to re-open.
    after = Endpoint(HTTP_500)
    await gates.call(WH, after)
    assert gates.state_of(WH) == BreakerState.CLOSED
    assert after.calls == 1


async def test_the_close_callback_hears_each_close_once_whatever_closed_it() -> None:
    clock, closed = FakeClock(), []
    gates = EndpointGates(max_concurrency=4, max_queued=16, failure_threshold=2, open_s=30, clock=clock,
                          on_close=closed.append)
    slow = BlockingEndpoint(OK)
    in_flight = asyncio.create_task(gates.call(WH, slow))
    await wait_until(lambda: slow.running == 1)
    await call_n(gates, Endpoint(HTTP_500), 2)  # opens while the slow attempt is still running
    assert gates.state_of(WH) == BreakerState.OPEN and closed == []
    assert_refused(await gates.call(WH, Endpoint(OK)), "open")  # held for the probe, 30 s on
    slow.release.set()
    assert await in_flight is OK  # the attempt already in flight succeeds: closed at once, and told
    assert gates.state_of(WH) == BreakerState.CLOSED and closed == [WH]
    await call_n(gates, Endpoint(OK), 3)  # staying closed is no news
    assert closed == [WH]
    await call_n(gates, Endpoint(HTTP_500), 2)
    clock.advance(30)
    assert await gates.call(WH, Endpoint(OK)) is OK  # a probe's success closes it: told again
    assert closed == [WH, WH]


async def test_probe_failure_reopens_for_a_new_open_period() -> None:
    clock = FakeClock()
    gates = make_gates(clock, threshold=3, open_s=30)
    await call_n(gates, Endpoint(HTTP_500), 3)
    clock.advance(31)
    probe = Endpoint(TIMEOUT)
    assert await gates.call(WH, probe) == TIMEOUT  # one failure is enough in half-open
    assert probe.calls == 1
    assert gates.state_of(WH) == BreakerState.OPEN
    clock.advance(29)
    later = Endpoint(OK)
    assert_refused(await gates.call(WH, later), "open")
    assert later.calls == 0
    clock.advance(1)
    assert await gates.call(WH, later) is OK
    assert gates.state_of(WH) == BreakerState.CLOSED


async def test_probe_answered_with_client_error_closes_the_breaker() -> None:
    clock = FakeClock()
    gates = make_gates(clock, threshold=1)
    await gates.call(WH, Endpoint(HTTP_500))
    clock.advance(30)
    await gates.call(WH, Endpoint(Failed(True, "HTTP 404", 404)))
    assert gates.state_of(WH) == BreakerState.CLOSED


async def test_single_probe_in_half_open_concurrent_calls_refused() -> None:
    clock = FakeClock()
    gates = make_gates(clock, max_concurrency=4, threshold=1, open_s=30)
    await gates.call(WH, Endpoint(HTTP_500))
    clock.advance(30)
    probe = BlockingEndpoint(OK)
    probe_task = asyncio.create_task(gates.call(WH, probe))
    await wait_until(lambda: probe.running == 1)
    assert gates.state_of(WH) == BreakerState.HALF_OPEN
    others = Endpoint(OK)
    for _ in range(3):
        assert_refused(await gates.call(WH, others), "half-open")
    assert others.calls == 0
    probe.release.set()
    assert await probe_task is OK
    assert gates.state_of(WH) == BreakerState.CLOSED
    assert await gates.call(WH, others) is OK
    assert others.calls == 1


async def test_half_open_refusal_is_immediate_even_when_the_probe_holds_the_only_slot() -> None:
    """The module promises: while the breaker is open a delivery is answered *at once*.

    With max_concurrency=1 the probe holds the only slot; a concurrent call must be refused now,
    not queue behind the probe (and then be sent once the probe closes the breaker).
    """
    clock = FakeClock()
    gates = make_gates(clock, max_concurrency=1, threshold=1, open_s=30)
    await gates.call(WH, Endpoint(HTTP_500))
    clock.advance(30)
    probe = BlockingEndpoint(OK)
    probe_task = asyncio.create_task(gates.call(WH, probe))
    await wait_until(lambda: probe.running == 1)
    other = Endpoint(OK)
    other_task = asyncio.create_task(gates.call(WH, other))
    try:
        await wait_until(other_task.done, timeout_s=0.5)
        refused_at_once = True
    except AssertionError:
        refused_at_once = False
    probe.release.set()
    await probe_task
    await other_task
    assert refused_at_once, "call queued behind the half-open probe instead of being refused at once"
    assert other.calls == 0, "call was sent while the half-open probe was in flight"


async def test_attempt_exception_in_probe_frees_the_probe_slot() -> None:
    clock = FakeClock()
    gates = make_gates(clock, threshold=1)
    await gates.call(WH, Endpoint(HTTP_500))
    clock.advance(30)

    async def boom() -> AttemptResult:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await gates.call(WH, boom)
    ok = Endpoint(OK)
    assert await gates.call(WH, ok) is OK
    assert ok.calls == 1


# ---------------------------------------------------------------------------- concurrency and queue


async def test_concurrency_cap_is_honoured() -> None:
    gates = make_gates(FakeClock(), max_concurrency=3, max_queued=100)
    endpoint = BlockingEndpoint(OK)
    tasks = [asyncio.create_task(gates.call(WH, endpoint)) for _ in range(10)]
    await wait_until(lambda: endpoint.running == 3)
    for _ in range(20):
        await asyncio.sleep(0)  # give any over-admitted call the chance to start
    assert endpoint.running == 3
    assert endpoint.calls == 3
    endpoint.release.set()
    results = await asyncio.gather(*tasks)
    assert all(r is OK for r in results)
    assert endpoint.calls == 10
    assert endpoint.max_running == 3


async def test_concurrency_cap_is_per_webhook() -> None:
    gates = make_gates(FakeClock(), max_concurrency=1, max_queued=10)
    a, b = BlockingEndpoint(OK), BlockingEndpoint(OK)
    ta = asyncio.create_task(gates.call("wh_a", a))
    tb = asyncio.create_task(gates.call("wh_b", b))
    await wait_until(lambda: a.running == 1 and b.running == 1)
    a.release.set()
    b.release.set()
    assert await ta is OK
    assert await tb is OK


async def test_a_fast_healthy_endpoint_is_never_deferred() -> None:
    gates = make_gates(FakeClock(), max_concurrency=2, max_queued=3)
    endpoint = BlockingEndpoint(OK)
    calls = [asyncio.create_task(gates.call(WH, endpoint)) for _ in range(20)]  # far beyond 2 + 3
    await wait_until(lambda: endpoint.running == 2)
    endpoint.release.set()
    assert all(r is OK for r in await asyncio.gather(*calls))
    assert endpoint.calls == 20


async def test_a_slow_endpoints_overflow_is_deferred_without_calling() -> None:
    clock = FakeClock()
    gates = make_gates(clock, max_concurrency=2, max_queued=3)
    endpoint = BlockingEndpoint(OK)
    admitted = [asyncio.create_task(gates.call(WH, endpoint)) for _ in range(5)]  # 2 running + 3 queued
    await wait_until(lambda: endpoint.running == 2)
    extra = Endpoint(OK)
    clock.advance(SLOW_CALL_S + 0.1)  # the running calls are now slow
    for _ in range(3):
        deferred = await gates.call(WH, extra)
        assert isinstance(deferred, Deferred) and deferred.delay_s > 0
    assert extra.calls == 0
    endpoint.release.set()
    assert all(r is OK for r in await asyncio.gather(*admitted))


async def test_a_failing_endpoints_overflow_is_deferred() -> None:
    gates = make_gates(FakeClock(), max_concurrency=1, max_queued=0, threshold=5)
    assert await gates.call(WH, Endpoint(HTTP_500)) == HTTP_500
    endpoint = BlockingEndpoint(OK)
    first = asyncio.create_task(gates.call(WH, endpoint))
    await wait_until(lambda: endpoint.running == 1)
    extra = Endpoint(OK)
    assert isinstance(await gates.call(WH, extra), Deferred)
    assert extra.calls == 0
    endpoint.release.set()
    assert await first is OK


async def test_deferrals_do_not_trip_the_breaker() -> None:
    clock = FakeClock()
    gates = make_gates(clock, max_concurrency=1, max_queued=0, threshold=1)
    endpoint = BlockingEndpoint(OK)
    first = asyncio.create_task(gates.call(WH, endpoint))
    await wait_until(lambda: endpoint.running == 1)
    clock.advance(SLOW_CALL_S + 0.1)
    for _ in range(5):
        assert isinstance(await gates.call(WH, Endpoint(OK)), Deferred)
    endpoint.release.set()
    await first
    assert gates.state_of(WH) == BreakerState.CLOSED


async def test_open_breaker_holds_the_delivery_until_its_probe() -> None:
    clock = FakeClock()
    gates, endpoint = make_gates(clock, threshold=2, open_s=30.0), Endpoint(HTTP_500)
    await call_n(gates, endpoint, 2)
    clock.advance(10)
    refused = await gates.call(WH, endpoint)
    assert isinstance(refused, Deferred) and refused.breaker and refused.delay_s == pytest.approx(20.0)
    assert refused.reason == "circuit breaker open: endpoint is failing; not sent"


async def test_half_open_breaker_holds_deliveries_for_an_open_period() -> None:
    clock = FakeClock()
    gates = make_gates(clock, threshold=1, open_s=30.0)
    await gates.call(WH, Endpoint(HTTP_500))
    clock.advance(30)
    probe = BlockingEndpoint(HTTP_500)
    probe_task = asyncio.create_task(gates.call(WH, probe))
    await wait_until(lambda: probe.running == 1)
    held = await gates.call(WH, Endpoint(OK))
    assert isinstance(held, Deferred) and held.breaker and held.delay_s == pytest.approx(30.0)
    probe.release.set()
    await probe_task


async def test_holds_spread_out_while_probes_keep_failing_and_not_once_it_closes() -> None:
    clock = FakeClock()
    gates = make_gates(clock, threshold=1, open_s=10.0)
    await gates.call(WH, Endpoint(HTTP_500))
    delays = []
    for _ in range(5):
        held = await gates.call(WH, Endpoint(OK))
        assert isinstance(held, Deferred)
        delays.append(held.delay_s)
        clock.advance(10)
        assert await gates.call(WH, Endpoint(HTTP_500)) == HTTP_500  # the probe fails
    # the first hold waits just for the probe; then one more open period per failed probe, at most 3
    assert delays == pytest.approx([10.0, 20.0, 30.0, 40.0, 40.0])
    clock.advance(10)
    assert await gates.call(WH, Endpoint(OK)) is OK
    await gates.call(WH, Endpoint(HTTP_500))  # opens again (threshold 1): the spread starts over
    held = await gates.call(WH, Endpoint(OK))
    assert isinstance(held, Deferred) and held.delay_s == pytest.approx(10.0)


# ------------------------------------------------------------------------------------- fair capacity


async def test_deliveries_queued_behind_a_hanging_endpoint_are_deferred_once_it_is_slow() -> None:
    clock = FakeClock()
    gates = make_gates(clock, max_concurrency=2, max_queued=10)
    endpoint = BlockingEndpoint(OK)
    calls = [asyncio.create_task(gates.call(WH, endpoint)) for _ in range(6)]  # 2 running, 4 queued
    await wait_until(lambda: endpoint.running == 2)
    clock.advance(SLOW_CALL_S + 0.1)  # the running calls now hang
    # within QUEUE_RECHECK_S the queued ones give their sender slots back (deferred, not attempted)
    await wait_until(lambda: sum(c.done() for c in calls) == 4, timeout_s=2.0)
    assert all(isinstance(c.result(), Deferred) for c in calls if c.done())
    assert endpoint.calls == 2
    endpoint.release.set()
    assert sum(r is OK for r in await asyncio.gather(*calls)) == 2


async def test_one_webhook_runs_at_most_a_quarter_of_the_senders_slots() -> None:
    gates = EndpointGates(max_concurrency=32, max_queued=256, failure_threshold=5, open_s=30, max_in_flight=40,
                          clock=FakeClock())
    endpoint = BlockingEndpoint(OK)
    calls = [asyncio.create_task(gates.call(WH, endpoint)) for _ in range(30)]
    await wait_until(lambda: endpoint.running == 10)
    await asyncio.sleep(0.05)
    assert endpoint.max_running == 10
    endpoint.release.set()
    await asyncio.gather(*calls)


async def test_one_organization_holds_at_most_half_the_slots_while_unhealthy() -> None:
    clock = FakeClock()
    # 40 slots: 10 per webhook, 20 per organization
    gates = EndpointGates(max_concurrency=32, max_queued=0, failure_threshold=5, open_s=30, max_in_flight=40,
                          clock=clock)
    hanging = BlockingEndpoint(OK)
    held = [asyncio.create_task(gates.call(f"wh_{i}", hanging, "org_hostile")) for i in range(2) for _ in range(10)]
    await wait_until(lambda: hanging.running == 20)
    clock.advance(SLOW_CALL_S + 0.1)
    # a third webhook of the same organization: its calls also hang, so it is unhealthy once slow
    third = BlockingEndpoint(OK)
    first_of_third = asyncio.create_task(gates.call("wh_2", third, "org_hostile"))
    await wait_until(lambda: third.running == 1)
    clock.advance(SLOW_CALL_S + 0.1)
    extra = Endpoint(OK)
    assert isinstance(await gates.call("wh_2", extra, "org_hostile"), Deferred)
    assert extra.calls == 0
    # another organization is not held back
    healthy = Endpoint(OK)
    assert await gates.call("wh_other", healthy, "org_healthy") is OK
    hanging.release.set()
    third.release.set()
    await asyncio.gather(*held, first_of_third)


async def test_deferrals_back_off_while_an_endpoint_stays_unhealthy_and_reset_on_success() -> None:
    clock = FakeClock()
    gates = make_gates(clock, max_concurrency=1, max_queued=0, threshold=100)
    assert await gates.call(WH, Endpoint(HTTP_500)) == HTTP_500  # unhealthy now
    hanging = BlockingEndpoint(OK)
    running = asyncio.create_task(gates.call(WH, hanging))
    await wait_until(lambda: hanging.running == 1)
    delays = []
    for _ in range(8):
        for _ in range(3):  # a burst within one second does not raise the delay
            deferred = await gates.call(WH, Endpoint(OK))
            assert isinstance(deferred, Deferred)
        delays.append(deferred.delay_s)
        clock.advance(1.0)
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    hanging.release.set()
    assert await running is OK  # a success: back to the first step
    blocker = BlockingEndpoint(OK)
    held = asyncio.create_task(gates.call(WH, blocker))
    await wait_until(lambda: blocker.running == 1)
    clock.advance(SLOW_CALL_S + 0.1)
    deferred = await gates.call(WH, Endpoint(OK))
    assert isinstance(deferred, Deferred) and deferred.delay_s == 1.0
    blocker.release.set()
    await held
