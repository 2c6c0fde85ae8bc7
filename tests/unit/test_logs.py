"""Log lines an operator reads: tenant text kept to one bounded line, secrets in URLs cut, floods sampled."""

from __future__ import annotations

import logging

import orjson
import pytest

from hookstream.core.logs import (
    MAX_LOGGED_TEXT_CHARS,
    JsonFormatter,
    LogSampler,
    TextFormatter,
    escape_controls,
    loggable,
)

HOSTILE = "HTTP 500\n2026-12-02 06:00:00 INFO hookstream.api: admin logged in\r\x1b[2K\u2028forged\x85\u202e"


def line_of(formatter: logging.Formatter, msg: str, **extra: object) -> str:
    record = logging.LogRecord("hookstream.sender", logging.INFO, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return formatter.format(record)


@pytest.mark.parametrize("char", ["\n", "\r", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\u202e",
                                  "\u200b", "\ufeff", "\t"])
def test_every_line_breaking_or_control_character_is_escaped(char: str) -> None:
    escaped = escape_controls(f"a{char}b")
    assert char not in escaped and escaped.startswith("a\\") and escaped.endswith("b")
    assert escaped.isprintable()


def test_loggable_keeps_hostile_text_on_one_bounded_line() -> None:
    text = loggable(HOSTILE * 100)
    assert len(text) == MAX_LOGGED_TEXT_CHARS and text.endswith("…")
    assert text.isprintable() and "\n" not in text
    assert text.startswith("HTTP 500\\x0a2026-12-02")
    assert loggable("HTTP 500") == "HTTP 500"
    assert loggable(42) == "42"
    assert len(loggable("x" * 10_000_000, 50)) == 50


@pytest.mark.parametrize(("raw", "shown"), [
    ("invalid HTTP response: 500, url='https://hooks.example.com/in/T0K3N?sig=abc'",
     "invalid HTTP response: 500, url='https://hooks.example.com/…"),
    ("to https://user:p4ss@example.com:8443/x failed", "to https://example.com:8443/… failed"),
    ("https://example.com", "https://example.com"),
    ("HTTP://EXAMPLE.com/a?b", "HTTP://EXAMPLE.com/…"),
])
def test_urls_in_logged_text_keep_only_their_host(raw: str, shown: str) -> None:
    assert loggable(raw) == shown


def test_text_lines_escape_the_message_and_every_value() -> None:
    line = line_of(TextFormatter("%(levelname)s %(name)s: %(message)s"), "delivery failed: " + HOSTILE,
                   error=HOSTILE, event_id="evt\n1")
    assert "\n" not in line and "\r" not in line and "\u2028" not in line and "\x1b" not in line
    assert line.startswith("INFO hookstream.sender: delivery failed: HTTP 500\\x0a")
    assert "event_id=evt\\x0a1" in line


def test_a_traceback_still_follows_on_its_own_lines() -> None:
    formatter = TextFormatter("%(message)s")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "crashed", None, __import__("sys").exc_info())
    text = formatter.format(record)
    assert text.startswith("crashed\nTraceback") and text.rstrip().endswith("ValueError: boom")


def test_json_lines_are_one_line_whatever_the_text() -> None:
    line = line_of(JsonFormatter(), HOSTILE, error=HOSTILE)
    assert "\n" not in line and "\r" not in line
    assert orjson.loads(line)["error"] == HOSTILE  # escaped by JSON, not changed


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_sampler_admits_a_bounded_number_per_interval_and_reports_the_rest() -> None:
    clock = Clock()
    sampler = LogSampler(3, 60.0, clock)
    answers = [sampler.admit() for _ in range(1000)]
    assert [a for a, _ in answers].count(True) == 3
    assert all(reported == 0 for _, reported in answers)
    clock.now = 59.9
    assert sampler.admit() == (False, 0)
    clock.now = 60.0
    assert sampler.admit() == (True, 998)  # the summary comes with the first line of the next interval
    assert sampler.admit() == (True, 0)
    clock.now = 200.0
    assert sampler.admit() == (True, 0)  # nothing suppressed meanwhile
