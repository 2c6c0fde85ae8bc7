"""Delivery-log query cost on a large log: run by hand, not part of the test suite.

    .venv/bin/python tests/bench/delivery_log_query.py [--rows 1000000] [--keep]

Creates a scratch database (migrated like production), fills one webhook's log with ``--rows``
deliveries spread over 30 days (97 % succeeded, 2 % failed, 1 % pending; 12 event types; 20
stores) plus a second webhook with a tenth as many, runs ANALYZE, then measures the exact SQL the
API runs (``hookstream.api.deliveries.build_log_query``) for typical pages:

* EXPLAIN (ANALYZE, BUFFERS) once, printing the plan's index and execution time;
* the same statement through asyncpg's prepared-statement path 30 times (what a request does,
  including PostgreSQL's switch to a generic plan after five executions), printing p50/p95.

The database is dropped at the end unless ``--keep``. Connection: DATABASE_URL from the
environment or ``.local/env`` (``make up``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import secrets
import statistics
import sys
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hookstream.api.deliveries import build_log_query  # noqa: E402
from hookstream.api.params import encode_cursor  # noqa: E402
from hookstream.core.db import migrate  # noqa: E402
from hookstream.core.model import format_rfc3339  # noqa: E402
from hookstream.core.validation import EVENT_TYPES  # noqa: E402
from tests.support import create_database, drop_database, load_local_env  # noqa: E402

LIMIT = 50
RUNS = 30


def database_url() -> str:
    url = load_local_env().get("DATABASE_URL")
    if not url:
        sys.exit("DATABASE_URL is not set and .local/env is missing: run `make up` first")
    return url


_FILL_SQL = """
INSERT INTO deliveries (webhook_id, event_seq, event_id, event_type, store_id, created_at, status, attempts,
                        last_attempt_at, last_http_status, last_error, finished_at)
SELECT $1, $2, $3 || g,
       ($4::text[])[1 + (g * 7) % 12],
       'store_' || lpad(((g * 13) % 20)::text, 2, '0'),
       $5::timestamptz - make_interval(secs => (g::float8 / $6) * 30 * 86400) ,
       CASE WHEN g % 100 < 97 THEN 'succeeded' WHEN g % 100 < 99 THEN 'failed' ELSE 'pending' END,
       CASE WHEN g % 100 < 97 THEN 1 WHEN g % 100 < 99 THEN 4 ELSE 0 END,
       $5::timestamptz - make_interval(secs => (g::float8 / $6) * 30 * 86400),
       CASE WHEN g % 100 < 97 THEN 200 WHEN g % 100 < 99 THEN 500 ELSE NULL END,
       CASE WHEN g % 100 BETWEEN 97 AND 98 THEN 'HTTP 500' ELSE NULL END,
       CASE WHEN g % 100 < 99 THEN $5::timestamptz ELSE NULL END
FROM generate_series(1, $6) g
"""


async def fill(conn: asyncpg.Connection, rows: int) -> tuple[str, str]:
    org_id = "org_bench"
    await conn.execute("INSERT INTO organizations (id, name) VALUES ($1, 'bench')", org_id)
    await conn.execute("INSERT INTO stores (organization_id, id, name)"
                       " SELECT $1, 'store_' || lpad(g::text, 2, '0'), 'store' FROM generate_series(0, 19) g", org_id)
    hooks = []
    for n in range(2):
        webhook_id = f"wh_bench{n}"
        await conn.execute("INSERT INTO webhooks (id, organization_id, url, event_types, store_ids, secret)"
                           " VALUES ($1, $2, 'https://example.com/', $3, ARRAY['store_00'], 'whsec_x')",
                           webhook_id, org_id, list(EVENT_TYPES))
        hooks.append(webhook_id)
    # A handful of event rows is enough: the log query never reads events.
    seq = await conn.fetchval(
        "INSERT INTO events (organization_id, event_id, event_type, store_id, occurred_at, body, source_topic,"
        " source_partition, source_offset) VALUES ($1, 'evt_bench', 'order.created', 'store_00', now(), '{}',"
        " 'bench', 0, 0) RETURNING seq", org_id)
    now = dt.datetime.now(dt.UTC)
    for webhook_id, n in ((hooks[0], rows), (hooks[1], max(1, rows // 10))):
        started = time.perf_counter()
        await conn.execute(_FILL_SQL, webhook_id, seq, f"evt_{webhook_id}_", list(EVENT_TYPES), now, n)
        print(f"inserted {n:,} deliveries for {webhook_id} in {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    await conn.execute("VACUUM ANALYZE deliveries")
    print(f"VACUUM ANALYZE in {time.perf_counter() - started:.1f}s")
    return org_id, hooks[0]


async def cursor_at(conn: asyncpg.Connection, webhook_id: str, offset: int, status: str | None = None) -> str:
    row = await conn.fetchrow(
        "SELECT created_at, id FROM deliveries WHERE webhook_id = $1 AND ($2::text IS NULL OR status = $2)"
        " ORDER BY created_at DESC, id DESC OFFSET $3 LIMIT 1", webhook_id, status, offset)
    return encode_cursor("d", row["created_at"], row["id"])


async def measure(conn: asyncpg.Connection, label: str, org_id: str, webhook_id: str, query: dict) -> None:
    sql, args = build_log_query(webhook_id, org_id, query, LIMIT)
    plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
    lines = [r[0] for r in plan]
    execution = next(line for line in lines if line.startswith("Execution Time"))
    indexes = sorted(set(re.findall(r"using (\w+)", "\n".join(lines))))
    rows = await conn.fetch(sql, *args)
    timings = []
    for _ in range(RUNS):
        started = time.perf_counter()
        await conn.fetch(sql, *args)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    p95 = timings[int(len(timings) * 0.95) - 1]
    print(f"{label:<42} {execution:<28} prepared p50 {statistics.median(timings):6.2f} ms"
          f"  p95 {p95:6.2f} ms  rows {len(rows):>3}  index {','.join(indexes) or '-'}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    admin_url = database_url()
    name = f"hs_bench_{secrets.token_hex(4)}"
    url = await create_database(admin_url, name)
    try:
        await migrate(url)
        conn = await asyncpg.connect(url)
        try:
            org_id, webhook_id = await fill(conn, args.rows)
            since = format_rfc3339(dt.datetime.now(dt.UTC) - dt.timedelta(days=7))
            until = format_rfc3339(dt.datetime.now(dt.UTC) - dt.timedelta(days=6))
            cases = [
                ("first page", {}),
                ("first page, status=failed", {"status": "failed"}),
                ("first page, status=pending", {"status": "pending"}),
                ("first page, event_type=order.shipped", {"event_type": "order.shipped"}),
                ("first page, store_id=store_07", {"store_id": "store_07"}),
                ("first page, since/until one day", {"since": since, "until": until}),
                ("status=failed + store_id=store_01", {"status": "failed", "store_id": "store_01"}),
                # no failed delivery has store_07 here: the worst case, every failed row is visited
                ("status=failed + store_id=store_07 (none)", {"status": "failed", "store_id": "store_07"}),
                ("page at row 500,000 (cursor)", {"cursor": await cursor_at(conn, webhook_id, args.rows // 2)}),
                ("status=failed, page at its row 10,000",
                 {"status": "failed", "cursor": await cursor_at(conn, webhook_id, args.rows // 100, "failed")}),
            ]
            print(f"\nlimit={LIMIT}, {args.rows:,} deliveries for {webhook_id}; PostgreSQL "
                  f"{await conn.fetchval('SHOW server_version')}\n")
            for label, query in cases:
                await measure(conn, label, org_id, webhook_id, query)
        finally:
            await conn.close()
    finally:
        if not args.keep:
            await drop_database(admin_url, name)
        else:
            print(f"kept database {name}")


if __name__ == "__main__":
    asyncio.run(main())
