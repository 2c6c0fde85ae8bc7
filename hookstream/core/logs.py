"""Logging set-up: one JSON object per line in production, readable text for humans.

Context such as ``event_id``, ``webhook_id`` and ``attempt`` is passed with ``extra=`` and lands as
top-level keys. Secrets are never passed to a logger.

Tenant text (an endpoint's error, an event id) is hostile: pass it through :func:`loggable`, which
keeps it on one line, bounded, with URLs cut to their host (a path or query can hold a token). The
text format escapes control characters in every line anyway (JSON lines are escaped by JSON), so no
value can start a forged log line. Lines a flood could repeat without end (attempts that will be
retried) go through a :class:`LogSampler`.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
import time
from collections.abc import Callable

import orjson

from hookstream.core.model import format_rfc3339

_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}

MAX_LOGGED_TEXT_CHARS = 300
# C0 and C1 controls, DEL, and the characters that break or reorder a line in a terminal or a log
# viewer (line and paragraph separators, bidirectional overrides and isolates, zero-width ones, BOM).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
# scheme://[userinfo@]host[:port] and whatever follows up to the next space: kept as scheme://host/…
_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]{0,15}://)(?:[^\s/?#@]*@)?([^\s/?#]*)([^\s]*)")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control or line-breaking character written as an escape (``\\n`` -> ``\\x0a``)."""
    return _CONTROLS.sub(_escape, text)


def loggable(value: object, limit: int = MAX_LOGGED_TEXT_CHARS) -> str:
    """A tenant's text made fit for one log line: URLs cut to scheme and host (their user info, path
    and query may hold a secret), control characters escaped, at most ``limit`` characters (an
    ellipsis marks a cut). Never raises."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > 4 * limit:
        text = text[: 4 * limit]  # bounded work whatever its length
    if "://" in text:
        text = _URL.sub(lambda m: m.group(1) + m.group(2) + ("/…" if m.group(3) else ""), text)
    text = escape_controls(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class LogSampler:
    """At most ``limit`` lines per ``interval_s``; the others are counted, and the first line admitted
    in a later interval is told how many were suppressed (to log one summary line). Not thread-safe:
    one per event loop, as the sender's attempts are."""

    def __init__(self, limit: int, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._interval_s = interval_s
        self._clock = clock
        self._started = float("-inf")
        self._admitted = 0
        self._suppressed = 0

    def admit(self) -> tuple[bool, int]:
        """(whether to log this line, lines suppressed since the last admitted one to report now)."""
        now = self._clock()
        reported = 0
        if now - self._started >= self._interval_s:
            reported, self._suppressed = self._suppressed, 0
            self._started, self._admitted = now, 0
        if self._admitted < self._limit:
            self._admitted += 1
            return True, reported
        self._suppressed += 1
        return False, reported


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": format_rfc3339(dt.datetime.fromtimestamp(record.created, dt.UTC), timespec="milliseconds",
                                 zone="+00:00"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """``asctime level logger: message key=value ...`` on one line: control characters in the message
    and the values are escaped (a traceback, added after, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = escape_controls(super().formatMessage(record))
        context = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        if context:
            line += " " + " ".join(f"{k}={escape_controls(str(v))}" for k, v in context.items())
        return line


def configure_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every rebalance and reconnect at INFO/ERROR; keep it to warnings.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
