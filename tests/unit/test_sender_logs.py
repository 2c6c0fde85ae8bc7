"""The sender's operator lines, caplog-style on the real ``Sender`` (its outcome hook, no I/O): one line per
failed delivery, failed attempts that will be retried sampled with a summary, tenant text on one line."""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from hookstream.core.logs import LogSampler, TextFormatter
from hookstream.core.model import Deferred, DeliveryTask, Failed, Succeeded
from hookstream.core.settings import Settings
from hookstream.sender import sender as sender_module
from hookstream.sender.sender import RETRY_LOG_INTERVAL_S, RETRY_LOG_LIMIT, Sender, decide_outcome

STARTED = dt.datetime(2026, 12, 2, 6, 0, tzinfo=dt.UTC)
HOSTILE = "HTTP 500\n2026-12-02 06:00:00,000 INFO    hookstream.api: FORGED\r\n\u2028\x1b[2K" + "x" * 5000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def task(n: int = 1, **changes: object) -> DeliveryTask:
    fields: dict = {"delivery_id": n, "webhook_id": "wh_1", "organization_id": "org_1", "event_id": f"evt_{n}",
                    "event_type": "order.created", "store_id": "s1", "occurred_at": "2026-12-02T06:00:00Z",
                    "attempt": 1, "retry_index": 0, "manual": False, "body": "{}"}
    return DeliveryTask(**{**fields, **changes})


@pytest.fixture
def sender() -> Sender:
    # only the outcome hook is exercised: no pool, directory, session or sink is touched
    return Sender(Settings(), None, None, None, None)  # type: ignore[arg-type]


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.DEBUG, logger=sender_module.__name__)

    def of(level: int = logging.INFO) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == sender_module.__name__ and r.levelno >= level]

    return of


def observe(sender: Sender, the_task: DeliveryTask, result) -> None:
    sender._observe(decide_outcome(the_task, result, sender._policy, STARTED, 3.0))


def test_a_delivery_that_ends_failed_has_one_line_with_what_an_operator_needs(sender, lines) -> None:
    observe(sender, task(attempt=4, retry_index=3), Failed(True, "HTTP 503", http_status=503))
    (record,) = lines()
    assert record.levelno == logging.INFO and record.getMessage() == "delivery failed"
    assert (record.webhook_id, record.organization_id, record.event_id, record.event_type, record.attempts,
            record.error) == ("wh_1", "org_1", "evt_1", "order.created", 4, "HTTP 503")


def test_successes_and_deferrals_are_debug_only(sender, lines) -> None:
    observe(sender, task(), Succeeded(200, "ok"))
    observe(sender, task(2), Deferred("saturated", 1.0))
    observe(sender, task(3), Deferred("circuit breaker open: ...", 1.0, breaker=True))
    assert lines() == [] and len(lines(logging.DEBUG)) == 3


def test_a_flood_of_retried_attempts_is_sampled_then_summarised(sender, lines) -> None:
    clock = Clock()
    sender._retry_lines = LogSampler(RETRY_LOG_LIMIT, RETRY_LOG_INTERVAL_S, clock)
    for n in range(1000):
        observe(sender, task(n), Failed(True, "HTTP 500", http_status=500))
    retried = [r for r in lines() if r.getMessage() == "attempt failed; it will be retried"]
    assert len(retried) == RETRY_LOG_LIMIT == len(lines())
    assert retried[0].next_attempt_at.startswith("2026-12-02T06:00:")
    assert len(lines(logging.DEBUG)) == 1000  # the rest at DEBUG
    clock.now += RETRY_LOG_INTERVAL_S
    observe(sender, task(1000), Failed(True, "HTTP 500", http_status=500))
    summary = lines()[RETRY_LOG_LIMIT]
    assert summary.getMessage().startswith(f"suppressed {1000 - RETRY_LOG_LIMIT} lines of failed attempts")
    # a failed delivery is never sampled away
    for n in range(50):
        observe(sender, task(n, attempt=4, retry_index=3), Failed(True, "HTTP 500", http_status=500))
    assert sum(r.getMessage() == "delivery failed" for r in lines()) == 50


@pytest.mark.parametrize("status", ["retrying", "failed"])
def test_hostile_error_text_stays_on_one_bounded_line(sender, lines, status: str) -> None:
    retry_index = 0 if status == "retrying" else 3
    observe(sender, task(attempt=retry_index + 1, retry_index=retry_index), Failed(True, HOSTILE, http_status=500))
    (record,) = lines()
    text = TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s").format(record)
    assert "\n" not in text and "\r" not in text and "\u2028" not in text and "\x1b" not in text
    assert "HTTP 500\\x0a2026-12-02 06:00:00,000 INFO    hookstream.api: FORGED\\x0d\\x0a" in text
    assert len(text) < 700


def test_a_manual_attempt_that_the_breaker_refuses_fails_and_says_so(sender, lines) -> None:
    observe(sender, task(manual=True), Deferred("circuit breaker open: endpoint is failing; not sent", 5.0,
                                                breaker=True))
    (record,) = lines()
    assert record.getMessage() == "manual attempt failed" and record.error.startswith("circuit breaker open")
