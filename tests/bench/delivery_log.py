"""The ``log`` scenario of ``make bench`` (issue 17): the delivery log at 10 million deliveries.

A database of its own (a copy of the bench's migrated template) is filled, in SQL, with ``deliveries``
deliveries spread over the 30 days ending today, one day at a time, in the day partitions that
:func:`hookstream.core.partitions.ensure_partitions` makes (clock at the oldest day, so the 30 days and
the usual ``AHEAD_DAYS`` empty days ahead exist, as they do in production):

- 100 organizations, 10 webhooks each (1,000), 5 stores each; an event's organization is drawn with a
  skew (organization 0 gets ~10 % of the events, the last ~0.5 %), and each event fans out to 1-5 of its
  organization's webhooks (3 on average);
- events carry a ~550-byte order body (the shape of hookstream/schemas/examples/webhook-payload) and an
  idempotency key (``event_keys``), as the router stores them; ids come from ``hookstream_id(<seq>, <the
  row's own time>)``, so they satisfy the CHECK constraints and land in their day's partition;
- 95 % of deliveries succeed at the first attempt, 3.5 % after 2-4 attempts (retries at 30 s, 5 min, 30 min),
  1.5 % fail after 4; those created in the last 36 minutes that would retry are still pending;
- each attempt row carries what the sender writes (hookstream/sender/http.py, outcomes.py): the request
  URL, the six request headers as jsonb (the signature included), up to six response headers, an excerpt.

Then VACUUM (per day, as autovacuum would have by then) and ANALYZE, and the figures:

- p50/p99 of the API's own statements (``build_log_query``, ``build_events_query`` and the explorer's
  deliveries lookup), each run for a random webhook or organization, through one asyncpg connection with its
  statement cache (as an API pool connection runs them, generic plans included);
- bytes on disk per delivery (every partition of events, event_keys, deliveries and attempts: heap, TOAST
  and indexes), split by table and by index;
- how many partitions the one-day range query reads (``EXPLAIN ANALYZE``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from hookstream import __version__
from hookstream.api.deliveries import build_log_query
from hookstream.api.explorer import _DELIVERIES_SQL, build_events_query
from hookstream.api.params import DEFAULT_LIMIT, encode_cursor
from hookstream.core.model import format_rfc3339
from hookstream.core.partitions import AHEAD_DAYS, DAY_SHIFT, day_of, day_start, ensure_partitions
from hookstream.core.validation import EVENT_TYPES
from tests.support import create_database

DAYS = 30
ORGS = 100
WEBHOOKS_PER_ORG = 10
STORES_PER_ORG = 5
MEAN_FANOUT = 3  # an event goes to 1 + (n % 5) webhooks of its organization
BUILD_WORKERS = 2  # days built at once (the machine has 2 cores)
WARMUP_RUNS = 10
TABLES = ("events", "event_keys", "deliveries", "attempts")

# One day's rows, in four statements. $1 the day's first instant, $2 how many seconds of it are used
# (today: up to now), $3 events, $4 the first event number (unique event ids and source offsets).
_EVENTS_SQL = """
INSERT INTO events (seq, organization_id, event_id, event_type, store_id, occurred_at, body, source_topic,
                    source_partition, source_offset, received_at)
SELECT hookstream_id('events_seq_seq', x.at), x.org, x.eid, x.typ, x.store, x.at - interval '150 ms',
       format('{"id":"%s","type":"%s","occurred_at":"%s","organization_id":"%s","store_id":"%s","data":{"order":'
              '{"id":"ord_%s","number":"#%s","status":"open","total":"%s","currency":"USD","customer":{"id":"cus_%s",'
              '"email":"customer%s@example.com"},"lines":[{"id":"line_1","sku":"SKU-%s","quantity":1,'
              '"price":"10.00"},{"id":"line_2","sku":"SKU-%s","quantity":2,"price":"12.50"},{"id":"line_3",'
              '"sku":"SKU-%s","quantity":1,"price":"7.10"}],"shipping_address":{"city":"Springfield",'
              '"country":"US","postal_code":"%s"}}}}',
              x.eid, x.typ, to_char((x.at - interval '150 ms') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
              x.org, x.store, x.n, x.n, (x.n % 500) || '.10', x.n % 99991, x.n % 99991, x.n % 9973, x.n % 9967,
              x.n % 9949, lpad((x.n % 99999)::text, 5, '0')),
       'hookstream.events.orders', (x.n % 12)::int, x.n, x.at
FROM (
    SELECT g + $4 AS n, $1::timestamptz + make_interval(secs => g * $2::float8 / $3) AS at,
           'evt_' || substr(md5('evt' || (g + $4)), 1, 20) AS eid,
           ($5::text[])[1 + floor(100 * power((hashint8(g + $4) & 2147483647)::float8 / 2147483648, 2))::int] AS org,
           ($6::text[])[1 + (g + $4) % array_length($6::text[], 1)] AS typ,
           'store_' || lpad((1 + (g + $4) % 5)::text, 3, '0') AS store
    FROM generate_series(0, $3 - 1) g
) x
"""

_KEYS_SQL = """
INSERT INTO event_keys (organization_id, event_id, span, event_seq, source_topic, source_partition, source_offset)
SELECT organization_id, event_id, hookstream_span(received_at), seq, source_topic, source_partition, source_offset
FROM {events}
"""

# Per delivery r in 0..999 (a hash): < 950 succeeded at once, < 985 succeeded after 2-4 attempts, else failed
# after 4; a delivery that would retry and was made in the last 36 minutes ($2) is still pending.
_DELIVERIES_SQL_FILL = """
INSERT INTO deliveries (id, webhook_id, event_seq, event_id, event_type, store_id, created_at, status, attempts,
                        last_attempt_at, last_http_status, last_error, finished_at, next_attempt_at,
                        next_retry_index, in_flight, issued_attempt)
SELECT hookstream_id('deliveries_id_seq', y.at), y.webhook_id, y.seq, y.event_id, y.event_type, y.store_id, y.at,
       y.status, y.n, y.at + y.last_offset, CASE WHEN y.status = 'succeeded' THEN 200 ELSE 503 END,
       CASE WHEN y.status <> 'succeeded' THEN 'HTTP 503' END,
       CASE WHEN y.status <> 'pending' THEN y.at + y.last_offset + interval '45 ms' END,
       CASE WHEN y.status = 'pending' THEN y.at + interval '35 min' END,
       CASE WHEN y.status = 'pending' THEN 3 END, false, y.n
FROM (
    SELECT x.*, CASE WHEN x.r >= 950 AND x.at > $2::timestamptz - interval '36 min' THEN 'pending'
                     WHEN x.r < 985 THEN 'succeeded' ELSE 'failed' END AS status,
           CASE WHEN x.r >= 950 AND x.at > $2::timestamptz - interval '36 min' THEN 3
                WHEN x.r < 950 THEN 1 WHEN x.r < 985 THEN 2 + x.r % 3 ELSE 4 END AS n,
           (ARRAY[interval '0', interval '30 s', interval '330 s', interval '2130 s'])[
               CASE WHEN x.r >= 950 AND x.at > $2::timestamptz - interval '36 min' THEN 3
                    WHEN x.r < 950 THEN 1 WHEN x.r < 985 THEN 2 + x.r % 3 ELSE 4 END] AS last_offset
    FROM (
        SELECT ($1::text[])[1 + o.idx * {per_org} + ((e.source_offset / 5 + j) % {per_org})::int] AS webhook_id,
               e.seq, e.event_id, e.event_type, e.store_id, e.received_at AS at,
               (hashint8(e.seq * 8 + j) & 2147483647) % 1000 AS r
        FROM {events} e JOIN bench_orgs o ON o.id = e.organization_id
        CROSS JOIN LATERAL generate_series(0, (e.source_offset % 5)::int) j
    ) x
) y
"""

# Attempt a of a delivery of n attempts: the last one is its outcome, the earlier ones failed (503 or a timeout).
_ATTEMPTS_SQL = """
INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, http_status, error, response_excerpt, outcome,
                      request_url, request_headers, response_headers)
SELECT z.id, z.a, z.started_at, z.duration_ms,
       CASE WHEN z.ok THEN 200 WHEN z.timeout THEN NULL ELSE 503 END,
       CASE WHEN z.ok THEN NULL WHEN z.timeout THEN 'timeout after 10s' ELSE 'HTTP 503' END,
       CASE WHEN z.ok THEN '{{"received":true}}' WHEN z.timeout THEN NULL
            ELSE '<html><body><h1>503 Service Unavailable</h1></body></html>' END,
       CASE WHEN z.ok THEN 'succeeded' WHEN z.a = z.n AND z.status = 'failed' THEN 'failed' ELSE 'retrying' END,
       z.url,
       jsonb_build_object('content-type', 'application/json', 'webhook-id', z.event_id,
                          'webhook-timestamp', extract(epoch FROM z.started_at)::bigint::text,
                          'webhook-signature', 'v1,' || encode(decode(md5(z.id || 's' || z.a) || md5(z.a || 's' || z.id),
                                                                      'hex'), 'base64'),
                          'user-agent', $1::text, 'accept-encoding', 'identity'),
       CASE WHEN z.timeout THEN NULL ELSE jsonb_build_array(
           jsonb_build_array('server', 'nginx'),
           jsonb_build_array('date', to_char(z.started_at AT TIME ZONE 'UTC', 'Dy, DD Mon YYYY HH24:MI:SS "GMT"')),
           jsonb_build_array('content-type', CASE WHEN z.ok THEN 'application/json' ELSE 'text/html' END),
           jsonb_build_array('content-length', CASE WHEN z.ok THEN '17' ELSE '62' END),
           jsonb_build_array('connection', 'keep-alive'),
           jsonb_build_array('x-request-id', md5(z.id || 'r' || z.a)::uuid::text)) END
FROM (
    SELECT d.id, a, d.n, d.status, d.event_id, w.url,
           d.created_at + (ARRAY[interval '2 ms', interval '30 s', interval '330 s', interval '2130 s'])[a] AS started_at,
           CASE WHEN a < d.n OR d.status = 'failed' THEN (d.id + a) % 2 = 0 ELSE false END AS timeout,  -- or a 503
           a = d.n AND d.status = 'succeeded' AS ok,
           CASE WHEN a = d.n AND d.status = 'succeeded' THEN 15 + (d.id % 120)
                WHEN (a < d.n OR d.status = 'failed') AND (d.id + a) % 2 = 0 THEN 10000.0
                ELSE 20 + (d.id % 200) END AS duration_ms
    FROM (SELECT id, attempts AS n, status, event_id, webhook_id, created_at FROM {deliveries}) d
    JOIN webhooks w ON w.id = d.webhook_id
    CROSS JOIN LATERAL generate_series(1, d.n) a
) z
"""


@dataclass
class LogDatabase:
    """A built log database, kept across the bench's runs (built once, measured each run)."""

    url: str
    name: str
    deliveries: int
    events: int
    build_s: float
    build_phases: dict[str, float]
    webhooks: list[tuple[str, str]]  # (webhook id, organization id)
    orgs: list[str]
    today: int  # the UTC day the data ends
    build_wal_bytes: int = 0


def _day_name(table: str, day: int) -> str:
    return f"{table}_{day_start(day):%Y%m%d}"


async def build(admin_url: str, template: str, deliveries: int, say: Callable[[str], None]) -> LogDatabase:
    name = f"hs_bench_log_{secrets.token_hex(4)}"
    url = await create_database(admin_url, name, template=template)
    now = dt.datetime.now(dt.UTC)
    today = day_of(now)
    oldest = today - DAYS + 1
    phases = dict.fromkeys(("partitions", "events", "event_keys", "deliveries", "attempts", "vacuum", "analyze"), 0.0)
    started = time.perf_counter()
    conn = await asyncpg.connect(url)
    try:
        wal_start = await conn.fetchval("SELECT pg_current_wal_lsn()::text")
        t = time.perf_counter()
        await ensure_partitions(conn, day_start(oldest), ahead_days=DAYS - 1 + AHEAD_DAYS)
        phases["partitions"] = time.perf_counter() - t
        orgs = ["org_" + secrets.token_hex(8) for _ in range(ORGS)]
        webhooks = [("wh_" + secrets.token_hex(8), org) for org in orgs for _ in range(WEBHOOKS_PER_ORG)]
        await conn.executemany("INSERT INTO organizations (id, name) VALUES ($1, $2)",
                               [(org, f"bench org {i}") for i, org in enumerate(orgs)])
        await conn.executemany("INSERT INTO stores (organization_id, id, name) VALUES ($1, $2, $2)",
                               [(org, f"store_{s:03d}") for org in orgs for s in range(1, STORES_PER_ORG + 1)])
        await conn.executemany(
            "INSERT INTO webhooks (id, organization_id, url, event_types, store_ids, secret) VALUES ($1, $2, $3, $4,"
            " $5, $6)",
            [(wh, org, f"https://api.shop-{org[4:12]}.example.com/webhooks/hookstream/{i % WEBHOOKS_PER_ORG}",
              list(EVENT_TYPES), [f"store_{s:03d}" for s in range(1, STORES_PER_ORG + 1)],
              "whsec_" + secrets.token_urlsafe(32)) for i, (wh, org) in enumerate(webhooks)])
        # the organizations' numbers, for the fill statements (a plain table: both workers read it)
        await conn.execute("CREATE TABLE bench_orgs (idx integer, id text PRIMARY KEY)")
        await conn.executemany("INSERT INTO bench_orgs VALUES ($1, $2)", list(enumerate(orgs)))
    finally:
        await conn.close()

    per_day = deliveries // DAYS
    events_per_day = max(1, round(per_day / MEAN_FANOUT))
    webhook_ids = [w for w, _ in webhooks]
    days = list(range(oldest, today + 1))
    done = 0

    async def build_day(conn: asyncpg.Connection, day: int) -> None:
        nonlocal done
        first = day_start(day)
        span = (now - dt.timedelta(minutes=1) - first).total_seconds() if day == today else 86400.0
        events, dels, atts = (_day_name(t, day) for t in ("events", "deliveries", "attempts"))
        steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("events", lambda: conn.execute(_EVENTS_SQL, first, span, events_per_day,
                                            (day - oldest) * events_per_day, orgs, list(EVENT_TYPES))),
            ("event_keys", lambda: conn.execute(_KEYS_SQL.format(events=events))),
            ("deliveries", lambda: conn.execute(
                _DELIVERIES_SQL_FILL.format(events=events, per_org=WEBHOOKS_PER_ORG), webhook_ids, now)),
            ("attempts", lambda: conn.execute(_ATTEMPTS_SQL.format(deliveries=dels), f"hookstream/{__version__}")),
            ("vacuum", lambda: conn.execute(f"VACUUM {events}, {dels}, {atts}")),
        ]
        for phase, step in steps:
            t0 = time.perf_counter()
            await step()
            phases[phase] += time.perf_counter() - t0
        done += 1
        if done % 5 == 0 or done == len(days):
            say(f"log: {done}/{len(days)} days built ({time.perf_counter() - started:.0f}s)")

    async def worker(queue: list[int]) -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("SET synchronous_commit = off")
            await conn.execute("SET maintenance_work_mem = '256MB'")
            await conn.execute("SET work_mem = '64MB'")
            await conn.execute("SET jit = off")  # compiling took 90 % of a small day's statements
            while queue:
                await build_day(conn, queue.pop(0))
        finally:
            await conn.close()

    queue = list(days)
    await asyncio.gather(*(worker(queue) for _ in range(BUILD_WORKERS)))
    conn = await asyncpg.connect(url)
    try:
        t = time.perf_counter()
        await conn.execute("DROP TABLE bench_orgs")
        await conn.execute("ANALYZE events, event_keys, deliveries, attempts, webhooks, organizations")
        phases["analyze"] = time.perf_counter() - t
        build_s = time.perf_counter() - started
        total = await conn.fetchval("SELECT count(*) FROM deliveries")
        n_events = await conn.fetchval("SELECT count(*) FROM events")
        await conn.execute("CHECKPOINT")
        # the WAL the build wrote (a bulk insert, no updates: a floor for what the pipeline writes)
        wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint", wal_start)
    finally:
        await conn.close()
    return LogDatabase(url, name, total, n_events, build_s, phases, webhooks, orgs, today, wal)


# ----------------------------------------------------------------------------------------- measuring


async def sizes(conn: asyncpg.Connection, deliveries: int) -> tuple[dict[str, float], list[tuple[str, str, int]]]:
    """Bytes per delivery by table and part (heap, TOAST and maps, indexes), and every index's bytes summed
    over its partitions: (figures, [(table, index, bytes)])."""
    per: dict[str, float] = {}
    indexes: list[tuple[str, str, int]] = []
    total = 0
    for table in TABLES:
        row = await conn.fetchrow(
            "SELECT sum(pg_relation_size(relid))::bigint AS heap,"
            " sum(pg_table_size(relid) - pg_relation_size(relid))::bigint AS toast,"
            " sum(pg_indexes_size(relid))::bigint AS idx, sum(pg_total_relation_size(relid))::bigint AS total"
            " FROM pg_partition_tree($1::regclass) WHERE isleaf", table)
        per[f"{table}_heap"] = row["heap"] / deliveries
        per[f"{table}_toast"] = row["toast"] / deliveries
        per[f"{table}_indexes"] = row["idx"] / deliveries
        if table != "event_keys":
            total += row["total"]
        for idx in await conn.fetch(
                "SELECT i.indexrelid::regclass::text AS name, (SELECT sum(pg_relation_size(t.relid))"
                " FROM pg_partition_tree(i.indexrelid) t WHERE t.isleaf)::bigint AS bytes"
                " FROM pg_index i WHERE i.indrelid = $1::regclass ORDER BY 2 DESC", table):
            indexes.append((table, idx["name"], int(idx["bytes"] or 0)))
    per["total"] = total / deliveries
    return per, indexes


def _plan_partitions(plan: Any, prefix: str) -> tuple[set[str], set[str]]:
    """(partitions the query's own scans name, those actually read: a scan node with loops > 0). Subplans
    are left out: the log's columns include a lookup of an ordered delivery's head, which names every
    partition but runs only for a waiting ordered delivery."""
    named: set[str] = set()
    read: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        rel = node.get("Relation Name")
        if rel and rel.startswith(prefix):
            named.add(rel)
            if node.get("Actual Loops", 0) > 0:
                read.add(rel)
        for child in node.get("Plans", []):
            if child.get("Parent Relationship") != "SubPlan":
                walk(child)

    walk(plan[0]["Plan"])
    return named, read


async def explain_range(conn: asyncpg.Connection, sql: str, args: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mode in ("auto", "force_generic_plan"):
        await conn.execute(f"SET plan_cache_mode = {mode}")
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
        plan = raw if isinstance(raw, list) else json.loads(raw)
        named, read = _plan_partitions(plan, "deliveries_")
        out[mode] = {"planned": len(named), "read": len(read), "partitions_read": sorted(read),
                     "execution_ms": plan[0].get("Execution Time"), "planning_ms": plan[0].get("Planning Time")}
    await conn.execute("RESET plan_cache_mode")
    return out


async def timed(conn: asyncpg.Connection, runs: int, make: Callable[[random.Random], list[tuple[str, list[Any]]]],
                rng: random.Random) -> list[float]:
    """Milliseconds of ``runs`` executions (after ``WARMUP_RUNS``) of the statements ``make`` returns."""
    times = []
    for i in range(WARMUP_RUNS + runs):
        statements = make(rng)
        t0 = time.perf_counter()
        for sql, args in statements:
            await conn.fetch(sql, *args)
        if i >= WARMUP_RUNS:
            times.append((time.perf_counter() - t0) * 1000)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def measure(db: LogDatabase, runs: int, say: Callable[[str], None]) -> tuple[dict[str, float], dict[str, Any]]:
    """The scenario's figures (for results.json) and the details (plans, index sizes) for the report."""
    rng = random.Random(17)
    limit = DEFAULT_LIMIT
    mid = day_start(db.today - DAYS // 2)
    one_day = {"since": format_rfc3339(mid), "until": format_rfc3339(mid + dt.timedelta(days=1))}

    def deep_cursor(r: random.Random) -> str:
        # a position 10-25 days back: the keyset page a user reaches by paging (or a link) deep in the log
        at = dt.datetime.now(dt.UTC) - dt.timedelta(days=r.uniform(10, 25))
        return encode_cursor("d", at, (day_of(at) << DAY_SHIFT) | ((1 << DAY_SHIFT) - 1))

    def log_page(query: Callable[[random.Random], dict[str, str]]) -> Callable[[random.Random], list]:
        def make(r: random.Random) -> list:
            webhook_id, org_id = r.choice(db.webhooks)
            return [build_log_query(webhook_id, org_id, query(r), limit)]
        return make

    conn = await asyncpg.connect(db.url)
    figures: dict[str, float] = {}
    details: dict[str, Any] = {}
    try:
        async def explorer_page(r: random.Random, query: dict[str, str]) -> list:
            # the explorer's two statements: its events page, then those events' deliveries
            org_id = r.choice(db.orgs)
            sql, args = build_events_query(org_id, query, limit)
            rows = await conn.fetch(sql, *args)
            return [(sql, args), (_DELIVERIES_SQL, [[row["seq"] for row in rows[:limit]], org_id])]

        cases: dict[str, Callable[[random.Random], list]] = {
            "log": log_page(lambda r: {}),
            "log_failed": log_page(lambda r: {"status": "failed"}),
            "log_range": log_page(lambda r: dict(one_day)),
            "log_deep": log_page(lambda r: {"cursor": deep_cursor(r)}),
        }
        for key, make in cases.items():
            t = await timed(conn, runs, make, rng)
            figures[f"{key}_p50_ms"], figures[f"{key}_p99_ms"] = statistics.median(t), percentile(t, 0.99)
            say(f"log: {key} p50 {figures[f'{key}_p50_ms']:.2f} ms, p99 {figures[f'{key}_p99_ms']:.2f} ms")
        for key, query in (("explorer", {}), ("explorer_range", dict(one_day))):
            times = []
            for i in range(WARMUP_RUNS + runs):
                t0 = time.perf_counter()
                statements = await explorer_page(rng, query)
                for sql, args in statements[1:]:
                    await conn.fetch(sql, *args)
                if i >= WARMUP_RUNS:
                    times.append((time.perf_counter() - t0) * 1000)
            figures[f"{key}_p50_ms"], figures[f"{key}_p99_ms"] = statistics.median(times), percentile(times, 0.99)
            say(f"log: {key} p50 {figures[f'{key}_p50_ms']:.2f} ms, p99 {figures[f'{key}_p99_ms']:.2f} ms")

        # the busiest webhook's one-day range, explained
        busiest = await conn.fetchrow(
            "SELECT d.webhook_id, w.organization_id FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id"
            " WHERE d.id >= $1 GROUP BY 1, 2 ORDER BY count(*) DESC LIMIT 1", db.today << DAY_SHIFT)
        sql, args = build_log_query(busiest["webhook_id"], busiest["organization_id"], dict(one_day), limit)
        details["range_plan"] = await explain_range(conn, sql, args)
        figures["log_range_partitions_scanned"] = details["range_plan"]["auto"]["read"]
        # the unfiltered first page of a webhook not timed above: what it reads, and from where
        await conn.execute("SET track_io_timing = on")
        details["first_page_plans"] = []
        for webhook_id, org_id in rng.sample(db.webhooks, 3):
            sql, args = build_log_query(webhook_id, org_id, {}, limit)
            raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
            plan = json.loads(raw) if isinstance(raw, str) else raw
            top = plan[0]["Plan"]
            _, read = _plan_partitions(plan, "deliveries_")
            details["first_page_plans"].append({
                "partitions_read": len(read), "execution_ms": plan[0].get("Execution Time"),
                "shared_hit": top.get("Shared Hit Blocks"), "shared_read": top.get("Shared Read Blocks"),
                "io_read_ms": top.get("I/O Read Time")})
        await conn.execute("RESET track_io_timing")
        per, indexes = await sizes(conn, db.deliveries)
        details["bytes_per_delivery"] = per
        details["indexes"] = indexes
        figures["log_bytes_per_delivery"] = per["total"]
        for table in ("events", "deliveries", "attempts"):
            figures[f"log_{table}_bytes_per_delivery"] = (per[f"{table}_heap"] + per[f"{table}_toast"]
                                                         + per[f"{table}_indexes"])
        figures["log_deliveries_index_bytes_per_delivery"] = per["deliveries_indexes"]
        details["database_bytes"] = await conn.fetchval("SELECT pg_database_size(current_database())")
        # what a row is made of (one day in the middle): where the attempt and event bytes go
        mid_day = db.today - DAYS // 2
        columns = await conn.fetchrow(
            "SELECT avg(pg_column_size(a.*)) AS attempt_row, avg(pg_column_size(a.request_headers)) AS request_headers,"
            " avg(pg_column_size(a.response_headers)) AS response_headers,"
            " avg(pg_column_size(a.request_url)) AS request_url, avg(pg_column_size(a.response_excerpt)) AS excerpt,"
            f" count(*)::float8 / (SELECT count(*) FROM {_day_name('deliveries', mid_day)}) AS attempts_per_delivery"
            f" FROM {_day_name('attempts', mid_day)} a")
        events_row = await conn.fetchrow(
            "SELECT avg(pg_column_size(e.*)) AS event_row, avg(pg_column_size(e.body)) AS body,"
            f" avg(octet_length(e.body)) AS body_bytes FROM {_day_name('events', mid_day)} e")
        deliveries_row = await conn.fetchval(
            f"SELECT avg(pg_column_size(d.*)) FROM {_day_name('deliveries', mid_day)} d")
        details["columns"] = {**{k: float(v) for k, v in columns.items()}, **{k: float(v) for k, v in events_row.items()},
                              "delivery_row": float(deliveries_row)}
    finally:
        await conn.close()
    figures["log_build_s"] = db.build_s
    figures["log_deliveries"] = db.deliveries
    details["build_phases_s"] = db.build_phases
    details["events"] = db.events
    details["deliveries_count"] = db.deliveries
    details["build_wal_bytes_per_delivery"] = db.build_wal_bytes / db.deliveries
    return figures, details


def format_details(details: dict[str, Any]) -> str:
    """The log scenario's sizes and plan, as printed after the results table."""
    per = details["bytes_per_delivery"]
    lines = [f"log scenario: {details['events']:,} events, database {details['database_bytes'] / 2**30:.2f} GiB;"
             " build phases " + ", ".join(f"{k} {v:.0f}s" for k, v in details["build_phases_s"].items()),
             "bytes per delivery   heap    toast+maps  indexes"]
    for table in TABLES:
        lines.append(f"  {table:<16} {per[f'{table}_heap']:>7.0f} {per[f'{table}_toast']:>10.0f}"
                     f" {per[f'{table}_indexes']:>9.0f}")
    lines.append(f"  total (events, deliveries, attempts) {per['total']:.0f}; with event_keys "
                 f"{per['total'] + sum(per[f'event_keys_{p}'] for p in ('heap', 'toast', 'indexes')):.0f}")
    lines.append("indexes (summed over partitions), bytes per delivery:")
    for table, name, size in details["indexes"]:
        lines.append(f"  {table:<11} {name:<32} {size / details['deliveries_count']:>7.1f}")
    lines.append(f"WAL written by the build: {details['build_wal_bytes_per_delivery']:.0f} bytes per delivery")
    if "columns" in details:
        lines.append("average bytes (one day): " + ", ".join(f"{k} {v:.1f}" for k, v in details["columns"].items()))
    for p in details.get("first_page_plans", []):
        lines.append(f"first page (EXPLAIN ANALYZE, another webhook): {p['partitions_read']} partitions read,"
                     f" {p['execution_ms']} ms, shared buffers hit {p['shared_hit']} read {p['shared_read']}"
                     f" (I/O {p['io_read_ms']} ms)")
    for mode, plan in details["range_plan"].items():
        lines.append(f"one-day range ({mode}): {plan['planned']} deliveries partitions in the plan, {plan['read']} read"
                     f" ({', '.join(plan['partitions_read'])}); execution {plan['execution_ms']} ms")
    return "\n".join(lines)
