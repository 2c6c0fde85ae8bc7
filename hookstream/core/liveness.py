"""Heartbeats of the long-running loops, for a ``/healthz`` that fails when one is wedged.

Each loop calls :func:`beat` with its name on every turn (and while it waits out an outage, through
``hookstream.core.errors.retry_transient``). A loop that has beaten once and then not for longer than
``STALE_AFTER_S`` is stale: ``/healthz`` answers 503 naming it, so the orchestrator restarts the
process. A loop that has stopped on purpose calls :func:`forget`.

The bound is larger than any wait a healthy loop makes in one turn: a sender's partition drain
(request timeout + 10 s), a producer's acknowledgement wait (30 s), the webhook directory's full
reload interval (30 s).
"""

from __future__ import annotations

import time

STALE_AFTER_S = 90.0

_beats: dict[str, float] = {}
_bound_s = STALE_AFTER_S


def configure(stale_after_s: float) -> None:
    """Set the bound (from the settings: it must exceed the longest wait of a healthy turn)."""
    global _bound_s
    _bound_s = stale_after_s


def beat(name: str) -> None:
    _beats[name] = time.monotonic()


def forget(name: str) -> None:
    _beats.pop(name, None)


def stale(now: float | None = None, bound_s: float | None = None) -> dict[str, float]:
    """The loops not heard from for more than ``bound_s`` seconds, with how long ago each beat."""
    now = time.monotonic() if now is None else now
    bound_s = _bound_s if bound_s is None else bound_s
    return {name: round(now - at, 1) for name, at in _beats.items() if now - at > bound_s}


def health() -> tuple[int, dict[str, object]]:
    """The ``/healthz`` answer: (200, ok) or (503, which loops are stale)."""
    late = stale()
    if not late:
        return 200, {"status": "ok"}
    return 503, {"status": "unhealthy", "stale_loops": late,
                 "error": {"code": "unhealthy",
                           "message": f"loops not heard from for over {_bound_s:.0f}s: {', '.join(sorted(late))}"}}
