"""How much larger ``deliveries`` gets on the pipeline's write path than in the ``log`` scenario's build: run by
hand, not part of ``make bench``.

    .venv/bin/python -m tests.bench.log_churn [--deliveries 1000000]

The ``log`` scenario (tests/bench/delivery_log.py) inserts each delivery once, already finished. The pipeline
inserts it ``pending`` (router) and updates it to ``succeeded`` a few milliseconds later (sender). That update is
never HOT (``status`` is indexed), so it writes a new heap version and an entry in each full index. This script
builds the log at ``--deliveries``, then replays one day's deliveries into a copy of the partition (``LIKE
deliveries INCLUDING ALL``: same indexes) the pipeline's way: batches of 1,000 inserted pending, each updated to
its final state after the next batch is inserted, with a VACUUM whenever a fifth of the rows are dead (what
autovacuum's default scale factor does). It prints both sizes, by heap and by index.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from tests.bench import delivery_log
from tests.bench.run import log
from tests.support import create_database, drop_database, load_local_env

BATCH = 1000
COLUMNS = ("id, webhook_id, event_seq, event_id, event_type, store_id, created_at, status, attempts, last_attempt_at,"
           " last_http_status, last_error, finished_at, next_attempt_at, next_retry_index, in_flight, issued_attempt")


async def sizes(conn: asyncpg.Connection, table: str) -> dict[str, int]:
    # keyed by definition ("btree (webhook_id, created_at DESC, id DESC)"): the copy's names differ
    rows = await conn.fetch("SELECT regexp_replace(pg_get_indexdef(indexrelid), '^.* USING ', '') AS name,"
                            " pg_relation_size(indexrelid) AS bytes FROM pg_index WHERE indrelid = $1::regclass", table)
    out = {"heap": await conn.fetchval("SELECT pg_relation_size($1::regclass)", table)}
    for row in rows:
        out[row["name"]] = row["bytes"]
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    args = parser.parse_args()
    admin_url = load_local_env()["DATABASE_URL"]
    template = "hs_churn_template"
    await drop_database(admin_url, template)
    from hookstream.core.db import migrate
    await migrate(await create_database(admin_url, template))
    db = await delivery_log.build(admin_url, template, args.deliveries, log)
    try:
        conn = await asyncpg.connect(db.url)
        day = delivery_log._day_name("deliveries", db.today - delivery_log.DAYS // 2)
        await conn.execute("SET synchronous_commit = off")
        await conn.execute("CREATE TABLE churn (LIKE deliveries INCLUDING ALL)")
        ids = [r["id"] for r in await conn.fetch(f"SELECT id FROM {day} ORDER BY id")]
        dead = 0
        previous: list[int] = []
        for start in range(0, len(ids) + BATCH, BATCH):
            chunk = ids[start:start + BATCH]
            if chunk:
                await conn.execute(
                    f"INSERT INTO churn ({COLUMNS}) SELECT id, webhook_id, event_seq, event_id, event_type, store_id,"
                    " created_at, 'pending', 0, NULL, NULL, NULL, NULL, NULL, NULL, true, 1"
                    f" FROM {day} WHERE id = ANY($1::bigint[])", chunk)
            if previous:
                await conn.execute(
                    "UPDATE churn c SET status = d.status, attempts = d.attempts, last_attempt_at = d.last_attempt_at,"
                    " last_http_status = d.last_http_status, last_error = d.last_error, finished_at = d.finished_at,"
                    " next_attempt_at = d.next_attempt_at, next_retry_index = d.next_retry_index, in_flight = false,"
                    f" issued_attempt = d.issued_attempt FROM {day} d WHERE c.id = d.id AND c.id = ANY($1::bigint[])",
                    previous)
                dead += len(previous)
                if dead > 0.2 * (start + len(chunk)):
                    await conn.execute("VACUUM churn")
                    dead = 0
            previous = chunk
        await conn.execute("VACUUM ANALYZE churn")
        built, churned = await sizes(conn, day), await sizes(conn, "churn")
        n = len(ids)
        print(f"{day}: {n:,} deliveries; bytes per delivery, as built / through insert + update:")
        for name, a in built.items():
            b = churned.get(name, 0)
            print(f"  {name:<60} {a / n:7.1f} {b / n:7.1f}  x{b / max(a, 1):.2f}")
        print(f"  {'total':<60} {sum(built.values()) / n:7.1f} {sum(churned.values()) / n:7.1f}"
              f"  x{sum(churned.values()) / sum(built.values()):.2f}")
        await conn.close()
    finally:
        await drop_database(admin_url, db.name)
        await drop_database(admin_url, template)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
