"""OffsetTracker: commit only below the oldest delivery not yet durably finished."""

from __future__ import annotations

from aiokafka import TopicPartition

from hookstream.sender.offsets import OffsetTracker

P0 = TopicPartition("hookstream.deliveries", 0)
P1 = TopicPartition("hookstream.deliveries", 1)
OTHER = TopicPartition("other", 0)


def start_range(tracker: OffsetTracker, tp: TopicPartition, offsets: range) -> None:
    for offset in offsets:
        tracker.started(tp, offset)


def test_nothing_tracked_nothing_committable() -> None:
    assert OffsetTracker().committable() == {}
    assert OffsetTracker().in_flight(P0) == 0


def test_all_in_flight_commits_the_first_offset() -> None:
    tracker = OffsetTracker()
    start_range(tracker, P0, range(10, 15))
    assert tracker.committable() == {P0: 10}
    assert tracker.in_flight(P0) == 5


def test_out_of_order_finishes_commit_only_up_to_the_lowest_in_flight() -> None:
    tracker = OffsetTracker()
    start_range(tracker, P0, range(10, 15))
    for offset in (14, 12, 13):
        tracker.finished(P0, offset)
    assert tracker.committable() == {P0: 10}
    tracker.finished(P0, 10)
    assert tracker.committable() == {P0: 11}
    assert tracker.in_flight(P0) == 1


def test_all_finished_commits_one_past_the_last() -> None:
    tracker = OffsetTracker()
    start_range(tracker, P0, range(10, 15))
    for offset in (13, 11, 14, 10, 12):
        tracker.finished(P0, offset)
    assert tracker.committable() == {P0: 15}
    assert tracker.in_flight(P0) == 0


def test_commit_point_never_moves_past_an_unfinished_offset_in_any_order() -> None:
    tracker = OffsetTracker()
    start_range(tracker, P0, range(0, 6))
    order = [5, 1, 4, 0, 3, 2]
    finished: set[int] = set()
    for offset in order:
        tracker.finished(P0, offset)
        finished.add(offset)
        expected = min(set(range(6)) - finished, default=6)
        assert tracker.committable() == {P0: expected}


def test_later_fetches_extend_the_commit_point() -> None:
    tracker = OffsetTracker()
    start_range(tracker, P0, range(0, 3))
    for offset in range(3):
        tracker.finished(P0, offset)
    assert tracker.committable() == {P0: 3}
    tracker.started(P0, 3)
    assert tracker.committable() == {P0: 3}
    tracker.finished(P0, 3)
    assert tracker.committable() == {P0: 4}


def test_gaps_in_offsets_are_fine() -> None:
    # Compacted topics or transaction markers leave gaps; only fetched offsets matter.
    tracker = OffsetTracker()
    for offset in (100, 105, 110):
        tracker.started(P0, offset)
    tracker.finished(P0, 100)
    assert tracker.committable() == {P0: 105}
    tracker.finished(P0, 110)
    tracker.finished(P0, 105)
    assert tracker.committable() == {P0: 111}


def test_finishing_an_unknown_offset_or_partition_is_harmless() -> None:
    tracker = OffsetTracker()
    tracker.finished(P1, 7)
    tracker.started(P0, 5)
    tracker.finished(P0, 99)
    assert tracker.committable() == {P0: 5}
    tracker.finished(P0, 5)
    tracker.finished(P0, 5)
    assert tracker.committable() == {P0: 6}


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    start_range(tracker, P0, range(0, 3))
    start_range(tracker, P1, range(50, 53))
    tracker.finished(P0, 0)
    tracker.finished(P1, 52)
    assert tracker.committable() == {P0: 1, P1: 50}
    assert tracker.in_flight(P0) == 2
    assert tracker.in_flight(P1) == 2


def test_committable_filtered_to_given_partitions() -> None:
    tracker = OffsetTracker()
    start_range(tracker, P0, range(0, 3))
    start_range(tracker, P1, range(50, 53))
    assert tracker.committable([P1]) == {P1: 50}
    assert tracker.committable({P0}) == {P0: 0}
    assert tracker.committable([OTHER]) == {}
    assert tracker.committable([]) == {}
    assert tracker.committable(None) == {P0: 0, P1: 50}


def test_forget_drops_revoked_partitions_only() -> None:
    tracker = OffsetTracker()
    start_range(tracker, P0, range(0, 3))
    start_range(tracker, P1, range(50, 53))
    tracker.forget([P0])
    assert tracker.committable() == {P1: 50}
    assert tracker.in_flight(P0) == 0
    tracker.forget([OTHER])  # unknown partition: no error
    assert tracker.committable() == {P1: 50}


def test_partition_reassigned_after_forget_starts_fresh() -> None:
    tracker = OffsetTracker()
    start_range(tracker, P0, range(100, 110))
    tracker.forget([P0])
    tracker.started(P0, 20)
    assert tracker.committable() == {P0: 20}
    tracker.finished(P0, 20)
    assert tracker.committable() == {P0: 21}
