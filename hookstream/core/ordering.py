"""Delivery in order per resource (a product or an order), opt-in per webhook (``ordering``).

The rules are kept by PostgreSQL (``schemas/sql/0004_ordering.sql``): per (webhook, resource) one
delivery, the *head*, may be attempted; a later delivery of the same resource is stored *waiting*
behind it, with no task issued. When the head's delivery finishes (succeeded, or failed after its
retries) the resource's oldest waiting delivery becomes the head and is made due, so the retry
pump issues it through the durable path. The state lives in the database only, so it holds across
crashes, restarts, rebalances and any number of sender replicas, and it costs the unordered path
one NULL check per delivery row.

:class:`OrderedResources` is the same rules in memory: what the triggers do, stated in Python, so
that a property-based test can drive them through generated interleavings, failures and crashes
(``tests/unit/test_ordering.py``) and a differential test can hold the SQL to it
(``tests/integration/test_ordering.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from hookstream.core.states import DeliveryStatus

NONE: Final = "none"
PER_RESOURCE: Final = "per_resource"
ORDERINGS: Final = (NONE, PER_RESOURCE)

Key = tuple[str, str]  # (webhook id, resource key)


def resource_key(event_type: str, data: Mapping[str, Any]) -> str:
    """The resource an event is about, as stored: ``product:<data.product.id>`` for product events,
    ``order:<data.order.id>`` for order events (a product and an order with the same id are two
    resources). The id is escaped so that any string the schema allows can be stored as text
    (PostgreSQL text cannot hold NUL); the escape is injective, so two ids never share a key."""
    group = "product" if event_type.startswith("product.") else "order"
    resource = str(data[group]["id"]).replace("\\", "\\\\").replace("\x00", "\\0")
    return f"{group}:{resource}"


@dataclass
class OrderedResources:
    """The database's ordering state and rules, in memory (see the module docstring)."""

    heads: dict[Key, int] = field(default_factory=dict)  # only resources with an unfinished delivery
    waiting: dict[Key, list[int]] = field(default_factory=dict)
    status: dict[int, DeliveryStatus] = field(default_factory=dict)
    key_of: dict[int, Key] = field(default_factory=dict)

    def admit(self, delivery_id: int, key: Key) -> bool:
        """Store a new delivery (ids increase in source order); True when it may be attempted now
        (it is the head), False when it waits behind the head. A delivery already stored (a replay)
        changes nothing and is not admitted again."""
        if delivery_id in self.status:
            return False
        self.status[delivery_id] = DeliveryStatus.PENDING
        self.key_of[delivery_id] = key
        if key not in self.heads:
            self.heads[key] = delivery_id
            return True
        self.waiting.setdefault(key, []).append(delivery_id)
        return False

    def finish(self, delivery_id: int, status: DeliveryStatus) -> int | None:
        """A delivery leaves ``pending`` (succeeded or failed); returns the delivery released by it
        (the resource's new head, made due now), if any. Only the head releases: a waiting delivery
        ended out of turn by a manual redelivery just stops waiting."""
        if status == DeliveryStatus.PENDING or self.status.get(delivery_id) != DeliveryStatus.PENDING:
            return None
        self.status[delivery_id] = status
        key = self.key_of[delivery_id]
        queue = self.waiting.get(key, [])
        if delivery_id in queue:
            queue.remove(delivery_id)
            return None
        if self.heads.get(key) != delivery_id:
            return None
        if not queue:
            del self.heads[key]  # nothing unfinished: the resource is forgotten
            return None
        released = queue.pop(0)
        self.heads[key] = released
        return released

    def may_send(self, delivery_id: int) -> bool:
        """Whether an automatic attempt of ``delivery_id`` may go out now (the sender's claim): only
        the head's, while it is unfinished. A late copy of a finished delivery's attempt may not."""
        key = self.key_of.get(delivery_id)
        return (key is not None and self.status[delivery_id] == DeliveryStatus.PENDING
                and self.heads.get(key) == delivery_id)

    def waits_behind(self, delivery_id: int) -> int | None:
        """The head a waiting delivery waits behind, or None when it is not waiting."""
        key = self.key_of.get(delivery_id)
        if key is None or delivery_id not in self.waiting.get(key, []):
            return None
        return self.heads.get(key)
