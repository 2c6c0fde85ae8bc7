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
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from hookstream.core import metrics

log = logging.getLogger("hookstream.partitions")

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
LOCK_TIMEOUT = "2s"  # DDL waits no longer for a lock (and queries behind it wait no longer for it)
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


def id_floor(at: dt.datetime) -> int:
    """The smallest id a row created at or after ``at`` can have (rows of earlier days have smaller ids,
    legacy rows aside)."""
    return day_of(at) << DAY_SHIFT


def id_ceiling(at: dt.datetime) -> int:
    """An id above every id of a row created before ``at`` (legacy rows aside)."""
    return (day_of(at) + 1) << DAY_SHIFT


def id_range_sql(column: str, since: str | None, until: str | None) -> str:
    """A condition on ``column`` (a day-prefixed id) implied by a time range whose bounds are the SQL
    expressions ``since``/``until``: it adds nothing to the result, and lets PostgreSQL skip the
    partitions outside the range. Legacy ids (stored before partitioning) are always included."""
    parts = []
    if since is not None:
        parts.append(f"{column} >= hookstream_day({since}) << {DAY_SHIFT}")
    if until is not None:
        parts.append(f"{column} < (hookstream_day({until}) + 1) << {DAY_SHIFT}")
    if not parts:
        return "true"
    return f"({' AND '.join(parts)} OR {column} < {LEGACY_END})"


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


async def _locked_ddl(conn: asyncpg.Connection, statements: list[str]) -> None:
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        for statement in statements:
            await conn.execute(statement)


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
            await _locked_ddl(conn, _attach(table, name, low, (day + 1) << DAY_SHIFT))
            made.append(name)
    existing = await list_partitions(conn, "event_keys")
    for span in range(span_of(now), (today + ahead_days) // SPAN_DAYS + 1):
        if any((p.low is None or p.low <= span) and (p.high is None or span < p.high) for p in existing):
            continue
        name = f"event_keys_{day_start(span * SPAN_DAYS):%Y%m%d}"
        await _locked_ddl(conn, _attach("event_keys", name, span, span + 1))
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


# Outcome flushes and the API reach the partitions through the parents, so holding the parents is
# holding the day's partitions; always in this order.
_LOCK_PARENTS = "LOCK TABLE ONLY events, deliveries, attempts IN ACCESS EXCLUSIVE MODE"


def _drop_statements(parts: dict[str, Partition]) -> list[str]:
    # attempts first: a deliveries partition is detached only once no attempt refers to it
    statements = []
    for table in DAY_TABLES[::-1]:
        if (part := parts.get(table)) is not None:
            statements += [f"ALTER TABLE {table} DETACH PARTITION {part.name}", f"DROP TABLE {part.name}"]
    return statements


def _rewrite_statements(parts: dict[str, Partition]) -> list[str]:
    """Rewrite a day's partitions to hold only its pending deliveries, their attempts and events."""
    deliveries = parts["deliveries"]
    low = "MINVALUE" if deliveries.low is None else str(deliveries.low)
    high = "MAXVALUE" if deliveries.high is None else str(deliveries.high)
    new = {t: f"{p.name}_k" for t, p in parts.items()}
    statements = [f"CREATE TABLE {new[t]} (LIKE {t} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)" for t in parts]
    statements.append(f"INSERT INTO {new['deliveries']} SELECT * FROM {deliveries.name} WHERE status = 'pending'")
    if "attempts" in parts:
        statements.append(f"INSERT INTO {new['attempts']} SELECT a.* FROM {parts['attempts'].name} a"
                          f" WHERE a.delivery_id IN (SELECT id FROM {new['deliveries']})")
    if "events" in parts:
        statements.append(f"INSERT INTO {new['events']} SELECT e.* FROM {parts['events'].name} e"
                          f" WHERE e.seq IN (SELECT event_seq FROM {new['deliveries']})")
    statements += _drop_statements(parts)
    for table in DAY_TABLES:
        if table in parts:
            statements += [f"ALTER TABLE {new[table]} RENAME TO {parts[table].name}",
                           f"ALTER TABLE {table} ATTACH PARTITION {parts[table].name} FOR VALUES FROM ({low}) TO ({high})"]
    return statements


async def _expire_day(conn: asyncpg.Connection, parts: dict[str, Partition], result: RetentionPass) -> None:
    """Drop one expired day's partitions, or keep only its pending deliveries: decided under the lock,
    so a redelivery asked for meanwhile is seen."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute(_LOCK_PARENTS)
        if "deliveries" not in parts:
            pending = finished = 0
        else:
            # both from an index or the first rows, never a scan of the day under the lock
            # (deliveries_unfinished: the partial index of pending deliveries)
            name = parts["deliveries"].name
            pending = await conn.fetchval(f"SELECT count(*) FROM {name} WHERE status = 'pending'")
            finished = await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {name} WHERE status <> 'pending')")
        if pending == 0:
            for statement in _drop_statements(parts):
                await conn.execute(statement)
            result.dropped += [p.name for p in parts.values()]
            return
        result.kept_unfinished += pending
        if pending > REWRITE_MAX_PENDING:
            return  # kept whole: a copy this long would hold everyone's outcomes
        if not finished and not await _has_unreferenced_events(conn, parts):
            return  # nothing to let go yet
        for statement in _rewrite_statements(parts):
            await conn.execute(statement)
        result.rewritten.append(parts["deliveries"].name)


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
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as exc:
            # a long query in the way (or an outcome flush locking in another order): the next pass
            # tries again, and the other days go on now
            result.busy.append(parts.get("deliveries", sample).name)
            log.warning("partition upkeep: %s is busy, tried again at the next pass (%s)", sample.name, exc)
    for part in await list_partitions(conn, "event_keys"):
        if part.high is not None and day_start(part.high * SPAN_DAYS) <= cutoff:
            await _locked_ddl(conn, [f"ALTER TABLE event_keys DETACH PARTITION {part.name}", f"DROP TABLE {part.name}"])
            result.dropped.append(part.name)
    # Small tables, one row per webhook and hour: deleted by row, away from the hot path.
    await conn.execute("DELETE FROM webhook_stats_hourly WHERE hour < $1", cutoff)
    await conn.execute("DELETE FROM filter_errors WHERE hour < $1", cutoff)
    await conn.execute("DELETE FROM recoveries WHERE finished_at < $1", cutoff)
    return result


async def _has_unreferenced_events(conn: asyncpg.Connection, parts: dict[str, Partition]) -> bool:
    """Whether an expired day whose deliveries are all pending still holds events none of them refers to
    (events no webhook wanted, kept for idempotency and the explorer)."""
    if "events" not in parts or "deliveries" not in parts:
        return False
    return bool(await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM {parts['events'].name} e WHERE NOT EXISTS"
        f" (SELECT 1 FROM {parts['deliveries'].name} d WHERE d.event_seq = e.seq))"))


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
