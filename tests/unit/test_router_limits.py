"""The router refuses, before storing anything, an event whose delivery task the delivery topic
could not take (issue 11, case 6): re-serialising grows numbers (1e15 -> 1000000000000000.0) and the
task escapes the body again."""

from __future__ import annotations

import orjson

from hookstream.core.settings import Settings
from hookstream.router import router as router_module
from hookstream.router.router import Router, SourceRecord


def record(value: bytes, offset: int = 0) -> SourceRecord:
    return SourceRecord("aiq.orders", 0, offset, b"ord_1", value, ())


def event(event_id: str, data: dict) -> bytes:
    return orjson.dumps({"id": event_id, "type": "product.created", "occurred_at": "2026-11-27T10:15:00Z",
                         "organization_id": "org_1", "store_id": "s1", "data": {"product": {"id": "p1", **data}}})


def test_an_event_whose_task_would_outgrow_the_delivery_topic_is_dead_lettered(monkeypatch) -> None:
    router = Router(Settings(max_event_bytes=1024 * 1024), pool=None, directory=None, producer=None)
    # ~10 KB as published ("1e15" is how upstream wrote it), ~38 KB once re-serialised
    growing = event("evt_grows", {"numbers": "NUMBERS"}).replace(b'"NUMBERS"', b"[" + b",".join([b"1e15"] * 2000) + b"]")
    small = event("evt_small", {"title": "fine"})
    monkeypatch.setattr(router_module, "MAX_TASK_BYTES", 30_000 + router_module.TASK_ENVELOPE_MAX_BYTES)
    assert len(growing) < 30_000
    good, rejected = router.validate_batch([record(growing, 0), record(small, 1)])
    assert [e.id for _, e, _ in good] == ["evt_small"]
    [(rejected_record, rejection)] = rejected
    assert rejected_record.offset == 0 and rejection.reason == "too_large"
    assert "delivery task" in rejection.detail


def test_the_settings_cap_keeps_every_accepted_event_within_the_delivery_topic() -> None:
    from hookstream.core.kafka import DELIVERY_MAX_MESSAGE_BYTES
    from hookstream.core.settings import MAX_EVENT_BYTES_LIMIT

    # the worst growth we know of: 5 bytes ("1e15,") become 19 ("1000000000000000.0,")
    assert MAX_EVENT_BYTES_LIMIT * 19 / 5 + router_module.TASK_ENVELOPE_MAX_BYTES <= router_module.MAX_TASK_BYTES
    assert router_module.MAX_TASK_BYTES < DELIVERY_MAX_MESSAGE_BYTES


class FakeDirectory:
    def __init__(self, hooks) -> None:
        self.hooks = hooks

    def match(self, organization_id: str, event_type: str, store_id: str):
        return self.hooks


def webhook(webhook_id: str, filter_source: str | None):
    from hookstream.core.filters import compile_filter
    from hookstream.core.webhooks import Webhook

    return Webhook(webhook_id, "org_1", "https://example.com", frozenset({"product.created"}), frozenset({"s1"}),
                   True, b"k", None, None, filter=compile_filter(filter_source) if filter_source else None)


def test_a_slow_filter_is_suspended_so_it_cannot_slow_the_shared_router(monkeypatch) -> None:
    hooks = [webhook("wh_slow", 'data.product.id == "p1"'), webhook("wh_plain", None)]
    router = Router(Settings(), pool=None, directory=FakeDirectory(hooks), producer=None)
    monkeypatch.setattr(router_module, "SLOW_FILTER_MS", -1)  # every evaluation counts as slow
    good, _ = router.validate_batch([record(event("evt_1", {}), 0), record(event("evt_2", {}), 1)])
    matches = router.match_batch(good)
    # the first evaluation ran (and matched); the second event finds the filter suspended
    assert [(h, e.id) for h, e in matches] == [("wh_slow", "evt_1"), ("wh_plain", "evt_1"), ("wh_plain", "evt_2")]
    pending = router.filter_errors._pending["wh_slow"]
    assert pending[0] == 1 and "suspended" in pending[1] and pending[2] == "evt_2"


def test_filter_errors_are_stored_as_text_postgresql_accepts() -> None:
    router = Router(Settings(), pool=None, directory=FakeDirectory([]), producer=None)
    router.filter_errors.add("wh_1", "evt_1", "no such key: 'a\x00b'")
    assert "\x00" not in router.filter_errors._pending["wh_1"][1]


def test_dead_letter_error_header_is_cut_at_a_character_boundary() -> None:
    """A detail of multi-byte characters cut to the header's 1,000 bytes stays valid UTF-8 (a
    consumer decoding the header must not fail on a half character)."""
    from hookstream.core.validation import MAX_REJECTION_DETAIL_CHARS, Rejection
    from hookstream.router.router import SourceRecord, dead_letter_headers

    record = SourceRecord("aiq.orders", 3, 42, None, b"{}", ())
    for detail in ("é" * MAX_REJECTION_DETAIL_CHARS, "€" * MAX_REJECTION_DETAIL_CHARS, "plain"):
        headers = dict(dead_letter_headers(record, Rejection("schema", detail)))
        error = headers["hookstream-error"]
        assert len(error) <= 1000
        assert detail.startswith(error.decode("utf-8"))  # strict decode: raises on a cut character
        assert len(error) > 996 or error.decode() == detail  # nothing dropped but the partial character
