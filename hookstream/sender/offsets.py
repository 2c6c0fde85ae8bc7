"""Which offsets a sender may commit: per partition, up to the oldest delivery not yet durably finished."""

from __future__ import annotations

from aiokafka import TopicPartition


class OffsetTracker:
    """Tracks in-flight offsets per partition. Kafka commits mean "everything below is done", so the
    committable offset is the lowest in-flight offset, or one past the highest finished offset."""

    def __init__(self) -> None:
        self._in_flight: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}

    def started(self, tp: TopicPartition, offset: int) -> None:
        self._in_flight.setdefault(tp, set()).add(offset)
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def finished(self, tp: TopicPartition, offset: int) -> None:
        pending = self._in_flight.get(tp)
        if pending is not None:
            pending.discard(offset)

    def in_flight(self, tp: TopicPartition) -> int:
        return len(self._in_flight.get(tp, ()))

    def committable(self, partitions=None) -> dict[TopicPartition, int]:
        result = {}
        for tp, nxt in self._next.items():
            if partitions is not None and tp not in partitions:
                continue
            pending = self._in_flight.get(tp)
            result[tp] = min(pending) if pending else nxt
        return result

    def forget(self, partitions) -> None:
        for tp in partitions:
            self._in_flight.pop(tp, None)
            self._next.pop(tp, None)
