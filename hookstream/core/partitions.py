"""The delivery log's partitions: made ahead of time, and dropped whole once older than the retention.

``events``, ``deliveries`` and ``attempts`` are partitioned by day on their ids, which carry the day
(``id >> DAY_SHIFT`` is the UTC day since 1970-01-01; schema 0006_partitions.sql); ``event_keys`` (the
router's idempotency keys) by week-long spans. Every hookstream process keeps them
(:func:`keep_partitions`): at start and every ``CHECK_INTERVAL_S`` it makes the partitions of today
and the next ``AHEAD_DAYS`` days, and drops what retention lets go. One process does each pass (an
advisory lock); the others skip it.

Retention never deletes row by row on the hot path, and never loses an unfinished delivery:

- a day's three partitions are dropped together once the whole day is older than the retention and
  none of its deliveries is pending;
- a day past retention that still holds pending deliveries (a retry waiting, an ordered delivery
  behind a failing one, a redelivery just asked for) is rewritten to hold only those, with their
  attempts and events (same ids, so tasks in flight, links and the ordering queues keep working), and
  dropped on a later pass once they have finished; with more than ``REWRITE_MAX_PENDING`` of them it
  is kept whole until they are fewer (the copy is made under the tables' lock).

The clock is a parameter throughout (``now``), so tests move it across a day boundary without
waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from hookstream.core import metrics

log = logging.getLogger("hookstream.partitions")
T = TypeVar("T")

DAY_SHIFT = 36
LEGACY_END = 1 << DAY_SHIFT  # ids below are rows stored before partitioning ("day 0")
SPAN_DAYS = 7  # hookstream_span() in SQL
AHEAD_DAYS = 3
CHECK_INTERVAL_S = 600.0
RETRY_AFTER_FAILURE_S = 30.0
# A day past retention is rewritten to its pending deliveries only while they are at most this many: the
# copy holds the log's tables (every tenant's outcomes wait for it), so its length is bounded; a day
# with more (a tenant's long ordered queue behind a failing endpoint) is kept whole until they drain.
REWRITE_MAX_PENDING = 10_000
LOCK_TIMEOUT = "100ms"  # what any statement of the upkeep may wait for a lock it did not take first
# Any constant works; it only has to be the same in every hookstream process.
_KEEPER_LOCK_ID = 0x686F6F6C
DAY_TABLES = ("events", "deliveries", "attempts")
_BOUND_RE = re.compile(r"FOR VALUES FROM \('?(MINVALUE|-?\d+)'?\) TO \('?(MAXVALUE|-?\d+)'?\)")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def day_of(at: dt.datetime) -> int:
    """The UTC day number of ``at`` (days since 1970-01-01), as ``hookstream_day()`` in SQL."""
    return int((at - _EPOCH) // dt.timedelta(days=1))


def day_start(day: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(days=day)


def span_of(at: dt.datetime) -> int:
    return day_of(at) // SPAN_DAYS


def id_range_sql(column: str, since: str | None, until: str | None) -> str:
    """A condition on ``column`` (a day-prefixed id) implied by a time range whose bounds are the SQL
    expressions ``since``/``until``: it adds nothing to the result, and lets PostgreSQL skip the
    partitions outside the range. Legacy ids (stored before partitioning) are always included."""
    parts = []
    if since is not None:
        parts.append(f"{column} >= hookstream_day({since}) << {DAY_SHIFT}")
    if until is not None:  # exclusive: a range ending at midnight reads nothing of the next day
        parts.append(f"{column} < (hookstream_day({until}::timestamptz - interval '1 microsecond') + 1) << {DAY_SHIFT}")
    if not parts:
        return "true"
    return f"({' AND '.join(parts)} OR {column} < {LEGACY_END})"


def on_or_after_day_of(column: str, other: str) -> str:
    """A condition: the day-prefixed id ``column`` is of the day of the id ``other``, or later (an event's
    deliveries are made on its day, or later by a replay): PostgreSQL skips the days before."""
    return f"{column} >= ({other} >> {DAY_SHIFT}) << {DAY_SHIFT}"


@dataclass(frozen=True)
class Partition:
    table: str  # the partitioned table
    name: str
    low: int | None  # None: MINVALUE
    high: int | None  # None: MAXVALUE

    @property
    def legacy(self) -> bool:
        return self.table in DAY_TABLES and self.high == LEGACY_END

    @property
    def day(self) -> int | None:
        """The day of a day partition (None for a legacy one or one of event_keys)."""
        if self.table not in DAY_TABLES or self.legacy or self.low is None:
            return None
        return self.low >> DAY_SHIFT


async def list_partitions(conn: asyncpg.Connection, table: str) -> list[Partition]:
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass ORDER BY c.relname", table)
    found = []
    for row in rows:
        match = _BOUND_RE.fullmatch(row["bound"])
        if match is None:
            raise RuntimeError(f"partition {row['relname']} of {table} has unexpected bounds {row['bound']!r}")
        low, high = (None if v in ("MINVALUE", "MAXVALUE") else int(v) for v in match.groups())
        found.append(Partition(table, row["relname"], low, high))
    return found


# The locks the DDL needs, taken first and without waiting (NOWAIT): a lock request that waits sits in
# the queue, and every statement of the pipeline behind it waits too (and a wait can deadlock with an
# outcome flush, which locks attempts before deliveries). Not granted at once, the attempt is given up
# and tried again a moment later; after LOCK_ATTEMPTS the work is left for the next pass.
# SHARE ROW EXCLUSIVE: attaching a deliveries partition adds its foreign key to webhooks, which needs
# that mode on webhooks; reads go on, writes wait for milliseconds. Dropping or rewriting a day needs the parents whole (ACCESS EXCLUSIVE).
_LOCK_FOR_ATTACH = ("LOCK TABLE ONLY events, deliveries, attempts IN SHARE ROW EXCLUSIVE MODE NOWAIT",
                    "LOCK TABLE ONLY webhooks IN SHARE ROW EXCLUSIVE MODE NOWAIT")
_LOCK_FOR_DROP = ("LOCK TABLE ONLY events, deliveries, attempts IN ACCESS EXCLUSIVE MODE NOWAIT",
                  "LOCK TABLE ONLY webhooks IN SHARE ROW EXCLUSIVE MODE NOWAIT")
_LOCK_FOR_KEYS = ("LOCK TABLE ONLY event_keys IN ACCESS EXCLUSIVE MODE NOWAIT",)
LOCK_ATTEMPTS = 40
LOCK_RETRY_S = (0.05, 0.15)


class Busy(Exception):
    """The locks a step of the upkeep needs were not free in LOCK_ATTEMPTS tries."""


async def _locked(conn: asyncpg.Connection, locks: tuple[str, ...],
                  body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """``body`` in a transaction holding ``locks``, taken without queueing (see above)."""
    for attempt in range(LOCK_ATTEMPTS):
        try:
            async with conn.transaction():
                # a backstop for any other lock a statement needs: never queue long
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
                for lock in locks:
                    await conn.execute(lock)
                return await body(conn)
        except asyncpg.LockNotAvailableError:
            if attempt + 1 < LOCK_ATTEMPTS:
                await asyncio.sleep(random.uniform(*LOCK_RETRY_S))
    raise Busy(", ".join(locks))


async def _locked_ddl(conn: asyncpg.Connection, locks: tuple[str, ...], statements: list[str]) -> None:
    async def run(c: asyncpg.Connection) -> None:
        for statement in statements:
            await c.execute(statement)

    await _locked(conn, locks, run)


def _attach(table: str, name: str, low: int, high: int) -> list[str]:
    # CREATE TABLE ... PARTITION OF would hold an ACCESS EXCLUSIVE lock on the parent; ATTACH needs only
    # SHARE UPDATE EXCLUSIVE, so the pipeline's reads and writes go on meanwhile.
    return [f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
            f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({low}) TO ({high})"]


async def ensure_partitions(conn: asyncpg.Connection, now: dt.datetime, ahead_days: int = AHEAD_DAYS) -> list[str]:
    """Make the partitions of today and the next ``ahead_days`` days (and the idempotency spans they
    fall in) that do not exist yet; returns the names made."""
    made: list[str] = []
    today = day_of(now)
    for table in DAY_TABLES:
        have = {p.low for p in await list_partitions(conn, table)}
        for day in range(today, today + ahead_days + 1):
            low = day << DAY_SHIFT
            if low in have:
                continue
            name = f"{table}_{day_start(day):%Y%m%d}"
            await _locked_ddl(conn, _LOCK_FOR_ATTACH, _attach(table, name, low, (day + 1) << DAY_SHIFT))
            made.append(name)
    existing = await list_partitions(conn, "event_keys")
    for span in range(span_of(now), (today + ahead_days) // SPAN_DAYS + 1):
        if any((p.low is None or p.low <= span) and (p.high is None or span < p.high) for p in existing):
            continue
        name = f"event_keys_{day_start(span * SPAN_DAYS):%Y%m%d}"
        await _locked_ddl(conn, _LOCK_FOR_KEYS, _attach("event_keys", name, span, span + 1))
        made.append(name)
    return made


@dataclass
class RetentionPass:
    dropped: list[str]
    rewritten: list[str]  # day partitions past retention kept for their unfinished deliveries
    kept_unfinished: int  # deliveries past retention kept because they have not finished
    busy: list[str] = field(default_factory=list)  # expired days left for the next pass (a lock wait ran out)


_legacy_newest: dict[str, dt.datetime | None] = {}


async def _legacy_newest_at(conn: asyncpg.Connection, parts: dict[str, Partition]) -> dt.datetime | None:
    """The newest row of a legacy partition set: fixed, since no new id is ever below LEGACY_END, so it
    is read once per process (a scan of the legacy tables)."""
    key = ",".join(sorted(p.name for p in parts.values()))
    if key not in _legacy_newest:
        times = []
        if "events" in parts:
            times.append(await conn.fetchval(f"SELECT max(received_at) FROM {parts['events'].name}"))
        if "deliveries" in parts:
            times.append(await conn.fetchval(
                f"SELECT max(greatest(created_at, finished_at, last_attempt_at)) FROM {parts['deliveries'].name}"))
        known = [t for t in times if t is not None]
        _legacy_newest[key] = max(known) if known else None
    return _legacy_newest[key]


def _drop_statements(parts: dict[str, Partition]) -> list[str]:
    statements = []
    for table in DAY_TABLES[::-1]:
        if (part := parts.get(table)) is not None:
            statements += [f"ALTER TABLE {table} DETACH PARTITION {part.name}", f"DROP TABLE {part.name}"]
    return statements


@dataclass(frozen=True)
class _DayState:
    pending: int  # counted up to REWRITE_MAX_PENDING + 1
    finished: bool  # the day holds a finished delivery
    unreferenced: bool  # the day holds an event no pending delivery needs (none of its own, none later)
    needed_later: bool  # a pending delivery of a later day (a replay's) needs one of the day's events

    @property
    def action(self) -> str:
        if self.pending == 0 and not self.needed_later:
            return "drop"
        if self.pending > REWRITE_MAX_PENDING:
            return "keep"  # a copy this long would hold everyone's outcomes
        if self.finished or self.unreferenced:
            return "rewrite"
        return "keep"  # nothing to let go yet


def _needed_later_sql(parts: dict[str, Partition]) -> str:
    """The events of this day that a pending delivery of a later day needs (made by a replay)."""
    low, high = parts["events"].low, parts["events"].high
    bounds = [f"d.event_seq >= {low}"] if low is not None else []
    bounds.append(f"d.event_seq < {high}")
    return (f"SELECT d.event_seq FROM deliveries d WHERE d.status = 'pending' AND d.id >= {high}"
            f" AND {' AND '.join(bounds)}")


async def _day_state(conn: asyncpg.Connection, parts: dict[str, Partition]) -> _DayState:
    """What an expired day holds, from indexes and first rows (never a scan of the day)."""
    pending, finished, unreferenced, needed_later = 0, False, False, False
    deliveries, events = parts.get("deliveries"), parts.get("events")
    if deliveries is not None:
        pending = await conn.fetchval(f"SELECT count(*) FROM (SELECT 1 FROM {deliveries.name} WHERE status = 'pending'"
                                      f" LIMIT {REWRITE_MAX_PENDING + 1}) AS p")
        finished = await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {deliveries.name} WHERE status <> 'pending')")
    if events is not None and events.high is not None:
        needed_later = await conn.fetchval(f"SELECT EXISTS ({_needed_later_sql(parts)})")
        if not finished and pending <= REWRITE_MAX_PENDING:
            # an event that neither the day's deliveries (all pending, at most the cap) nor a later
            # day's pending ones need: found among the first rows of a day not yet rewritten
            own = (f" AND NOT EXISTS (SELECT 1 FROM {deliveries.name} d WHERE d.event_seq = e.seq)"
                   if deliveries is not None else "")
            unreferenced = await conn.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {events.name} e WHERE true{own} AND NOT EXISTS"
                f" (SELECT 1 FROM deliveries d2 WHERE d2.event_seq = e.seq AND d2.status = 'pending'"
                f" AND d2.id >= {events.high}))")
    return _DayState(pending, finished, unreferenced, needed_later)


def _rewrite_statements(parts: dict[str, Partition]) -> list[str]:
    """Rewrite a day's partitions to hold only its pending deliveries, their attempts, and the events
    they or a later day's pending deliveries need."""
    any_part = next(iter(parts.values()))
    low = "MINVALUE" if any_part.low is None else str(any_part.low)
    high = "MAXVALUE" if any_part.high is None else str(any_part.high)
    new = {t: f"{p.name}_k" for t, p in parts.items()}
    statements = [f"CREATE TABLE {new[t]} (LIKE {t} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)" for t in parts]
    if "deliveries" in parts:
        statements.append(f"INSERT INTO {new['deliveries']} SELECT * FROM {parts['deliveries'].name}"
                          " WHERE status = 'pending'")
        if "attempts" in parts:
            statements.append(f"INSERT INTO {new['attempts']} SELECT a.* FROM {parts['attempts'].name} a"
                              f" WHERE a.delivery_id IN (SELECT id FROM {new['deliveries']})")
    if "events" in parts:
        own = f"e.seq IN (SELECT event_seq FROM {new['deliveries']}) OR " if "deliveries" in parts else ""
        statements.append(f"INSERT INTO {new['events']} SELECT e.* FROM {parts['events'].name} e"
                          f" WHERE {own}e.seq IN ({_needed_later_sql(parts)})")
    statements += _drop_statements(parts)
    for table in DAY_TABLES:
        if table in parts:
            statements += [f"ALTER TABLE {new[table]} RENAME TO {parts[table].name}",
                           f"ALTER TABLE {table} ATTACH PARTITION {parts[table].name} FOR VALUES FROM ({low}) TO ({high})"]
    return statements


async def _expire_day(conn: asyncpg.Connection, parts: dict[str, Partition], result: RetentionPass) -> None:
    """Drop one expired day's partitions, or keep only what is unfinished (and the events it needs).
    Decided first without a lock (a day kept for its unfinished deliveries costs every pass nothing
    more), then again under the lock, so a redelivery asked for meanwhile is seen."""
    before = await _day_state(conn, parts)
    if before.action == "keep":
        result.kept_unfinished += before.pending
        return

    async def act(c: asyncpg.Connection) -> _DayState:
        state = await _day_state(c, parts)
        statements = {"drop": _drop_statements, "rewrite": _rewrite_statements}.get(state.action)
        for statement in statements(parts) if statements else ():
            await c.execute(statement)
        return state

    # counted once it has committed: a lock wait that runs out inside ``act`` runs it again
    state = await _locked(conn, _LOCK_FOR_DROP, act)
    result.kept_unfinished += state.pending
    if state.action == "drop":
        result.dropped.extend(p.name for p in parts.values())
    elif state.action == "rewrite":
        result.rewritten.append(parts.get("deliveries", next(iter(parts.values()))).name)


async def expire_partitions(conn: asyncpg.Connection, now: dt.datetime, retention_s: float) -> RetentionPass:
    """Drop (or shrink to their unfinished deliveries) the day partitions wholly older than
    ``now - retention_s``, the idempotency spans as old, and the per-hour figures older than that."""
    cutoff = now - dt.timedelta(seconds=retention_s)
    result = RetentionPass([], [], 0)
    by_key: dict[int | None, dict[str, Partition]] = {}
    for table in DAY_TABLES:
        for part in await list_partitions(conn, table):
            by_key.setdefault(None if part.legacy else part.low, {})[table] = part
    for key in sorted(by_key, key=lambda k: -1 if k is None else k):
        parts = by_key[key]
        sample = next(iter(parts.values()))
        if sample.legacy:
            newest = await _legacy_newest_at(conn, parts)
            if newest is not None and newest >= cutoff:
                continue
        elif sample.day is None or day_start(sample.day + 1) > cutoff:
            continue
        try:
            await _expire_day(conn, parts, result)
        except (Busy, asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as exc:
            # a long query in the way: the next pass tries again, and the other days go on now
            result.busy.append(parts.get("deliveries", sample).name)
            log.warning("partition upkeep: %s is busy, tried again at the next pass (%s)", sample.name, exc)
    for part in await list_partitions(conn, "event_keys"):
        if part.high is not None and day_start(part.high * SPAN_DAYS) <= cutoff:
            await _locked_ddl(conn, _LOCK_FOR_KEYS,
                              [f"ALTER TABLE event_keys DETACH PARTITION {part.name}", f"DROP TABLE {part.name}"])
            result.dropped.append(part.name)
    # Small tables, one row per webhook and hour: deleted by row, away from the hot path.
    await conn.execute("DELETE FROM webhook_stats_hourly WHERE hour < $1", cutoff)
    await conn.execute("DELETE FROM filter_errors WHERE hour < $1", cutoff)
    await conn.execute("DELETE FROM recoveries WHERE finished_at < $1", cutoff)
    return result


async def run_pass(pool: asyncpg.Pool, now: dt.datetime, retention_s: float) -> RetentionPass | None:
    """One upkeep pass, unless another process is doing one (then None)."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _KEEPER_LOCK_ID):
            return None
        try:
            made = await ensure_partitions(conn, now)
            result = await expire_partitions(conn, now, retention_s)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _KEEPER_LOCK_ID)
    for name in made:
        log.info("made partition %s", name)
    for name in result.dropped:
        log.info("dropped partition %s (older than the retention)", name)
    for name in result.rewritten:
        log.info("kept partition %s past the retention for its unfinished deliveries only", name)
    metrics.RETENTION_KEPT_UNFINISHED.set(result.kept_unfinished)
    metrics.PARTITIONS_DROPPED.inc(len(result.dropped))
    return result


async def keep_partitions(pool: asyncpg.Pool, retention_s: float, stop: asyncio.Event,
                          clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
                          interval_s: float = CHECK_INTERVAL_S) -> None:
    """Run :func:`run_pass` now and every ``interval_s`` until ``stop``; a failed pass is logged and
    tried again at the next (the partitions ahead leave ``AHEAD_DAYS`` days to fix what failed)."""
    while not stop.is_set():
        wait_s = interval_s
        try:
            await run_pass(pool, clock(), retention_s)
        except Exception:  # never the pipeline's end: logged, and tried again soon
            wait_s = min(interval_s, RETRY_AFTER_FAILURE_S)
            log.exception("partition upkeep failed (tried again in %.0f s)", wait_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait_s)
