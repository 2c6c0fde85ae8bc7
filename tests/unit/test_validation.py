"""validate_event: one exact reason per class of bad input, correct DomainEvents for good input,
and never an exception, whatever the bytes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookstream.core.validation import (
    DEFAULT_MAX_EVENT_BYTES,
    EVENT_TYPES,
    MAX_JSON_DEPTH,
    MAX_REJECTION_DETAIL_CHARS,
    ORDER_EVENT_TYPES,
    PRODUCT_EVENT_TYPES,
    REJECTION_REASONS,
    DomainEvent,
    Rejection,
    validate_event,
    validate_status_record,
    validate_webhook_payload,
)

CONTRACT_EXAMPLE: dict[str, Any] = {
    "id": "evt_01JD8Y4W2Q6N",
    "type": "order.created",
    "occurred_at": "2026-11-27T10:15:00.123Z",
    "organization_id": "org_acme",
    "store_id": "store_042",
    "data": {"order": {"id": "ord_991", "total": "42.10", "currency": "USD"}},
}


def encode(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def event(**changes: Any) -> dict[str, Any]:
    result = dict(CONTRACT_EXAMPLE)
    result.update(changes)
    return result


def without(field: str) -> dict[str, Any]:
    return {k: v for k, v in CONTRACT_EXAMPLE.items() if k != field}


def product_event(product: dict[str, Any], **extra_data: Any) -> dict[str, Any]:
    return event(type="product.updated", data={"product": product, **extra_data})


def nested(depth: int) -> Any:
    """An object nesting `depth` containers (itself included)."""
    node: Any = {}
    for _ in range(depth - 1):
        node = {"x": node}
    return node


def rejection(value: Any, **kwargs: Any) -> Rejection:
    result = validate_event(value, **kwargs)
    assert isinstance(result, Rejection), result
    assert result.reason in REJECTION_REASONS
    assert len(result.detail) <= MAX_REJECTION_DETAIL_CHARS
    return result


def accepted(value: Any, **kwargs: Any) -> DomainEvent:
    result = validate_event(value, **kwargs)
    assert isinstance(result, DomainEvent), result
    return result


# ------------------------------------------------------------------------------------------------
# Constants


def test_event_types_follow_the_contract() -> None:
    assert EVENT_TYPES == (
        "product.created", "product.updated", "product.deleted",
        "order.created", "order.confirmed", "order.updated", "order.cancelled", "order.closed",
        "order.out_for_delivery", "order.ready_for_pickup", "order.delivered", "order.shipped",
    )  # fmt: skip
    assert PRODUCT_EVENT_TYPES + ORDER_EVENT_TYPES == EVENT_TYPES
    assert DEFAULT_MAX_EVENT_BYTES == 256 * 1024
    assert len(set(REJECTION_REASONS)) == len(REJECTION_REASONS)


# ------------------------------------------------------------------------------------------------
# Accepted events


def test_contract_example_is_accepted_with_its_fields() -> None:
    result = accepted(encode(CONTRACT_EXAMPLE))
    assert result == DomainEvent(
        id="evt_01JD8Y4W2Q6N",
        type="order.created",
        occurred_at="2026-11-27T10:15:00.123Z",
        organization_id="org_acme",
        store_id="store_042",
        data={"order": {"id": "ord_991", "total": "42.10", "currency": "USD"}},
        occurred_at_epoch_s=1795774500.123,
        occurred_at_utc=dt.datetime(2026, 11, 27, 10, 15, 0, 123000, tzinfo=dt.UTC),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_event_type_is_accepted(event_type: str) -> None:
    data = {"product": {"id": "prod_1"}} if event_type.startswith("product.") else {"order": {"id": "ord_1"}}
    assert accepted(encode(event(type=event_type, data=data))).type == event_type


@pytest.mark.parametrize(
    ("occurred_at", "epoch_s"),
    [
        ("2026-11-27T10:15:00Z", 1795774500.0),
        ("2026-11-27T10:15:00.123Z", 1795774500.123),
        ("2026-11-27t10:15:00z", 1795774500.0),
        ("2026-11-27T11:15:00+01:00", 1795774500.0),
        ("2026-11-27T05:45:00.5-04:30", 1795774500.5),
        ("2026-11-27T10:15:00.123456789Z", 1795774500.123456789),
        ("1970-01-01T00:00:00Z", 0.0),
        ("2024-02-29T00:00:00Z", 1709164800.0),
        ("2016-12-31T23:59:60Z", 1483228800.0),  # leap second: POSIX time of the next :00
    ],
)
def test_occurred_at_is_parsed_to_epoch_seconds(occurred_at: str, epoch_s: float) -> None:
    result = accepted(encode(event(occurred_at=occurred_at)))
    assert result.occurred_at == occurred_at
    assert result.occurred_at_epoch_s == pytest.approx(epoch_s, abs=1e-6)
    # the stored time is the same instant, in UTC, to the microsecond
    assert result.occurred_at_utc.utcoffset() == dt.timedelta(0)
    assert result.occurred_at_utc.timestamp() == pytest.approx(epoch_s, abs=1e-6)


@pytest.mark.parametrize(
    ("occurred_at", "utc"),
    [
        ("2016-12-31T23:59:60Z", dt.datetime(2017, 1, 1, tzinfo=dt.UTC)),
        ("0001-01-01T00:30:00-01:00", dt.datetime(1, 1, 1, 1, 30, tzinfo=dt.UTC)),
        ("0001-01-01T00:00:00.000001Z", dt.datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=dt.UTC)),
        ("9999-12-31T23:59:59.999998Z", dt.datetime(9999, 12, 31, 23, 59, 59, 999998, tzinfo=dt.UTC)),
        ("9999-12-31T23:30:00+01:00", dt.datetime(9999, 12, 31, 22, 30, tzinfo=dt.UTC)),
    ],
)
def test_edge_timestamps_are_normalised_to_utc(occurred_at: str, utc: dt.datetime) -> None:
    result = accepted(encode(event(occurred_at=occurred_at)))
    assert result.occurred_at == occurred_at  # the body keeps the text as published
    assert result.occurred_at_utc == utc


@pytest.mark.parametrize("occurred_at", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00",
                                         "9999-12-31T23:59:60Z",
                                         # asyncpg would store these two as -infinity and infinity
                                         "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z",
                                         "9999-12-31T23:59:59.9999999Z"])
def test_instants_outside_years_1_to_9999_in_utc_are_bad_timestamps(occurred_at: str) -> None:
    result = validate_event(encode(event(occurred_at=occurred_at)))
    assert isinstance(result, Rejection) and result.reason == "bad_timestamp", result
    assert "0001-9999" in result.detail


@pytest.mark.parametrize("field", ["organization_id", "store_id"])
@pytest.mark.parametrize("char", ["\x00", "\x1b", "\n", "\x7f", "\x85"])
def test_control_characters_in_ids_are_refused(field: str, char: str) -> None:
    result = validate_event(encode(event(**{field: f"a{char}b"})))
    assert isinstance(result, Rejection) and result.reason == "schema", result
    assert field in result.detail and "control characters" in result.detail


def test_bytes_like_values_are_accepted() -> None:
    raw = encode(CONTRACT_EXAMPLE)
    assert accepted(bytearray(raw)).id == CONTRACT_EXAMPLE["id"]
    assert accepted(memoryview(raw)).id == CONTRACT_EXAMPLE["id"]


def test_unknown_fields_inside_data_are_accepted() -> None:
    result = accepted(encode(product_event({"id": "p", "seo": {"title": "x"}}, changed_fields=["title"])))
    assert result.data["changed_fields"] == ["title"]


@pytest.mark.parametrize(
    "text",
    [
        'a"b',
        "a:b",
        '":"',
        '\\":',
        "\\",
        "ends with backslash\\",
        '{"k": 1, "k": 2}',
        "::",
        "日本語:テキスト",
        "\U0001f600:",
    ],
)
def test_tricky_strings_are_not_mistaken_for_duplicate_keys(text: str) -> None:
    product = {"id": "p", "title": text, text: text, "tags": [text, text, text]}
    accepted(encode(product_event(product)))
    accepted(json.dumps(product_event(product), ensure_ascii=True).encode())
    # Colons spelled as escapes take the string-aware path.
    escaped = json.dumps(product_event(product), ensure_ascii=True).replace(":", "\\u003a")
    escaped = escaped.replace('"\\u003a ', '": ')  # the separators back to real colons
    assert validate_event(escaped.encode()) == validate_event(encode(product_event(product)))


def test_size_limit_is_inclusive() -> None:
    raw = encode(CONTRACT_EXAMPLE)
    assert accepted(raw, max_bytes=len(raw)).id == CONTRACT_EXAMPLE["id"]
    assert rejection(raw, max_bytes=len(raw) - 1).reason == "too_large"
    padded = raw[:-1] + b" " * (DEFAULT_MAX_EVENT_BYTES - len(raw)) + b"}"
    assert len(padded) == DEFAULT_MAX_EVENT_BYTES
    accepted(padded)
    assert rejection(padded + b" ").reason == "too_large"


def test_depth_limit_is_inclusive() -> None:
    # envelope (1) > data (2) > product (3) > nested ... : MAX_JSON_DEPTH containers in all
    deepest_ok = product_event({"id": "p", "extra": nested(MAX_JSON_DEPTH - 3)})
    accepted(encode(deepest_ok))
    too_deep = product_event({"id": "p", "extra": nested(MAX_JSON_DEPTH - 2)})
    assert rejection(encode(too_deep)).reason == "too_deep"
    too_deep_list = product_event(
        {"id": "p", "tags": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}
    )
    assert rejection(encode(too_deep_list)).reason == "too_deep"


@pytest.mark.parametrize("number", [2**63 - 1, -(2**63), 9.2e18, -9.2e18, -1e-300, 0.1])
def test_numbers_in_range_are_accepted(number: int | float) -> None:
    accepted(encode(product_event({"id": "p", "weight": number})))


# ------------------------------------------------------------------------------------------------
# Rejections, one exact reason per class

VALID = encode(CONTRACT_EXAMPLE)

REJECTED: list[tuple[str, Any, str]] = [
    # (test id, value, reason)
    ("tombstone", None, "empty"),
    ("zero-length", b"", "empty"),
    ("oversize", VALID + b" " * DEFAULT_MAX_EVENT_BYTES, "too_large"),
    ("oversize-garbage-is-not-decoded", b"\xff" * (DEFAULT_MAX_EVENT_BYTES + 1), "too_large"),
    ("latin-1", '{"id": "évt"}'.encode("latin-1"), "not_utf8"),
    ("lone-continuation-byte", b'{"a": "\x80"}', "not_utf8"),
    ("overlong-encoding", b'{"a": "\xc0\xaf"}', "not_utf8"),
    ("encoded-surrogate", b'{"a": "\xed\xa0\x80"}', "not_utf8"),
    ("truncated-sequence", VALID[:-1] + b"\xe6\x97", "not_utf8"),
    ("utf-16", json.dumps(CONTRACT_EXAMPLE).encode("utf-16"), "not_utf8"),
    ("whitespace-only", b"  \n ", "not_json"),
    ("truncated", VALID[:-1], "not_json"),
    ("single-quotes", b"{'id': 'x'}", "not_json"),
    ("trailing-garbage", VALID + b"x", "not_json"),
    ("two-documents", VALID + VALID, "not_json"),
    ("bom", b"\xef\xbb\xbf" + VALID, "not_json"),
    ("nan-literal", b'{"a": NaN}', "not_json"),
    ("infinity-literal", b'{"a": Infinity}', "not_json"),
    ("trailing-comma", b'{"a": 1,}', "not_json"),
    ("lone-surrogate-escape", b'{"a": "\\ud800"}', "not_json"),
    ("control-char-in-string", b'{"a": "\x01"}', "not_json"),
    ("array", b"[1, 2]", "not_object"),
    ("string", b'"evt"', "not_object"),
    ("number", b"42", "not_object"),
    ("null", b"null", "not_object"),
    ("true", b"true", "not_object"),
    ("deep-objects", encode(nested(MAX_JSON_DEPTH + 1)), "too_deep"),
    ("deeper-than-orjson-allows", b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", "too_deep"),
    ("float-overflow", encode(product_event({"id": "p"}))[:-2] + b', "w": 1e400}}', "number_out_of_range"),
    ("negative-float-overflow", b'{"a": -1e400}', "number_out_of_range"),
    ("int-beyond-u64", b'{"a": 18446744073709551616}', "number_out_of_range"),
    ("int-in-u64-beyond-i64", b'{"a": 9223372036854775808}', "number_out_of_range"),
    ("int-below-i64", b'{"a": -9223372036854775809}', "number_out_of_range"),
    ("huge-int-in-data", encode(product_event({"id": "p", "n": 10**30})), "number_out_of_range"),
    ("huge-float", b'{"a": 1e19}', "number_out_of_range"),
    ("duplicate-top-level-key", VALID[:-1] + b', "id": "evt_other"}', "duplicate_keys"),
    ("duplicate-key-same-value", b'{"a": 1, "a": 1}', "duplicate_keys"),
    ("duplicate-key-nested", encode(product_event({"id": "p"}))[:-3] + b', "id": "q"}}}', "duplicate_keys"),
    ("duplicate-key-via-escape", b'{"a": 1, "\\u0061": 2}', "duplicate_keys"),
    ("duplicate-key-with-escaped-colon", b'{"a\\u003a": "\\u003a", "a\\u003a": 2}', "duplicate_keys"),
    ("duplicate-key-with-quotes-and-colons", b'{"k\\":\\"": "v:\\"", "k\\":\\"": ":"}', "duplicate_keys"),
    ("duplicate-key-in-list", b'{"l": [{"b": 1, "c": 2, "b": 3}]}', "duplicate_keys"),
    ("empty-object", b"{}", "missing_field"),
    *[(f"missing-{f}", encode(without(f)), "missing_field") for f in CONTRACT_EXAMPLE],
    ("id-number", encode(event(id=991)), "wrong_type"),
    ("id-null", encode(event(id=None)), "wrong_type"),
    ("type-list", encode(event(type=["order.created"])), "wrong_type"),
    ("occurred-at-epoch", encode(event(occurred_at=1795774500)), "wrong_type"),
    ("organization-id-bool", encode(event(organization_id=True)), "wrong_type"),
    ("store-id-number", encode(event(store_id=42)), "wrong_type"),
    ("data-list", encode(event(data=[])), "wrong_type"),
    ("data-string", encode(event(data="{}")), "wrong_type"),
    ("id-empty", encode(event(id="")), "bad_id"),
    ("id-space", encode(event(id="evt 1")), "bad_id"),
    ("id-slash", encode(event(id="evt/1")), "bad_id"),
    ("id-unicode-letter", encode(event(id="évt")), "bad_id"),
    ("id-unicode-digit", encode(event(id="evt٣")), "bad_id"),
    ("id-trailing-newline", encode(event(id="evt_1\n")), "bad_id"),
    ("id-129-chars", encode(event(id="a" * 129)), "bad_id"),
    ("ts-no-zone", encode(event(occurred_at="2026-11-27T10:15:00")), "bad_timestamp"),
    ("ts-date-only", encode(event(occurred_at="2026-11-27")), "bad_timestamp"),
    ("ts-space", encode(event(occurred_at="2026-11-27 10:15:00Z")), "bad_timestamp"),
    ("ts-compact-offset", encode(event(occurred_at="2026-11-27T10:15:00+0100")), "bad_timestamp"),
    ("ts-hour-24", encode(event(occurred_at="2026-11-27T24:00:00Z")), "bad_timestamp"),
    ("ts-30-february", encode(event(occurred_at="2026-02-30T10:15:00Z")), "bad_timestamp"),
    ("ts-29-february-non-leap", encode(event(occurred_at="2026-02-29T10:15:00Z")), "bad_timestamp"),
    ("ts-year-zero", encode(event(occurred_at="0000-01-01T00:00:00Z")), "bad_timestamp"),
    ("ts-trailing-newline", encode(event(occurred_at="2026-11-27T10:15:00Z\n")), "bad_timestamp"),
    ("ts-ten-fraction-digits", encode(event(occurred_at="2026-11-27T10:15:00.1234567890Z")), "bad_timestamp"),
    ("ts-empty", encode(event(occurred_at="")), "bad_timestamp"),
    ("type-unknown", encode(event(type="order.refunded")), "unknown_type"),
    ("type-case", encode(event(type="Order.Created")), "unknown_type"),
    ("type-test-event", encode(event(type="webhook.test")), "unknown_type"),
    ("type-empty", encode(event(type="")), "unknown_type"),
    ("data-empty", encode(event(data={})), "invalid_data"),
    ("data-wrong-resource", encode(event(data={"product": {"id": "p"}})), "invalid_data"),
    ("data-bad-currency", encode(event(data={"order": {"id": "o", "currency": "dollars"}})), "invalid_data"),
    ("data-numeric-total", encode(event(data={"order": {"id": "o", "total": 42.1}})), "invalid_data"),
    ("data-order-id-number", encode(event(data={"order": {"id": 991}})), "invalid_data"),
    ("data-status-mismatch", encode(event(type="order.cancelled", data={"order": {"id": "o", "status": "shipped"}})), "invalid_data"),
    ("data-product-no-id", encode(product_event({"title": "Tee"})), "invalid_data"),
    ("organization-id-empty", encode(event(organization_id="")), "schema"),
    ("store-id-empty", encode(event(store_id="")), "schema"),
    ("store-id-too-long", encode(event(store_id="s" * 129)), "schema"),
    ("unknown-top-level-field", encode(event(version=2)), "schema"),
    ("str-instead-of-bytes", VALID.decode(), "not_json"),
    ("int-instead-of-bytes", 42, "not_json"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "reason"), [(v, r) for _, v, r in REJECTED], ids=[i for i, _, _ in REJECTED]
)
def test_rejection_reason(value: Any, reason: str) -> None:
    assert rejection(value).reason == reason


def test_every_reason_but_internal_error_is_exercised() -> None:
    # unstorable is the router's (PostgreSQL refused an event validation accepted), not the validator's
    assert {r for _, _, r in REJECTED} == set(REJECTION_REASONS) - {"internal_error", "unstorable"}


def test_missing_field_detail_names_every_missing_field() -> None:
    result = rejection(encode({"id": "evt_1", "data": {}}))
    assert result.reason == "missing_field"
    assert result.detail == "missing required field(s): type, occurred_at, organization_id, store_id"


def test_invalid_data_detail_points_at_the_field() -> None:
    result = rejection(encode(event(data={"order": {"id": "o", "lines": [{"id": "l", "quantity": 0}]}})))
    assert result.reason == "invalid_data"
    assert "data.order.lines[0].quantity" in result.detail
    assert result.detail.startswith("order.created: ")


def test_details_stay_short_and_do_not_echo_the_input() -> None:
    huge = "x" * 100_000
    for value in (
        encode(event(**{huge: 1})),
        encode(event(type=huge)),
        encode(event(id=huge)),
        encode(event(occurred_at=huge)),
        encode(event(store_id=huge)),
        encode(product_event({"id": "p", "variants": [{"id": "v", "options": {huge: 1}}]})),
        b'{"' + huge.encode() + b'": ',
    ):
        result = rejection(value)
        assert huge[:1000] not in result.detail


def test_data_of_a_rejected_envelope_is_not_validated_first() -> None:
    # The envelope's own faults win over faults inside data.
    assert rejection(encode(event(type="order.refunded", data={"order": {}}))).reason == "unknown_type"
    assert rejection(encode(event(id="bad id", data=[]))).reason == "bad_id"


# ------------------------------------------------------------------------------------------------
# Properties: never raise, always a DomainEvent or a Rejection with a known reason.


def check_outcome(result: Any) -> None:
    assert isinstance(result, DomainEvent | Rejection)
    if isinstance(result, Rejection):
        assert result.reason in REJECTION_REASONS
        assert result.reason != "internal_error", result.detail
        assert isinstance(result.detail, str)
        assert len(result.detail) <= MAX_REJECTION_DETAIL_CHARS


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=40,
)
envelope_field_values = st.sampled_from(list(CONTRACT_EXAMPLE)).flatmap(
    lambda f: st.tuples(st.just(f), json_values | st.sampled_from([CONTRACT_EXAMPLE[f], *EVENT_TYPES]))
)


@settings(deadline=None, max_examples=300)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_raise(value: bytes) -> None:
    check_outcome(validate_event(value))


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_never_raises(obj: Any) -> None:
    check_outcome(validate_event(json.dumps(obj).encode()))


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(envelope_field_values, max_size=4), st.sets(st.sampled_from(list(CONTRACT_EXAMPLE)), max_size=2)
)
def test_mutated_envelopes_never_raise(changes: list[tuple[str, Any]], removed: set[str]) -> None:
    obj = dict(CONTRACT_EXAMPLE)
    obj.update(changes)
    for field in removed:
        obj.pop(field)
    result = validate_event(json.dumps(obj).encode())
    check_outcome(result)
    if isinstance(result, DomainEvent):
        assert result.id == obj["id"] and result.data == obj["data"]


# Objects written as lists of (key, value) pairs, so the text may repeat a key; the oracle is
# Python's own parser with object_pairs_hook.
pair_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(alphabet='ab:"\\\u00e9{}', max_size=6)
)
pair_trees = st.recursive(
    pair_scalars,
    lambda children: (
        st.lists(children, max_size=3).map(lambda items: ("list", items))
        | st.lists(st.tuples(st.text(alphabet='ab:"\\', max_size=3), children), max_size=4).map(
            lambda p: ("obj", p)
        )
    ),
    max_leaves=20,
)


def render(node: Any, escape_colons: bool) -> str:
    if isinstance(node, tuple) and node[0] == "list":
        return "[" + ",".join(render(item, escape_colons) for item in node[1]) + "]"
    if isinstance(node, tuple) and node[0] == "obj":
        return (
            "{"
            + ", ".join(f"{render(k, escape_colons)} : {render(v, escape_colons)}" for k, v in node[1])
            + "}"
        )
    text = json.dumps(node, ensure_ascii=False)
    if escape_colons and isinstance(node, str):
        text = text.replace(":", "\\u003a")  # inside a string token a colon is never part of an escape
    return text


def has_duplicate_keys(text: str) -> bool:
    found = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal found
        keys = [k for k, _ in pairs]
        found = found or len(keys) != len(set(keys))
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return found


@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.text(alphabet='ab:"\\', max_size=3), pair_trees), max_size=5), st.booleans())
def test_duplicate_keys_are_detected_exactly(pairs: list[tuple[str, Any]], escape_colons: bool) -> None:
    text = render(("obj", pairs), escape_colons)
    result = validate_event(text.encode())
    check_outcome(result)
    assert isinstance(result, Rejection)
    assert (result.reason == "duplicate_keys") == has_duplicate_keys(text), (text, result)


# ------------------------------------------------------------------------------------------------
# Outbound documents


def test_webhook_payload_validation() -> None:
    payload = {
        "id": CONTRACT_EXAMPLE["id"],
        "type": "order.created",
        "created_at": CONTRACT_EXAMPLE["occurred_at"],
        "organization_id": "org_acme",
        "store_id": "store_042",
        "data": CONTRACT_EXAMPLE["data"],
    }
    assert validate_webhook_payload(payload) is None
    assert validate_webhook_payload({**payload, "type": "webhook.test", "data": {"anything": [1]}}) is None
    assert (
        validate_webhook_payload({**payload, "data": {"order": {"id": "o", "currency": "usd"}}}) is not None
    )
    assert validate_webhook_payload({**payload, "occurred_at": payload["created_at"]}) is not None
    assert validate_webhook_payload([payload]) is not None


def test_status_record_validation() -> None:
    record = {
        "webhook_id": "wh_1",
        "event_id": "evt_1",
        "event_type": "order.created",
        "organization_id": "org_acme",
        "store_id": "store_042",
        "attempt": 1,
        "status": "retrying",
        "http_status": None,
        "error": "timeout after 10s",
        "duration_ms": 10000.0,
        "at": "2026-11-27T10:15:10Z",
    }
    assert validate_status_record(record) is None
    assert (
        validate_status_record({**record, "status": "succeeded", "http_status": 204, "error": None}) is None
    )
    for key in record:
        assert validate_status_record({k: v for k, v in record.items() if k != key}) is not None, key
    assert validate_status_record({**record, "attempt": True}) is not None
    assert validate_status_record({**record, "duration_ms": -0.1}) is not None
