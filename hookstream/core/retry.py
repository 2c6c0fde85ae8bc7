"""Retry policy as data: one place decides whether and when a failed attempt is tried again.

Pure: the caller passes the random draw, so the policy is exhaustively unit-testable.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

# 410 Gone means "never again"; 429 and 503 may say when to come back.
GONE_STATUS = 410
RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    delays_s: tuple[float, ...]
    jitter_ratio: float = 0.2

    @property
    def max_retries(self) -> int:
        return len(self.delays_s)

    @property
    def window_s(self) -> float:
        """The longest the automatic schedule can span after the first attempt: every delay at its
        jitter cap. An open circuit breaker holds a delivery back without using up a retry, but never
        past this window (plus the caller's slack): see :meth:`hold_deadline`."""
        return sum(self.delays_s) * (1 + self.jitter_ratio)

    def hold_deadline(self, window_from: dt.datetime, slack_s: float) -> dt.datetime:
        """Until when a delivery whose retry window began at ``window_from`` (its first attempt, or its
        creation when it has none) may still be held back for the breaker's probe; a refusal after it
        ends the delivery ``failed``."""
        return window_from + dt.timedelta(seconds=self.window_s + slack_s)

    def next_delay_s(
        self,
        retry_index: int,
        *,
        retryable: bool,
        retry_after_s: float | None = None,
        rand: float | None = None,
    ) -> float | None:
        """Seconds to wait before the next automatic attempt, or None when the delivery is finished.

        ``retry_index`` counts the automatic retries already made (0 after the first attempt).
        ``rand`` is a uniform draw in [0, 1) for the ±jitter; ``retry_after_s`` comes from a
        ``Retry-After`` header on 429/503 and is honoured up to the scheduled delay's upper bound
        (the receiver may ask for a shorter or longer wait, never longer than we would wait anyway).
        """
        if not retryable or retry_index >= len(self.delays_s):
            return None
        base = self.delays_s[retry_index]
        cap = base * (1 + self.jitter_ratio)
        if retry_after_s is not None:
            return max(0.0, min(retry_after_s, cap))
        draw = random.random() if rand is None else rand
        return base * (1 - self.jitter_ratio + 2 * self.jitter_ratio * draw)


# Longer than any delay the policy would wait (the caller caps it anyway), and finite.
MAX_RETRY_AFTER_S = 366 * 86400.0
MAX_RETRY_AFTER_CHARS = 64


def parse_retry_after_s(value: str | None, now: dt.datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110 §10.2.3).

    The header is the endpoint's, so hostile: whatever it holds, the answer is None (ignored) or a
    finite number of seconds in [0, MAX_RETRY_AFTER_S]; it never raises. A date in the year
    99999999999, a 400-digit number or a date without a zone cannot stall or crash an attempt.
    """
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > MAX_RETRY_AFTER_CHARS:
        return None
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            return None
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def is_retryable_status(status: int) -> bool:
    """Every non-2xx answer is retried except 410 Gone."""
    return status != GONE_STATUS
