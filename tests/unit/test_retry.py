"""RetryPolicy, Retry-After parsing and which HTTP statuses are retried."""

from __future__ import annotations

import datetime as dt
from email.utils import format_datetime

import pytest

from hookstream.core.retry import RetryPolicy, is_retryable_status, parse_retry_after_s

DELAYS = (30.0, 300.0, 1800.0)
POLICY = RetryPolicy(DELAYS, jitter_ratio=0.2)


def test_max_retries_is_the_schedule_length() -> None:
    assert POLICY.max_retries == 3
    assert RetryPolicy(()).max_retries == 0


@pytest.mark.parametrize(("retry_index", "base"), list(enumerate(DELAYS)))
def test_next_delay_at_mid_draw_is_the_scheduled_delay(retry_index: int, base: float) -> None:
    assert POLICY.next_delay_s(retry_index, retryable=True, rand=0.5) == pytest.approx(base)


@pytest.mark.parametrize("retry_index", [3, 4, 100])
def test_no_delay_after_the_schedule_is_exhausted(retry_index: int) -> None:
    assert POLICY.next_delay_s(retry_index, retryable=True, rand=0.5) is None
    assert POLICY.next_delay_s(retry_index, retryable=True, retry_after_s=1.0) is None


@pytest.mark.parametrize(("retry_index", "base"), list(enumerate(DELAYS)))
@pytest.mark.parametrize(("rand", "factor"), [(0.0, 0.8), (0.5, 1.0), (0.999, 1.1996)])
def test_jitter_bounds(retry_index: int, base: float, rand: float, factor: float) -> None:
    delay = POLICY.next_delay_s(retry_index, retryable=True, rand=rand)
    assert delay == pytest.approx(base * factor)
    assert base * 0.8 <= delay < base * 1.2


@pytest.mark.parametrize("retry_index", [0, 1, 2])
def test_random_jitter_stays_within_twenty_percent(retry_index: int) -> None:
    base = DELAYS[retry_index]
    draws = [POLICY.next_delay_s(retry_index, retryable=True) for _ in range(500)]
    assert all(base * 0.8 <= d <= base * 1.2 for d in draws)
    assert len(set(draws)) > 1  # the draw is actually random


def test_jitter_ratio_is_configurable() -> None:
    policy = RetryPolicy((100.0,), jitter_ratio=0.0)
    assert policy.next_delay_s(0, retryable=True, rand=0.0) == 100.0
    assert policy.next_delay_s(0, retryable=True, rand=0.999) == 100.0
    wide = RetryPolicy((100.0,), jitter_ratio=0.5)
    assert wide.next_delay_s(0, retryable=True, rand=0.0) == pytest.approx(50.0)


@pytest.mark.parametrize("retry_index", [0, 1, 2, 3])
def test_non_retryable_failure_gets_no_delay(retry_index: int) -> None:
    assert POLICY.next_delay_s(retry_index, retryable=False, rand=0.5) is None
    assert POLICY.next_delay_s(retry_index, retryable=False, retry_after_s=5.0) is None


@pytest.mark.parametrize(("retry_index", "base"), list(enumerate(DELAYS)))
def test_retry_after_shorter_than_schedule_is_honoured(retry_index: int, base: float) -> None:
    assert POLICY.next_delay_s(retry_index, retryable=True, retry_after_s=7.0, rand=0.999) == 7.0


@pytest.mark.parametrize(("retry_index", "base"), list(enumerate(DELAYS)))
def test_retry_after_is_capped_at_delay_plus_jitter(retry_index: int, base: float) -> None:
    assert POLICY.next_delay_s(retry_index, retryable=True, retry_after_s=1e9) == pytest.approx(base * 1.2)
    assert POLICY.next_delay_s(retry_index, retryable=True, retry_after_s=base * 1.1) == pytest.approx(
        base * 1.1
    )


def test_retry_after_zero_means_retry_now() -> None:
    assert POLICY.next_delay_s(0, retryable=True, retry_after_s=0.0, rand=0.999) == 0.0


def test_negative_retry_after_is_floored_at_zero() -> None:
    assert POLICY.next_delay_s(0, retryable=True, retry_after_s=-10.0) == 0.0


def test_retry_after_ignores_the_random_draw() -> None:
    assert {POLICY.next_delay_s(1, retryable=True, retry_after_s=42.0) for _ in range(20)} == {42.0}


def test_empty_schedule_never_retries() -> None:
    assert RetryPolicy(()).next_delay_s(0, retryable=True, rand=0.5) is None


# ---------------------------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("1", 1.0), ("120", 120.0), ("  45  ", 45.0)])
def test_parse_retry_after_delta_seconds(value: str, expected: float) -> None:
    assert parse_retry_after_s(value) == expected


def test_parse_retry_after_none_is_none() -> None:
    assert parse_retry_after_s(None) is None


def test_parse_retry_after_http_date_in_the_future() -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    seconds = parse_retry_after_s(format_datetime(when, usegmt=True))
    assert seconds is not None
    assert 110 <= seconds <= 121


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "soon",
        "-5",
        "1.5",
        "1e3",
        "12s",
        "Wed, 99 Foo 2015",
        "Wed, 21 Oct 2015 07:28:00 -0000",  # no usable zone
        # str.isdigit() is True for superscript digits, but float() refuses them: must be None, not raise.
        pytest.param("\u00b2", id="superscript-two"),
    ],
)
def test_parse_retry_after_garbage_is_none(value: str) -> None:
    assert parse_retry_after_s(value) is None


# ------------------------------------------------------------------------------------- HTTP statuses


def test_410_gone_is_not_retryable() -> None:
    assert is_retryable_status(410) is False


@pytest.mark.parametrize("status", [301, 302, 307, 400, 401, 403, 404, 408, 429, 500, 502, 503, 504])
def test_other_failures_are_retryable(status: int) -> None:
    assert is_retryable_status(status) is True


@pytest.mark.parametrize("value", [
    "Mon, 1 Jan 99999999999 00:00:00 GMT",  # OverflowError inside the date parser
    "Mon, 99 Jan 2000 00:00:00 GMT",
    "Wed, 21 Oct 2015 07:28:00",  # no zone
    "\x00", "", "   ", "1" * 65, "-5", "1.5",
])
def test_parse_retry_after_hostile_values_are_ignored_never_raise(value: str) -> None:
    assert parse_retry_after_s(value) is None


def test_parse_retry_after_is_always_finite_and_capped() -> None:
    from hookstream.core.retry import MAX_RETRY_AFTER_S

    assert parse_retry_after_s("9" * 64) == MAX_RETRY_AFTER_S
    assert parse_retry_after_s("Fri, 31 Dec 9999 23:59:59 GMT") == MAX_RETRY_AFTER_S
    assert parse_retry_after_s("Mon, 1 Jan 0001 00:00:00 GMT") == 0.0
