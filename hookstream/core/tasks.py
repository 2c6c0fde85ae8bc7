"""Background-task lifecycle: every task hookstream starts is kept, and on exit cancelled and awaited."""

from __future__ import annotations

import asyncio
import contextlib


async def cancel_and_wait(task: asyncio.Task[object] | None) -> None:
    """Cancel ``task`` and wait until it has finished (its cancellation is not an error)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def wait_for_any(*events: asyncio.Event, within_s: float | None) -> None:
    """Return once any of ``events`` is set or ``within_s`` seconds have passed (None: no limit).

    asyncio.wait, not wait_for: Python 3.11's wait_for can swallow a cancellation that arrives as
    the wait ends, and shutdown cancels the tasks that wait here."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=within_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
