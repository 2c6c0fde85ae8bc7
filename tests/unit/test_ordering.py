"""The ordering rules (hookstream.core.ordering.OrderedResources, what the database's triggers do)
driven through generated interleavings of routing, attempts that succeed, fail for good or are
retried, crashes that repeat an attempt whose outcome was lost, and manual redeliveries; then run
to completion. The guarantee of CONTRACT §3 ("Ordering") is checked on every step."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hookstream.core.ordering import OrderedResources, resource_key
from hookstream.core.states import DeliveryStatus

WEBHOOK = "wh_1"


@dataclass
class Simulation:
    """A per_resource webhook as the pipeline runs it: the router admits, senders attempt the heads
    that have a task in flight, outcomes finish deliveries and release their successors."""

    resources: int
    events_per_resource: int
    rules: OrderedResources = field(default_factory=OrderedResources)
    routed: dict[int, int] = field(default_factory=dict)  # resource -> events routed so far
    ids: dict[int, list[int]] = field(default_factory=dict)  # resource -> its delivery ids, in order
    in_flight: set[int] = field(default_factory=set)  # automatic tasks issued and not yet finished
    issued: set[int] = field(default_factory=set)  # every delivery a task was ever issued for
    sends: list[tuple[int, int, bool]] = field(default_factory=list)  # (resource, delivery, manual)
    next_id: int = 1

    def key(self, resource: int) -> tuple[str, str]:
        return (WEBHOOK, f"ord_{resource}")

    def resource_of(self, delivery: int) -> int:
        return next(r for r, ids in self.ids.items() if delivery in ids)

    def route(self, resource: int, replay: bool = False) -> None:
        if replay and self.ids.get(resource):
            # a router crash replays a stored delivery: nothing changes, nothing is issued again
            assert self.rules.admit(self.ids[resource][-1], self.key(resource)) is False
            return
        if self.routed.get(resource, 0) >= self.events_per_resource:
            return
        self.routed[resource] = self.routed.get(resource, 0) + 1
        delivery, self.next_id = self.next_id, self.next_id + 1
        self.ids.setdefault(resource, []).append(delivery)
        if self.rules.admit(delivery, self.key(resource)):
            self.issue(delivery)

    def issue(self, delivery: int) -> None:
        self.in_flight.add(delivery)
        self.issued.add(delivery)

    def attempt(self, pick: int, outcome: str) -> None:
        """A sender attempts one task in flight: ``success``, ``final`` (failed, no retry left),
        ``retry`` (another attempt scheduled: still pending, still in flight) or ``lost`` (a crash
        after sending, before the outcome was recorded: the task is attempted again later)."""
        if not self.in_flight:
            return
        delivery = sorted(self.in_flight)[pick % len(self.in_flight)]
        assert self.rules.may_send(delivery)  # the task of a head: its claim succeeds
        self.send(delivery, manual=False)
        if outcome in ("retry", "lost"):
            return
        self.in_flight.discard(delivery)
        status = DeliveryStatus.SUCCEEDED if outcome == "success" else DeliveryStatus.FAILED
        released = self.rules.finish(delivery, status)
        if released is not None:
            self.issue(released)

    def copy(self, pick: int) -> None:
        """An at-least-once copy of some delivery's task arrives late (a router or pump re-send, a
        revoked partition's job): the sender claims before sending, and only a head may be sent."""
        if not self.issued:
            return
        delivery = sorted(self.issued)[pick % len(self.issued)]
        if self.rules.may_send(delivery):
            self.send(delivery, manual=False)

    def manual(self, pick: int, succeeds: bool) -> None:
        """A redelivery through the API: one attempt outside the order. A success ends a waiting
        delivery (passed over when its turn comes); a failure leaves it waiting for its turn. A
        finished delivery's redelivery changes nothing of the order."""
        everything = sorted(self.rules.status)
        if not everything:
            return
        delivery = everything[pick % len(everything)]
        if delivery in self.in_flight:
            return  # it waits for the attempt in flight (one attempt of a delivery at a time)
        self.send(delivery, manual=True)
        if self.rules.status[delivery] == DeliveryStatus.PENDING and succeeds:
            released = self.rules.finish(delivery, DeliveryStatus.SUCCEEDED)
            if released is not None:
                self.issue(released)

    def send(self, delivery: int, *, manual: bool) -> None:
        resource = self.resource_of(delivery)
        if not manual:
            # The guarantee: an automatic attempt of a delivery goes out only when every earlier
            # delivery of its resource has finished, so no later event's attempt precedes it.
            earlier = [d for d in self.ids[resource] if d < delivery]
            assert all(self.rules.status[d] != DeliveryStatus.PENDING for d in earlier), (delivery, earlier)
            later_sent = [d for r, d, m in self.sends if r == resource and d > delivery and not m]
            assert later_sent == [], f"{delivery} sent after later deliveries {later_sent} of its resource"
        self.sends.append((resource, delivery, manual))
        self.check()

    def check(self) -> None:
        for key, head in self.rules.heads.items():
            assert self.rules.status[head] == DeliveryStatus.PENDING
            assert self.rules.key_of[head] == key
        for delivery in self.in_flight:  # only heads have tasks
            assert self.rules.heads[self.rules.key_of[delivery]] == delivery
        for key, queue in self.rules.waiting.items():
            head = self.rules.heads.get(key)
            assert head is not None or not queue, f"{key}: deliveries wait behind nothing"
            for delivery in queue:
                assert self.rules.status[delivery] == DeliveryStatus.PENDING
                assert self.rules.waits_behind(delivery) == head

    def run_to_completion(self) -> None:
        for resource in range(self.resources):
            while self.routed.get(resource, 0) < self.events_per_resource:
                self.route(resource)
        steps = 0
        while self.in_flight:
            self.attempt(0, "success")
            steps += 1
            assert steps <= self.resources * self.events_per_resource + 1
        pending = [d for d, s in self.rules.status.items() if s == DeliveryStatus.PENDING]
        assert pending == [], f"stranded: {pending}"
        assert self.rules.heads == {}  # every resource forgotten


operations = st.lists(st.one_of(
    st.tuples(st.just("route"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("attempt"), st.integers(0, 50), st.sampled_from(["success", "final", "retry", "lost"])),
    st.tuples(st.just("manual"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("copy"), st.integers(0, 50), st.none()),
), max_size=80)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(resources=st.integers(1, 4), per_resource=st.integers(1, 6), ops=operations)
def test_no_event_is_attempted_before_its_predecessor_finished_and_none_is_stranded(
        resources: int, per_resource: int, ops: list[tuple[str, int, object]]) -> None:
    sim = Simulation(resources, per_resource)
    for op, number, arg in ops:
        if op == "route":
            sim.route(number % resources, replay=bool(arg))
        elif op == "attempt":
            sim.attempt(number, str(arg))
        elif op == "copy":
            sim.copy(number)
        else:
            sim.manual(number, bool(arg))
    sim.run_to_completion()
    # per resource, the automatic first attempts went out in routing order
    for resource, ids in sim.ids.items():
        firsts = list(dict.fromkeys(d for r, d, manual in sim.sends if r == resource and not manual))
        assert firsts == sorted(firsts)
        assert set(firsts) <= set(ids)


def test_a_failed_delivery_releases_the_next_and_a_manual_one_outside_the_order_does_not() -> None:
    rules = OrderedResources()
    key = (WEBHOOK, "ord_1")
    assert [rules.admit(d, key) for d in (1, 2, 3)] == [True, False, False]
    assert rules.waits_behind(2) == 1 and rules.waits_behind(3) == 1
    assert rules.finish(2, DeliveryStatus.SUCCEEDED) is None  # a manual redelivery of a waiting one
    assert rules.heads[key] == 1 and rules.waiting[key] == [3]
    assert not rules.may_send(2) and not rules.may_send(3) and rules.may_send(1)
    assert rules.finish(1, DeliveryStatus.FAILED) == 3  # failed for good: the next proceeds
    assert not rules.may_send(1)  # a late copy of the finished head's attempt is not sent
    assert rules.finish(3, DeliveryStatus.SUCCEEDED) is None
    assert key not in rules.heads
    assert rules.admit(4, key) is True  # nothing unfinished: the next event goes straight out


@pytest.mark.parametrize(("event_type", "data", "expected"), [
    ("order.shipped", {"order": {"id": "ord_9", "total": "1.00"}}, "order:ord_9"),
    ("product.updated", {"product": {"id": "ord_9"}}, "product:ord_9"),  # not the order with that id
    ("order.created", {"order": {"id": 42}, "product": {"id": "p"}}, "order:42"),
    ("order.created", {"order": {"id": "a\x00b"}}, "order:a\\0b"),  # storable as text
    ("order.created", {"order": {"id": "a\\0b"}}, "order:a\\\\0b"),  # and still distinct
])
def test_the_resource_of_an_event(event_type: str, data: dict[str, object], expected: str) -> None:
    assert resource_key(event_type, data) == expected
