"""Endpoint isolation: a concurrency cap, a bounded queue and a circuit breaker per webhook.

A webhook that hangs or fails every time must not slow the others:

- Circuit breaker: ``failure_threshold`` consecutive failures open it for ``open_s``. While it is
  open, or half-open with its one probe in flight, a delivery is not sent: it is held back
  (:class:`Deferred` with ``breaker`` set), put back in the durable schedule in PostgreSQL until
  the probe, without using up an attempt or a retry; its ``last_error`` says it waits for the
  probe, and until when. After the open period the first delivery to arrive is the probe: success
  closes the breaker, failure opens it again. Whenever the breaker closes (a probe succeeds, or an
  attempt already in flight does), ``on_close`` is told, and the sender makes the deliveries it held
  due at once: they wait for the endpoint to recover, not for a probe time. While probes keep
  failing, held deliveries come back spread over a few more open periods
  (``HOLD_SPREAD_MAX_PERIODS``), so a large backlog for a dead endpoint does not cycle through
  PostgreSQL and Kafka all at once every period. The hold is
  bounded by the retry schedule's window (``decide_outcome`` in sender.py): a dead endpoint never
  keeps a delivery for ever. Opening and closing are logged (webhook id and why).
- Fair capacity: a webhook runs at most ``min(max_concurrency, max_in_flight // 4)`` attempts at
  once. While it is unhealthy (failing, or with a call running longer than ``SLOW_CALL_S``) it holds
  no more of the sender's in-flight slots than that: new deliveries beyond it are deferred at once,
  and those already queued are deferred within ``QUEUE_RECHECK_S`` of it turning unhealthy —
  put back in the durable schedule for a moment without using up an attempt, so a few hanging
  webhooks cannot hold the slots healthy webhooks need. A fast, healthy endpoint is never deferred
  (its queue turns over quickly, and a single busy webhook may use the whole sender). Nor may one
  organization, over all its webhooks, hold more than half of the slots while the webhook at hand
  is unhealthy. Deferrals back off (1 s doubling to ``DEFER_MAX_S``) while the endpoint stays
  unhealthy, and start again at 1 s after its first success.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hookstream.core import metrics
from hookstream.core.logs import loggable
from hookstream.core.model import AttemptResult, Deferred, Failed, Succeeded
from hookstream.core.states import BreakerState

log = logging.getLogger(__name__)

# A call running longer than this marks its endpoint as slow (only overflow is deferred then).
SLOW_CALL_S = 1.0
DEFER_S = 1.0
# While an endpoint stays unhealthy its deferrals back off, doubling at most once per second up to
# this, so a webhook that stays slow does not cycle its whole backlog through PostgreSQL and Kafka
# every second; the first success brings it back to DEFER_S.
DEFER_MAX_S = 30.0
# How often a delivery queued behind a busy endpoint checks whether that endpoint turned unhealthy.
QUEUE_RECHECK_S = 0.25
# After n failed probes in a row a held delivery waits for the probe plus min(n, this) open periods:
# the backlog of a dead endpoint comes back spread out instead of all at each probe.
HOLD_SPREAD_MAX_PERIODS = 3
# How every hold's reason (and so the held delivery's last_error) starts.
HOLD_NOTE_PREFIX = "circuit breaker "


@dataclass(slots=True)
class EndpointGate:
    max_concurrency: int
    semaphore: asyncio.Semaphore = field(init=False)
    waiting: int = 0
    consecutive_failures: int = 0
    state: BreakerState = BreakerState.CLOSED
    open_until: float = 0.0
    probe_in_flight: bool = False
    call_started: dict[int, float] = field(default_factory=dict)
    next_call: int = 0
    defer_level: int = 0
    defer_raised_at: float = float("-inf")
    failed_probes: int = 0
    webhook_id: str = ""
    organization_id: str | None = None

    def __post_init__(self) -> None:
        self.semaphore = asyncio.Semaphore(self.max_concurrency)

    def is_slow(self, now: float) -> bool:
        return bool(self.call_started) and now - min(self.call_started.values()) > SLOW_CALL_S

    def is_unhealthy(self, now: float) -> bool:
        return bool(self.consecutive_failures) or self.state != BreakerState.CLOSED or self.is_slow(now)


class EndpointGates:
    def __init__(self, *, max_concurrency: int, max_queued: int, failure_threshold: int, open_s: float,
                 max_in_flight: int | None = None, clock: Callable[[], float] = time.monotonic,
                 on_close: Callable[[str], None] | None = None) -> None:
        self._gates: dict[str, EndpointGate] = {}
        self._on_close = on_close
        # No webhook holds more than a quarter of the sender's in-flight slots while unhealthy.
        share = max(1, max_in_flight // 4) if max_in_flight is not None else max_concurrency + max_queued
        self._max_concurrency = min(max_concurrency, share)
        self._max_queued = max(0, min(max_queued, share - self._max_concurrency))
        # Nor does one organization, over all its webhooks, hold more than half of them while the
        # webhook at hand is unhealthy (many slow webhooks of one tenant must leave room for others).
        self._org_share = max(1, max_in_flight // 2) if max_in_flight is not None else None
        self._org_held: dict[str, int] = {}
        self._failure_threshold = failure_threshold
        self._open_s = open_s
        self._clock = clock

    def state_of(self, webhook_id: str) -> BreakerState:
        gate = self._gates.get(webhook_id)
        return gate.state if gate else BreakerState.CLOSED

    def _set_state(self, gate: EndpointGate, state: BreakerState, why: str) -> None:
        if gate.state == state:
            return
        gate.state = state
        metrics.BREAKER_TRANSITIONS.labels(state).inc()
        extra = {"webhook_id": gate.webhook_id, "organization_id": gate.organization_id, "why": why}
        if state == BreakerState.OPEN:
            log.warning("circuit breaker opened; deliveries wait for its probe in %gs", self._open_s, extra=extra)
        elif state == BreakerState.CLOSED:
            log.info("circuit breaker closed", extra=extra)
            if self._on_close is not None:
                try:
                    self._on_close(gate.webhook_id)
                except Exception:  # the attempt that closed it succeeded all the same
                    log.exception("circuit breaker close hook failed", extra=extra)
        else:
            log.debug("circuit breaker half-open: one probe", extra=extra)

    def _refusal(self, gate: EndpointGate) -> Deferred | None:
        """The hold when the breaker says no, else None (no state change)."""
        now = self._clock()
        if gate.state == BreakerState.OPEN and now < gate.open_until:
            return self._hold(gate, HOLD_NOTE_PREFIX + "open: endpoint is failing; not sent", gate.open_until - now)
        if gate.state == BreakerState.HALF_OPEN and gate.probe_in_flight:
            return self._hold(gate, HOLD_NOTE_PREFIX + "half-open: probe in flight; not sent", self._open_s)
        return None

    def _hold(self, gate: EndpointGate, reason: str, until_probe_s: float) -> Deferred:
        metrics.DELIVERIES_DEFERRED.inc()
        spread_s = self._open_s * min(gate.failed_probes, HOLD_SPREAD_MAX_PERIODS)
        return Deferred(reason, until_probe_s + spread_s, breaker=True)

    def _admit(self, gate: EndpointGate) -> Deferred | None:
        """Like :meth:`_refusal`, but moves an expired open breaker to half-open and claims its probe."""
        refused = self._refusal(gate)
        if refused is not None:
            return refused
        if gate.state == BreakerState.OPEN:
            self._set_state(gate, BreakerState.HALF_OPEN, "open period over")
        if gate.state == BreakerState.HALF_OPEN:
            gate.probe_in_flight = True
        return None

    def _org_over_share(self, organization_id: str | None) -> bool:
        if self._org_share is None or organization_id is None:
            return False
        return self._org_held.get(organization_id, 0) >= self._org_share

    async def call(self, webhook_id: str, attempt: Callable[[], Awaitable[AttemptResult]],
                   organization_id: str | None = None) -> AttemptResult:
        gate = self._gates.get(webhook_id)
        if gate is None:
            gate = self._gates[webhook_id] = EndpointGate(self._max_concurrency, webhook_id=webhook_id,
                                                          organization_id=organization_id)
        # Checked before queueing for a slot too: a refused call never waits behind others.
        refused = self._refusal(gate)
        if refused is not None:
            return refused
        now = self._clock()
        if gate.is_unhealthy(now) and (gate.waiting >= self._unhealthy_cap(gate, now)
                                       or self._org_over_share(organization_id)):
            return self._defer(gate)
        gate.waiting += 1
        if organization_id is not None:
            self._org_held[organization_id] = self._org_held.get(organization_id, 0) + 1
        try:
            if not await self._acquire(gate):
                return self._defer(gate)
            try:
                refused = self._admit(gate)
                if refused is not None:
                    return refused
                probing = gate.state == BreakerState.HALF_OPEN
                call_id = gate.next_call = gate.next_call + 1
                gate.call_started[call_id] = self._clock()
                try:
                    result = await attempt()
                finally:
                    del gate.call_started[call_id]
                    if probing:
                        gate.probe_in_flight = False
                self._observe(gate, result, probing)
                return result
            finally:
                gate.semaphore.release()
        finally:
            gate.waiting -= 1
            if organization_id is not None:
                left = self._org_held[organization_id] - 1
                if left:
                    self._org_held[organization_id] = left
                else:
                    del self._org_held[organization_id]

    def _unhealthy_cap(self, gate: EndpointGate, now: float) -> int:
        """Deliveries an unhealthy endpoint may hold (running or queued) before more are deferred: its
        running attempts and ``max_queued`` behind them while it fails fast (its queue turns over);
        only the running ones while an attempt hangs (a queue behind it would just wait)."""
        return self._max_concurrency + (0 if gate.is_slow(now) else self._max_queued)

    async def _acquire(self, gate: EndpointGate) -> bool:
        """Take one of the endpoint's slots; False when it turned unhealthy while this delivery waited
        behind its running attempts (the delivery is deferred rather than hold a sender slot)."""
        if not gate.semaphore.locked():
            await gate.semaphore.acquire()
            return True
        while True:
            try:
                # asyncio.timeout, not wait_for: wait_for wraps the acquire in a task of its own, and a
                # backlog keeps hundreds of deliveries queued here (BENCHMARKS.md, CPU per delivery)
                async with asyncio.timeout(QUEUE_RECHECK_S):
                    await gate.semaphore.acquire()
                return True
            except TimeoutError:
                now = self._clock()
                if gate.is_unhealthy(now) and gate.waiting > self._unhealthy_cap(gate, now):
                    return False

    def _defer(self, gate: EndpointGate) -> Deferred:
        metrics.DELIVERIES_DEFERRED.inc()
        now = self._clock()
        if now - gate.defer_raised_at >= 1.0:
            if gate.defer_raised_at != float("-inf"):
                gate.defer_level = min(gate.defer_level + 1, 5)
            gate.defer_raised_at = now
        delay = min(DEFER_MAX_S, DEFER_S * 2 ** gate.defer_level)
        return Deferred("endpoint is slow or failing and already holds its share of the sender", delay)

    def _observe(self, gate: EndpointGate, result: AttemptResult, probing: bool) -> None:
        if isinstance(result, Deferred) or (isinstance(result, Failed) and not result.sent):
            return  # not sent: says nothing about the endpoint
        if isinstance(result, Succeeded):
            gate.consecutive_failures = gate.failed_probes = 0
            gate.defer_level, gate.defer_raised_at = 0, float("-inf")
            self._set_state(gate, BreakerState.CLOSED, f"{'probe' if probing else 'attempt'} succeeded"
                                                       f" (HTTP {result.http_status})")
            return
        # A 4xx other than 408/429 says the endpoint is up and answering: it does not trip the breaker.
        status = result.http_status
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            gate.consecutive_failures = gate.failed_probes = 0
            if gate.state == BreakerState.HALF_OPEN:
                self._set_state(gate, BreakerState.CLOSED, f"probe answered HTTP {status}: the endpoint is up")
            return
        gate.consecutive_failures += 1
        if probing or gate.state == BreakerState.HALF_OPEN:
            gate.failed_probes += 1
            why = f"probe failed: {loggable(result.error)}"
        elif gate.consecutive_failures >= self._failure_threshold:
            why = f"{gate.consecutive_failures} consecutive failures, the last: {loggable(result.error)}"
        else:
            return
        gate.open_until = self._clock() + self._open_s
        self._set_state(gate, BreakerState.OPEN, why)
