"""Pipeline messages: DeliveryTask encoding, AttemptRecord status records, and decide_outcome."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging

import orjson
import pytest

from hookstream.core.logs import JsonFormatter
from hookstream.core.model import (
    DELIVERY_TASK_VERSION,
    AttemptRecord,
    BadTaskError,
    Deferred,
    DeliveryTask,
    Failed,
    Succeeded,
    format_rfc3339,
    parse_rfc3339,
    parse_validated_rfc3339,
)
from hookstream.core.publish import make_event
from hookstream.core.retry import RetryPolicy
from hookstream.core.states import AttemptStatus
from hookstream.core.validation import validate_status_record
from hookstream.sender.sender import decide_outcome

TASK = DeliveryTask(
    delivery_id=42,
    webhook_id="wh_01",
    organization_id="org_acme",
    event_id="evt_01JD8Y4W2Q6N",
    event_type="order.created",
    store_id="store_042",
    occurred_at="2026-11-27T10:15:00.123Z",
    attempt=1,
    retry_index=0,
    manual=False,
    body='{"id":"evt_01JD8Y4W2Q6N","data":{"note":"café ☕"}}',
)
STARTED = dt.datetime(2026, 11, 27, 10, 15, 1, 250000, tzinfo=dt.UTC)
OK = Succeeded(http_status=200, response_excerpt="ok")
HTTP_500 = Failed(retryable=True, error="HTTP 500", http_status=500, response_excerpt="boom")
TIMEOUT = Failed(retryable=True, error="timeout after 10s")
GONE = Failed(retryable=False, error="HTTP 410", http_status=410)

STATUS_KEYS = {
    "webhook_id",
    "event_id",
    "event_type",
    "organization_id",
    "store_id",
    "attempt",
    "status",
    "http_status",
    "error",
    "duration_ms",
    "at",
}


def task(**changes: object) -> DeliveryTask:
    return dataclasses.replace(TASK, **changes)


# -------------------------------------------------------------------------------------- DeliveryTask


def test_encode_decode_round_trip() -> None:
    assert DeliveryTask.decode(TASK.encode()) == TASK


@pytest.mark.parametrize(
    "changes",
    [
        {"manual": True},
        {"attempt": 4, "retry_index": 3},
        {"body": ""},
        {"event_type": "webhook.test"},
        {"delivery_id": 2**62},
        {"window_from": "2026-11-27T10:15:00.123Z"},
    ],
)
def test_round_trip_variants(changes: dict) -> None:
    original = task(**changes)
    assert DeliveryTask.decode(original.encode()) == original


def test_encoding_is_versioned_json_with_every_field() -> None:
    obj = orjson.loads(TASK.encode())
    assert obj["v"] == DELIVERY_TASK_VERSION == 1
    assert set(obj) == {"v"} | {f.name for f in dataclasses.fields(DeliveryTask)}
    assert obj["body"] == TASK.body


def test_a_task_without_a_window_start_decodes_as_one_from_the_router() -> None:
    assert DeliveryTask.decode(encoded_without("window_from")).window_from is None


def test_kafka_key_is_per_delivery() -> None:
    assert TASK.kafka_key == b"wh_01:evt_01JD8Y4W2Q6N"


def test_task_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        TASK.attempt = 2  # type: ignore[misc]


def encoded_with(**changes: object) -> bytes:
    obj = orjson.loads(TASK.encode())
    obj.update(changes)
    return orjson.dumps(obj)


def encoded_without(field: str) -> bytes:
    obj = orjson.loads(TASK.encode())
    del obj[field]
    return orjson.dumps(obj)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(None, id="none"),
        pytest.param(b"", id="empty"),
        pytest.param(b"not json", id="garbage"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"[]", id="array"),
        pytest.param(b"1", id="number"),
        pytest.param(b'"text"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(encoded_with(v=2), id="version-2"),
        pytest.param(encoded_with(v=0), id="version-0"),
        pytest.param(encoded_with(v="1"), id="version-as-string"),
        pytest.param(encoded_without("v"), id="no-version"),
        pytest.param(encoded_without("webhook_id"), id="missing-webhook_id"),
        pytest.param(encoded_without("body"), id="missing-body"),
        pytest.param(encoded_with(delivery_id="abc"), id="delivery_id-not-int"),
        pytest.param(encoded_with(attempt=None), id="attempt-null"),
    ],
)
def test_decode_bad_input_raises_bad_task_error(raw: bytes | None) -> None:
    with pytest.raises(BadTaskError):
        DeliveryTask.decode(raw)


def test_decode_wrong_version_names_the_version() -> None:
    with pytest.raises(BadTaskError, match="version 2"):
        DeliveryTask.decode(encoded_with(v=2))


def test_bad_task_error_is_a_value_error() -> None:
    assert issubclass(BadTaskError, ValueError)


@pytest.mark.parametrize(
    "text", ["2026-11-27T10:15:00Z", "2026-11-27T10:15:00.123z", "2026-11-27T11:15:00+01:00"]
)
def test_parse_rfc3339_is_aware(text: str) -> None:
    parsed = parse_rfc3339(text)
    assert parsed.tzinfo is not None
    assert parsed.astimezone(dt.UTC).replace(microsecond=0) == dt.datetime(
        2026, 11, 27, 10, 15, tzinfo=dt.UTC
    )


# ------------------------------------------------------------------------------------- status record


def record(
    result: Succeeded | Failed, status: str, *, duration_ms: float = 123.4567, the_task: DeliveryTask = TASK
) -> AttemptRecord:
    return AttemptRecord(the_task, STARTED, duration_ms, result, status)


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (OK, "succeeded"),
        (HTTP_500, "retrying"),
        (TIMEOUT, "retrying"),
        (GONE, "failed"),
        (Failed(False, "circuit breaker stayed open past the retry window (2190s after ...); not sent",
                sent=False), "failed"),
    ],
)
def test_status_record_has_exactly_the_contract_keys_and_validates(
    result: Succeeded | Failed, status: str
) -> None:
    obj = orjson.loads(record(result, status).status_record())
    assert set(obj) == STATUS_KEYS
    assert validate_status_record(obj) is None
    assert obj["status"] == status


def test_status_record_values_on_success() -> None:
    obj = orjson.loads(record(OK, "succeeded").status_record())
    assert obj == {
        "webhook_id": "wh_01",
        "event_id": "evt_01JD8Y4W2Q6N",
        "event_type": "order.created",
        "organization_id": "org_acme",
        "store_id": "store_042",
        "attempt": 1,
        "status": "succeeded",
        "http_status": 200,
        "error": None,
        "duration_ms": 123.457,
        "at": obj["at"],
    }
    assert obj["at"].endswith("Z")
    assert parse_rfc3339(obj["at"]).tzinfo is not None


def test_status_record_on_failure_without_response() -> None:
    obj = orjson.loads(record(TIMEOUT, "retrying", the_task=task(attempt=2, retry_index=1)).status_record())
    assert obj["http_status"] is None
    assert obj["error"] == "timeout after 10s"
    assert obj["attempt"] == 2
    assert validate_status_record(obj) is None


def test_status_record_on_http_failure() -> None:
    obj = orjson.loads(record(HTTP_500, "failed", the_task=task(attempt=4, retry_index=3)).status_record())
    assert (obj["http_status"], obj["error"], obj["status"], obj["attempt"]) == (500, "HTTP 500", "failed", 4)
    assert validate_status_record(obj) is None


def test_status_record_for_a_test_send_validates() -> None:
    obj = orjson.loads(
        record(OK, "succeeded", the_task=task(event_type="webhook.test", manual=True)).status_record()
    )
    assert validate_status_record(obj) is None


def test_status_record_at_is_when_the_attempt_finished() -> None:
    """hookstream/schemas/delivery-status.schema.json: `at` is "When the attempt finished."."""
    obj = orjson.loads(record(OK, "succeeded", duration_ms=2500.0).status_record())
    assert parse_rfc3339(obj["at"]) == STARTED + dt.timedelta(milliseconds=2500)


def test_validate_status_record_rejects_extra_and_missing_keys() -> None:
    obj = orjson.loads(record(OK, "succeeded").status_record())
    assert validate_status_record({**obj, "extra": 1}) is not None
    missing = dict(obj)
    del missing["at"]
    assert validate_status_record(missing) is not None
    assert validate_status_record({**obj, "status": "pending"}) is not None


def test_attempt_record_properties() -> None:
    assert record(OK, "succeeded").error is None
    assert record(OK, "succeeded").http_status == 200
    assert record(TIMEOUT, "retrying").http_status is None
    assert record(TIMEOUT, "retrying").error == "timeout after 10s"


# ------------------------------------------------------------------------------------ decide_outcome

POLICY = RetryPolicy((30.0, 300.0, 1800.0), jitter_ratio=0.2)
EXACT = RetryPolicy((30.0, 300.0, 1800.0), jitter_ratio=0.0)
DURATION_MS = 1500.0


def test_success_is_succeeded() -> None:
    rec = decide_outcome(TASK, OK, POLICY, STARTED, DURATION_MS)
    assert rec.status == "succeeded"
    assert rec.next_attempt_at is None
    assert (rec.task, rec.started_at, rec.duration_ms, rec.result) == (TASK, STARTED, DURATION_MS, OK)


@pytest.mark.parametrize("retry_index", [0, 1, 2, 3])
def test_success_at_any_retry_is_succeeded(retry_index: int) -> None:
    assert decide_outcome(task(retry_index=retry_index), OK, POLICY, STARTED, 1.0).status == "succeeded"


@pytest.mark.parametrize(("retry_index", "delay_s"), [(0, 30.0), (1, 300.0), (2, 1800.0)])
@pytest.mark.parametrize("failure", [HTTP_500, TIMEOUT])
def test_retryable_failure_schedules_the_next_attempt(
    retry_index: int, delay_s: float, failure: Failed
) -> None:
    the_task = task(retry_index=retry_index, attempt=retry_index + 1)
    rec = decide_outcome(the_task, failure, EXACT, STARTED, DURATION_MS)
    assert rec.status == "retrying"
    assert rec.next_attempt_at == STARTED + dt.timedelta(milliseconds=DURATION_MS, seconds=delay_s)


@pytest.mark.parametrize(("retry_index", "delay_s"), [(0, 30.0), (1, 300.0), (2, 1800.0)])
def test_retry_time_is_jittered_within_twenty_percent(retry_index: int, delay_s: float) -> None:
    finished = STARTED + dt.timedelta(milliseconds=DURATION_MS)
    for _ in range(50):
        rec = decide_outcome(task(retry_index=retry_index), HTTP_500, POLICY, STARTED, DURATION_MS)
        assert rec.status == "retrying"
        assert rec.next_attempt_at is not None
        wait_s = (rec.next_attempt_at - finished).total_seconds()
        assert delay_s * 0.8 <= wait_s <= delay_s * 1.2


def test_retry_after_is_used_for_the_next_attempt() -> None:
    failure = Failed(retryable=True, error="HTTP 429", http_status=429, retry_after_s=5.0)
    rec = decide_outcome(TASK, failure, POLICY, STARTED, DURATION_MS)
    assert rec.status == "retrying"
    assert rec.next_attempt_at == STARTED + dt.timedelta(milliseconds=DURATION_MS, seconds=5)


@pytest.mark.parametrize("failure", [HTTP_500, TIMEOUT])
def test_failure_after_the_last_retry_is_failed(failure: Failed) -> None:
    rec = decide_outcome(task(retry_index=3, attempt=4), failure, POLICY, STARTED, DURATION_MS)
    assert rec.status == "failed"
    assert rec.next_attempt_at is None


@pytest.mark.parametrize("retry_index", [0, 1, 2])
def test_manual_attempt_fails_without_retry(retry_index: int) -> None:
    rec = decide_outcome(task(manual=True, retry_index=retry_index), HTTP_500, POLICY, STARTED, DURATION_MS)
    assert rec.status == "failed"
    assert rec.next_attempt_at is None


@pytest.mark.parametrize("retry_index", [0, 1, 2])
def test_gone_is_failed_at_once(retry_index: int) -> None:
    rec = decide_outcome(task(retry_index=retry_index), GONE, POLICY, STARTED, DURATION_MS)
    assert rec.status == "failed"
    assert rec.next_attempt_at is None


def test_decided_records_validate_against_the_status_schema() -> None:
    for the_task, result in [
        (TASK, OK),
        (TASK, HTTP_500),
        (task(retry_index=3, attempt=4), TIMEOUT),
        (TASK, GONE),
    ]:
        obj = orjson.loads(decide_outcome(the_task, result, POLICY, STARTED, DURATION_MS).status_record())
        assert validate_status_record(obj) is None


HOLD = Deferred("circuit breaker open: endpoint is failing; not sent", 20.0, breaker=True)
# EXACT's window: 30 s + 5 min + 30 min, no jitter; the sender's slack is one open period
WINDOW_S = 2130.0


def test_a_breaker_hold_keeps_the_retry_and_waits_for_the_probe() -> None:
    for retry_index in (0, 1, 3):
        the_task = task(retry_index=retry_index, attempt=retry_index + 1)
        rec = decide_outcome(the_task, HOLD, EXACT, STARTED, 0.0, hold_slack_s=30.0)
        assert rec.status == "deferred" and rec.task.retry_index == retry_index  # no retry used
        assert rec.next_attempt_at is not None
        assert 20.0 <= (rec.next_attempt_at - STARTED).total_seconds() <= 30.0  # the probe, spread by half
        assert isinstance(rec.result, Deferred)
        # what the delivery log shows as last_error: why, and until when
        assert rec.result.reason.startswith(HOLD.reason + ", waiting for its probe; next try at ")
        assert format_rfc3339(rec.next_attempt_at, timespec="milliseconds") in rec.result.reason
        assert ("still the first attempt" if retry_index == 0 else f"still retry {retry_index} of 3") in rec.result.reason


def test_a_breaker_hold_never_reaches_past_the_retry_window() -> None:
    window_from = STARTED - dt.timedelta(seconds=WINDOW_S + 30 - 5)  # 5 s left
    the_task = task(retry_index=2, attempt=3, window_from=format_rfc3339(window_from))
    rec = decide_outcome(the_task, HOLD, EXACT, STARTED, 0.0, hold_slack_s=30.0)
    assert rec.status == "deferred"
    assert rec.next_attempt_at == STARTED + dt.timedelta(seconds=5)  # back at the deadline, not 20 s later


@pytest.mark.parametrize("retry_index", [0, 2])
def test_a_breaker_hold_after_the_retry_window_fails_the_delivery(retry_index: int) -> None:
    window_from = STARTED - dt.timedelta(seconds=WINDOW_S + 30)
    the_task = task(retry_index=retry_index, attempt=retry_index + 1, window_from=format_rfc3339(window_from))
    rec = decide_outcome(the_task, HOLD, EXACT, STARTED, 0.0, hold_slack_s=30.0)
    assert rec.status == "failed" and rec.next_attempt_at is None
    assert rec.error is not None and rec.error.startswith("circuit breaker stayed open past the retry window")
    assert rec.http_status is None
    assert validate_status_record(orjson.loads(rec.status_record())) is None
    # a moment earlier it is still held
    early = decide_outcome(the_task, HOLD, EXACT, STARTED - dt.timedelta(seconds=1), 0.0, hold_slack_s=30.0)
    assert early.status == "deferred"


def test_a_window_start_from_the_future_or_unreadable_counts_from_now() -> None:
    for window_from in (format_rfc3339(STARTED + dt.timedelta(days=365)), "not a time"):
        rec = decide_outcome(task(retry_index=1, attempt=2, window_from=window_from), HOLD, EXACT, STARTED, 0.0)
        assert rec.status == "deferred"


def test_a_manual_attempt_is_never_held_it_fails_saying_why() -> None:
    rec = decide_outcome(task(manual=True), HOLD, EXACT, STARTED, 0.0, hold_slack_s=30.0)
    assert rec.status == "failed" and rec.error == HOLD.reason


def test_other_deferrals_are_not_bounded_by_the_window() -> None:
    window_from = format_rfc3339(STARTED - dt.timedelta(days=3))
    rec = decide_outcome(task(window_from=window_from), Deferred("saturated", 1.0), EXACT, STARTED, 0.0)
    assert rec.status == "deferred" and rec.result == Deferred("saturated", 1.0)


def test_the_window_is_every_delay_at_its_jitter_cap() -> None:
    assert POLICY.window_s == pytest.approx(2130.0 * 1.2)
    assert EXACT.hold_deadline(STARTED, 30.0) == STARTED + dt.timedelta(seconds=2160)


@pytest.mark.parametrize("text", ["2026-03-01T10:00:00Z", "2026-03-01T10:00:00.123456+02:00",
                                  "2026-12-31T23:59:60Z", "2026-03-01T10:00:00.1234567-05:30"])
def test_the_fast_parser_of_validated_times_agrees_with_the_strict_one(text):
    assert parse_validated_rfc3339(text) == parse_rfc3339(text)


# ------------------------------------------------------------------------------- the one formatter

PLUS_TWO = dt.timezone(dt.timedelta(hours=2))


@pytest.mark.parametrize(
    ("value", "options", "text"),
    [
        # status records' ``at`` and delivery tasks' ``occurred_at``: microseconds only when there are any
        (dt.datetime(2026, 11, 27, 10, 15, tzinfo=dt.UTC), {}, "2026-11-27T10:15:00Z"),
        (dt.datetime(2026, 11, 27, 10, 15, 0, 120000, tzinfo=dt.UTC), {}, "2026-11-27T10:15:00.120000Z"),
        (dt.datetime(2026, 11, 27, 12, 15, 0, 5, tzinfo=PLUS_TWO), {}, "2026-11-27T10:15:00.000005Z"),
        # event and test-event times: always milliseconds, truncated
        (dt.datetime(2026, 11, 27, 10, 15, tzinfo=dt.UTC), {"timespec": "milliseconds"}, "2026-11-27T10:15:00.000Z"),
        (dt.datetime(2026, 11, 27, 12, 15, 0, 123999, tzinfo=PLUS_TWO), {"timespec": "milliseconds"},
         "2026-11-27T10:15:00.123Z"),
        # the JSON log lines' ``ts``
        (dt.datetime(2026, 11, 27, 10, 15, 0, 123999, tzinfo=dt.UTC), {"timespec": "milliseconds", "zone": "+00:00"},
         "2026-11-27T10:15:00.123+00:00"),
        (dt.datetime(1, 1, 1, 0, 0, 1, tzinfo=dt.UTC), {}, "0001-01-01T00:00:01Z"),
    ],
)
def test_format_rfc3339_writes_exactly(value: dt.datetime, options: dict, text: str) -> None:
    assert format_rfc3339(value, **options) == text
    kept = value if options.get("timespec") != "milliseconds" else value.replace(
        microsecond=value.microsecond // 1000 * 1000)
    assert parse_rfc3339(text) == kept  # what the one parser reads back


def test_status_record_at_keeps_its_format() -> None:
    whole = record(OK, AttemptStatus.SUCCEEDED, duration_ms=750.0)  # finishes at 10:15:02.000000
    assert orjson.loads(whole.status_record())["at"] == "2026-11-27T10:15:02Z"
    assert orjson.loads(record(OK, AttemptStatus.SUCCEEDED, duration_ms=1.5).status_record())["at"] == (
        "2026-11-27T10:15:01.251500Z")


def test_status_record_of_an_enum_status_is_byte_identical_to_a_plain_one() -> None:
    for status in (AttemptStatus.SUCCEEDED, AttemptStatus.RETRYING, AttemptStatus.FAILED):
        assert record(OK, status).status_record() == record(OK, status.value).status_record()


def test_log_lines_keep_their_ts_format() -> None:
    entry = logging.LogRecord("hookstream.test", logging.INFO, __file__, 1, "hello", None, None)
    entry.created = dt.datetime(2026, 11, 27, 10, 15, 0, 123999, tzinfo=dt.UTC).timestamp()
    assert orjson.loads(JsonFormatter().format(entry))["ts"] == "2026-11-27T10:15:00.123+00:00"


def test_published_events_keep_their_occurred_at_format() -> None:
    occurred_at = make_event("order.created", organization_id="o", store_id="s", data={})["occurred_at"]
    assert len(occurred_at) == len("2026-11-27T10:15:00.123Z") and occurred_at.endswith("Z")
    assert parse_rfc3339(occurred_at) <= dt.datetime.now(dt.UTC)
