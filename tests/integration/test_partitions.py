"""The delivery log's day partitions and retention (issue 17), on the real PostgreSQL: the migration
from schema 1 keeps existing data, partitions are made ahead across a day boundary (the clock is
injected), retention drops only whole expired days and never an unfinished delivery while the
pipeline keeps delivering, idempotency holds across the key spans, and the API's queries read only
the partitions their time range covers (EXPLAIN)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re

import asyncpg
import pytest

from hookstream.api.deliveries import build_log_query
from hookstream.api.explorer import build_events_query
from hookstream.api.params import encode_cursor
from hookstream.core import partitions
from hookstream.core.db import migrate
from hookstream.core.partitions import DAY_SHIFT, day_of, day_start, ensure_partitions, expire_partitions
from tests.receiver import Receiver
from tests.support import (
    create_database,
    database_at_version,
    drop_database,
    make_org,
    make_webhook,
    publish_events,
    sample_event,
    unique_id,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DAY = dt.timedelta(days=1)
RETENTION_S = 30 * 86400.0


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def partition_names(conn: asyncpg.Connection, table: str) -> set[str]:
    return {p.name for p in await partitions.list_partitions(conn, table)}


def day_name(table: str, at: dt.datetime) -> str:
    return f"{table}_{day_start(day_of(at)):%Y%m%d}"


async def insert_delivery(conn: asyncpg.Connection, webhook_id: str, org_id: str, at: dt.datetime, event_id: str, *,
                          status: str = "succeeded", due: dt.datetime | None = None) -> int:
    """An event, its delivery and one attempt as the pipeline stores them on the day of ``at`` (ids of
    that day). A pending one waits for its first retry at ``due``."""
    body = json.dumps(sample_event("order.created", org_id, "s1", 1, event_id=event_id))
    seq = await conn.fetchval(
        "INSERT INTO events (seq, organization_id, event_id, event_type, store_id, occurred_at, body, source_topic,"
        " source_partition, source_offset, received_at)"
        " VALUES (hookstream_id('events_seq_seq', $1), $2, $3, 'order.created', 's1', $1, $4, 'test', 0, 0, $1)"
        " RETURNING seq", at, org_id, event_id, body)
    pending = status == "pending"
    delivery_id = await conn.fetchval(
        "INSERT INTO deliveries (id, webhook_id, event_seq, event_id, event_type, store_id, created_at, status,"
        " attempts, last_attempt_at, last_http_status, finished_at, next_attempt_at, next_retry_index, in_flight,"
        " issued_attempt)"
        " VALUES (hookstream_id('deliveries_id_seq', $1), $2, $3, $4, 'order.created', 's1', $1, $5, 1, $1, $6,"
        " $7, $8, $9, false, 1) RETURNING id",
        at, webhook_id, seq, event_id, status, 503 if pending else 200, None if pending else at,
        due if pending else None, 1 if pending else None)
    await conn.execute(
        "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, http_status, outcome)"
        " VALUES ($1, 1, $2, 12.5, $3, $4)", delivery_id, at, 503 if pending else 200,
        "retrying" if pending else status)
    return delivery_id


async def test_migrating_from_schema_1_keeps_every_row_and_the_log_reads_it(infra_env):
    admin_url = infra_env["DATABASE_URL"]
    name = unique_id("hs_v1_")
    url = await create_database(admin_url, name)
    try:
        await database_at_version(url, 1)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("INSERT INTO organizations (id, name) VALUES ('org_v1', 'Old')")
            await conn.execute(
                "INSERT INTO webhooks (id, organization_id, url, event_types, store_ids, secret)"
                " VALUES ('wh_v1', 'org_v1', 'https://example.com/h', ARRAY['order.created'], ARRAY['s1'], 'c2VjcmV0')")
            for n in range(20):
                seq = await conn.fetchval(
                    "INSERT INTO events (organization_id, event_id, event_type, store_id, occurred_at, body,"
                    " source_topic, source_partition, source_offset, received_at)"
                    " VALUES ('org_v1', $1, 'order.created', 's1', now(), '{}', 'aiq.orders', 0, $2,"
                    " now() - $3 * interval '1 hour') RETURNING seq", f"evt_old_{n}", n, n)
                delivery = await conn.fetchval(
                    "INSERT INTO deliveries (webhook_id, event_seq, event_id, event_type, store_id, created_at, status,"
                    " attempts) SELECT 'wh_v1', seq, event_id, event_type, store_id, received_at, $2, 1"
                    " FROM events WHERE seq = $1 RETURNING id", seq, "failed" if n % 5 == 0 else "succeeded")
                await conn.execute(
                    "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, http_status, outcome)"
                    " VALUES ($1, 1, now(), 3.0, 200, 'succeeded')", delivery)
            before = await conn.fetch("SELECT id, event_id, status, created_at FROM deliveries ORDER BY id")
        finally:
            await conn.close()

        applied = await migrate(url)
        assert applied[-1] == "0006_partitions" and applied[0] == "0002_in_flight_and_manual_requests"

        conn = await asyncpg.connect(url)
        try:
            after = await conn.fetch("SELECT id, event_id, status, created_at FROM deliveries ORDER BY id")
            assert after == before  # same ids, same rows
            assert await conn.fetchval("SELECT count(*) FROM attempts") == 20
            assert await conn.fetchval("SELECT count(*) FROM deliveries_legacy") == 20
            # the stored events stay deduplicated: each has its idempotency key
            assert await conn.fetchval("SELECT count(*) FROM event_keys WHERE organization_id = 'org_v1'") == 20
            # the delivery log reads the old rows, newest first, the status filter included
            sql, args = build_log_query("wh_v1", "org_v1", {"status": "failed"}, 50)
            rows = await conn.fetch(sql, *args)
            assert [r["event_id"] for r in rows] == [f"evt_old_{n}" for n in (0, 5, 10, 15)]
            # a since/until range over old rows finds them (legacy ids are always in range)
            sql, args = build_log_query("wh_v1", "org_v1", {"since": (utc_now() - dt.timedelta(hours=3)).isoformat(),
                                                            "until": utc_now().isoformat()}, 50)
            assert len(await conn.fetch(sql, *args)) == 3
            # new rows get ids of today's partition
            seq = await conn.fetchval(
                "INSERT INTO events (organization_id, event_id, event_type, store_id, occurred_at, body, source_topic,"
                " source_partition, source_offset) VALUES ('org_v1', 'evt_new', 'order.created', 's1', now(), '{}',"
                " 't', 0, 0) RETURNING seq")
            assert seq >> DAY_SHIFT == day_of(utc_now())
            assert await conn.fetchval("SELECT tableoid::regclass::text FROM events WHERE seq = $1", seq) == \
                day_name("events", utc_now())
        finally:
            await conn.close()
        assert await migrate(url) == []  # up to date; running it again changes nothing
    finally:
        await drop_database(admin_url, name)


async def test_partitions_are_made_ahead_across_a_day_boundary(db):
    today = day_start(day_of(utc_now()))
    before_midnight = today + 9 * DAY - dt.timedelta(seconds=10)
    made = await ensure_partitions(db, before_midnight)
    # the migration made today and 3 days ahead; at 23:59:50 eight days on, that day and 3 more are made
    for offset in range(8, 12):
        assert day_name("deliveries", today + offset * DAY) in made
        assert day_name("attempts", today + offset * DAY) in made
        assert day_name("events", today + offset * DAY) in made
    assert day_name("deliveries", today + 12 * DAY) not in await partition_names(db, "deliveries")
    after_midnight = before_midnight + dt.timedelta(seconds=20)
    made = await ensure_partitions(db, after_midnight)
    assert sorted(made) == sorted(f"{t}_{today + 12 * DAY:%Y%m%d}" for t in ("events", "deliveries", "attempts"))
    assert await ensure_partitions(db, after_midnight) == []  # nothing twice
    # a row created just after midnight lands in that day's partition, which existed before it
    org, _ = await make_org(db, "Org", stores=("s1",))
    hook, _ = await make_webhook(db, org, "https://example.com/x", store_ids=["s1"])
    delivery = await insert_delivery(db, hook, org, after_midnight, "evt_midnight")
    assert await db.fetchval("SELECT tableoid::regclass::text FROM deliveries WHERE id = $1", delivery) == \
        day_name("deliveries", after_midnight)
    assert await db.fetchval("SELECT tableoid::regclass::text FROM attempts WHERE delivery_id = $1", delivery) == \
        day_name("attempts", after_midnight)
    # an id whose day disagrees with created_at is refused, naming the rule
    with pytest.raises(asyncpg.CheckViolationError, match="deliveries_id_day"):
        await db.execute("UPDATE deliveries SET created_at = created_at - interval '2 days' WHERE id = $1", delivery)


async def test_retention_drops_whole_old_days_keeps_unfinished_deliveries_and_delivery_goes_on(
        db, database_url, hs_settings, spawn):
    now = utc_now()
    # whole minutes after the start of their days, so every row of one of them is on the same day
    today = day_start(day_of(now))
    old, older, recent = today - 35 * DAY, today - 40 * DAY, today - 5 * DAY
    await ensure_partitions(db, older, ahead_days=40)
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Shop", stores=("s1",))
        hook, _ = await make_webhook(db, org, receiver.url("/shop"), event_types=["order.created"], store_ids=["s1"])
        for n in range(5):
            await insert_delivery(db, hook, org, older + n * dt.timedelta(minutes=1), f"evt_older_{n}")
            await insert_delivery(db, hook, org, old + n * dt.timedelta(minutes=1), f"evt_old_{n}")
            await insert_delivery(db, hook, org, recent + n * dt.timedelta(minutes=1), f"evt_recent_{n}")
        # still retrying 35 days on (e.g. behind an ordered queue of a failing endpoint)
        waiting = await insert_delivery(db, hook, org, old + dt.timedelta(seconds=30), "evt_old_waiting", status="pending",
                                        due=now + dt.timedelta(hours=1))
        # their own upkeep passes keep everything: the passes under test are the ones called here
        keep = {"HOOKSTREAM_RETENTION": "3650d"}
        spawn("router", env=keep)
        spawn("sender", env=keep)
        flowing = [sample_event("order.created", org, "s1", n, event_id=f"evt_live_{n}") for n in range(60)]
        await publish_events(hs_settings, flowing[:30])

        result = await expire_partitions(db, now, RETENTION_S)
        await publish_events(hs_settings, flowing[30:])

        assert set(result.dropped) >= {day_name(t, older) for t in ("events", "deliveries", "attempts")}
        assert result.rewritten == [day_name("deliveries", old)]
        assert result.kept_unfinished == 1
        names = await partition_names(db, "deliveries")
        assert day_name("deliveries", older) not in names
        assert {day_name("deliveries", old), day_name("deliveries", recent)} <= names
        kept = await db.fetch("SELECT event_id FROM deliveries WHERE created_at < $1", now - 30 * DAY)
        assert [r["event_id"] for r in kept] == ["evt_old_waiting"]  # only the unfinished one is left of those days
        assert await db.fetchval("SELECT count(*) FROM attempts WHERE delivery_id = $1", waiting) == 1
        assert await db.fetchval("SELECT count(*) FROM deliveries WHERE event_id LIKE 'evt_recent_%'") == 5

        # the kept delivery still works end to end: its retry comes due and is delivered
        await db.execute("UPDATE deliveries SET next_attempt_at = now() WHERE id = $1", waiting)
        await wait_for(lambda: db.fetchval("SELECT status = 'succeeded' FROM deliveries WHERE id = $1", waiting),
                       timeout_s=60, message="the kept delivery's retry to succeed")
        await wait_for(lambda: len({r.headers["webhook-id"] for r in receiver.at("/shop")}) >= 61, timeout_s=60,
                       message="every live event and the kept retry to arrive")
        got = {r.headers["webhook-id"] for r in receiver.at("/shop")}
        assert got == {e["id"] for e in flowing} | {"evt_old_waiting"}

        # once it has finished, the next pass drops its day
        result = await expire_partitions(db, now, RETENTION_S)
        assert set(result.dropped) == {day_name(t, old) for t in ("events", "deliveries", "attempts")}
        assert result.kept_unfinished == 0
        assert await db.fetchval("SELECT count(*) FROM deliveries WHERE event_id LIKE 'evt_live_%'") == 60


async def test_a_redelivery_asked_for_before_the_pass_keeps_its_delivery(db):
    """The pending count is taken under the pass's lock: a finished delivery made pending again (a
    redelivery) before the pass is kept, never dropped with its day."""
    now = utc_now()
    old = now - 33 * DAY
    await ensure_partitions(db, old, ahead_days=1)
    org, _ = await make_org(db, "Shop", stores=("s1",))
    hook, _ = await make_webhook(db, org, "https://example.com/x", store_ids=["s1"])
    redelivered = await insert_delivery(db, hook, org, old, "evt_redelivered")
    await insert_delivery(db, hook, org, old + dt.timedelta(minutes=5), "evt_done")
    await db.execute("UPDATE deliveries SET status = 'pending', manual_due_at = now() WHERE id = $1", redelivered)
    result = await expire_partitions(db, now, RETENTION_S)
    assert result.rewritten == [day_name("deliveries", old)]
    assert await db.fetchval("SELECT event_id FROM deliveries WHERE created_at < $1", now - 30 * DAY) == \
        "evt_redelivered"


async def test_a_second_publish_is_left_out_when_the_first_is_in_an_older_key_span(db, hs_settings, spawn):
    # a database older than its migration's week: no legacy key partition, one per week
    await db.execute("ALTER TABLE event_keys DETACH PARTITION event_keys_legacy")
    await db.execute("DROP TABLE event_keys_legacy")
    await ensure_partitions(db, utc_now() - 7 * DAY, ahead_days=10)
    this_week = partitions.span_of(utc_now())

    def span_partition(span: int) -> str:
        return f"event_keys_{day_start(span * partitions.SPAN_DAYS):%Y%m%d}"

    async with Receiver() as receiver:
        org, _ = await make_org(db, "Shop", stores=("s1",))
        await make_webhook(db, org, receiver.url("/shop"), event_types=["order.created"], store_ids=["s1"])
        spawn("router")
        spawn("sender")
        first = sample_event("order.created", org, "s1", 1, event_id="evt_twice")
        await publish_events(hs_settings, [first])
        await wait_for(lambda: receiver.at("/shop"), timeout_s=60, message="the first publish to arrive")
        where = "SELECT tableoid::regclass::text FROM event_keys WHERE event_id = 'evt_twice'"
        assert await db.fetchval(where) == span_partition(this_week)
        # as if the first publish had come last week: its key moves to last week's partition
        assert await db.execute("UPDATE event_keys SET span = span - 1 WHERE event_id = 'evt_twice'") == "UPDATE 1"
        assert await db.fetchval(where) == span_partition(this_week - 1)
        marker = sample_event("order.created", org, "s1", 2, event_id="evt_after")
        await publish_events(hs_settings, [first, marker])
        await wait_for(lambda: any(r.headers["webhook-id"] == "evt_after" for r in receiver.at("/shop")),
                       timeout_s=60, message="the event published after the second copy to arrive")
        assert [r.headers["webhook-id"] for r in receiver.at("/shop")].count("evt_twice") == 1
        assert await db.fetchval("SELECT count(*) FROM deliveries WHERE event_id = 'evt_twice'") == 1
        assert await db.fetchval("SELECT count(*) FROM events WHERE event_id = 'evt_twice'") == 1


def scanned_partitions(plan: list[asyncpg.Record], table: str, alias: str) -> set[str]:
    """The partitions of ``table`` a plan reads under ``alias`` ("... on deliveries_20261202 d_1"). (The
    log's ``waiting_behind`` sub-select lists every partition: it finds one row by id, pruned as it runs.)"""
    text = "\n".join(row[0] for row in plan)
    return set(re.findall(rf"\bon ({table}_[a-z0-9]+) {alias}(?:_\d+)?\b", text))


async def test_the_api_queries_read_only_the_partitions_of_their_time_range(db):
    now = utc_now()
    await ensure_partitions(db, now - 10 * DAY, ahead_days=10)
    org, _ = await make_org(db, "Shop", stores=("s1",))
    hook, _ = await make_webhook(db, org, "https://example.com/x", store_ids=["s1"])
    base = day_start(day_of(now)) + dt.timedelta(minutes=30)  # 00:30 today
    for days_ago in range(10):
        await insert_delivery(db, hook, org, base - days_ago * DAY, f"evt_{days_ago}")
    await db.execute("ANALYZE")
    target = base - 4 * DAY
    since, until = target - dt.timedelta(minutes=20), target + dt.timedelta(minutes=20)
    window = {"since": since.isoformat(), "until": until.isoformat()}
    expected_days = {day_name("deliveries", target), "deliveries_legacy"}

    sql, args = build_log_query(hook, org, window, 50)
    plan = await db.fetch("EXPLAIN " + sql, *args)
    assert scanned_partitions(plan, "deliveries", "d") == expected_days
    # a whole day, midnight to midnight (until is exclusive): that day only
    whole_day = {"since": day_start(day_of(target)).isoformat(), "until": day_start(day_of(target) + 1).isoformat()}
    sql_day, args_day = build_log_query(hook, org, whole_day, 50)
    assert scanned_partitions(await db.fetch("EXPLAIN " + sql_day, *args_day), "deliveries", "d") == expected_days
    assert [r["event_id"] for r in await db.fetch(sql, *args)] == ["evt_4"]

    # the keyset cursor of a later page bounds the ids too: newer days are skipped
    sql, args = build_log_query(hook, org, {}, 2)
    first_page = await db.fetch(sql, *args)
    cursor = encode_cursor("d", first_page[1]["created_at"], first_page[1]["id"])
    sql, args = build_log_query(hook, org, {"cursor": cursor}, 2)
    later_page = scanned_partitions(await db.fetch("EXPLAIN " + sql, *args), "deliveries", "d")
    assert day_name("deliveries", now) not in later_page and day_name("deliveries", now - DAY) in later_page
    assert [r["event_id"] for r in await db.fetch(sql, *args)] == ["evt_2", "evt_3", "evt_4"]  # a page and one more

    sql, args = build_events_query(org, window, 50)
    plan = await db.fetch("EXPLAIN " + sql, *args)
    assert scanned_partitions(plan, "events", "e") == {day_name("events", target), "events_legacy"}
    assert [r["event_id"] for r in await db.fetch(sql, *args)] == ["evt_4"]

    # a delivery found by id (the sender's outcomes, the retry pump) is read from its own day only
    delivery = await db.fetchval("SELECT id FROM deliveries WHERE event_id = 'evt_7'")
    plan = await db.fetch("EXPLAIN UPDATE deliveries SET attempts = attempts WHERE id = $1", delivery)
    assert scanned_partitions(plan, "deliveries", "deliveries") == {day_name("deliveries", now - 7 * DAY)}


async def test_a_day_with_more_pending_than_the_rewrite_cap_is_kept_whole(db, monkeypatch):
    """A tenant's long queue of unfinished deliveries is never copied under the lock that every other
    tenant's outcomes wait for: past the cap the day stays as it is, nothing dropped."""
    monkeypatch.setattr(partitions, "REWRITE_MAX_PENDING", 2)
    now = utc_now()
    old = day_start(day_of(now)) - 33 * DAY
    await ensure_partitions(db, old, ahead_days=0)
    org, _ = await make_org(db, "Shop", stores=("s1",))
    hook, _ = await make_webhook(db, org, "https://example.com/x", store_ids=["s1"])
    for n in range(3):
        await insert_delivery(db, hook, org, old + n * dt.timedelta(minutes=1), f"evt_queued_{n}", status="pending",
                              due=now + DAY)
    await insert_delivery(db, hook, org, old + dt.timedelta(minutes=9), "evt_finished")
    result = await expire_partitions(db, now, RETENTION_S)
    assert (result.rewritten, result.kept_unfinished) == ([], 3)
    assert day_name("deliveries", old) not in result.dropped
    assert await db.fetchval(f"SELECT count(*) FROM {day_name('deliveries', old)}") == 4
    # once the queue is within the cap, the finished rows are let go
    await db.execute("UPDATE deliveries SET status = 'failed', finished_at = now() WHERE event_id = 'evt_queued_0'")
    result = await expire_partitions(db, now, RETENTION_S)
    assert (result.rewritten, result.kept_unfinished) == ([day_name("deliveries", old)], 2)
    assert await db.fetchval(f"SELECT count(*) FROM {day_name('deliveries', old)}") == 2


async def test_a_pass_blocked_by_a_long_query_gives_up_and_the_next_one_drops(db, database_url, monkeypatch):
    """Behind a long query the upkeep never queues for its locks (NOWAIT: the pipeline's statements
    would queue behind it), tries a few times, and leaves the day for the next pass."""
    now = utc_now()
    old = day_start(day_of(now)) - 31 * DAY
    await ensure_partitions(db, old, ahead_days=0)
    org, _ = await make_org(db, "Shop", stores=("s1",))
    hook, _ = await make_webhook(db, org, "https://example.com/x", store_ids=["s1"])
    await insert_delivery(db, hook, org, old, "evt_old")
    reader, watcher = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    monkeypatch.setattr(partitions, "LOCK_ATTEMPTS", 10)
    try:
        async with reader.transaction():
            await reader.fetchval("SELECT count(*) FROM deliveries")  # holds its lock until the end
            upkeep = asyncio.create_task(expire_partitions(db, now, RETENTION_S))
            waiting = []
            while not upkeep.done():  # the upkeep never sits in the lock queue (writers would queue behind it)
                waiting.append(await watcher.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid = $1", db.get_server_pid()))
                await asyncio.sleep(0.01)
            result = await upkeep
            assert len(waiting) > 10 and set(waiting) == {0}
            assert day_name("deliveries", old) in result.busy
            assert day_name("deliveries", old) in await partition_names(db, "deliveries")
    finally:
        await reader.close()
        await watcher.close()
    result = await expire_partitions(db, now, RETENTION_S)
    assert day_name("deliveries", old) in result.dropped and result.busy == []


async def test_the_pipelines_batch_statements_read_only_the_partitions_of_their_ids(db):
    """The sender's outcome and deferral statements and the router's replay look-up join a batch of
    ids: each names them (``= ANY``) so PostgreSQL plans over those ids' days only. Without it the
    planner, which does not count row-by-row pruning, hashed every day's partition (136 ms for 500
    outcomes over 30 days of 20,000 deliveries, against 4.5 ms)."""
    from hookstream.router.router import _REPLAYED_SQL
    from hookstream.sender.outcomes import _DEFER_DELIVERIES_SQL, _RECORD_ATTEMPTS_SQL

    now = utc_now()
    today = day_start(day_of(now))
    await ensure_partitions(db, today - 6 * DAY, ahead_days=6)
    org, _ = await make_org(db, "Shop", stores=("s1",))
    hook, _ = await make_webhook(db, org, "https://example.com/x", store_ids=["s1"])
    made = {days_ago: await insert_delivery(db, hook, org, today - days_ago * DAY + dt.timedelta(hours=1),
                                            f"evt_{days_ago}", status="pending", due=now)
            for days_ago in range(6)}
    ids = [made[1], made[4]]
    expected = {day_name("deliveries", today - DAY), day_name("deliveries", today - 4 * DAY)}
    n = len(ids)

    def days_in(plan: list[asyncpg.Record], table: str) -> set[str]:
        return set(re.findall(rf"\bon ({table}_\d+)\b", "\n".join(row[0] for row in plan)))

    record_args = [ids, [2] * n, [now] * n, [3.0] * n, [200] * n, [None] * n, [None] * n, ["succeeded"] * n,
                   [False] * n, [None] * n, [None] * n, [hook] * n, ["https://example.com/x"] * n, ["{}"] * n,
                   ["[]"] * n, 1]
    assert days_in(await db.fetch("EXPLAIN " + _RECORD_ATTEMPTS_SQL, *record_args), "deliveries") == expected
    defer_args = [ids, [2] * n, [now] * n, [1] * n, [False] * n, [None] * n]
    assert days_in(await db.fetch("EXPLAIN " + _DEFER_DELIVERIES_SQL, *defer_args), "deliveries") == expected
    seqs = [await db.fetchval("SELECT event_seq FROM deliveries WHERE id = $1", i) for i in ids]
    plan = await db.fetch("EXPLAIN " + _REPLAYED_SQL, seqs, min(seqs) >> DAY_SHIFT << DAY_SHIFT)
    assert days_in(plan, "events") == {day_name("events", today - DAY), day_name("events", today - 4 * DAY)}
    # a replay's deliveries are on or after its oldest event's day: the days before it are skipped
    assert day_name("deliveries", today - 5 * DAY) not in days_in(plan, "deliveries")


async def test_the_routers_store_statement_probes_the_event_keys_by_index_whatever_it_was_planned_on(db):
    """The router stores every batch with one generic plan, made once per session and kept (its pool
    forces it: ``db.GENERIC_PLAN_SETTINGS``). That plan must look each input event's key up by the
    primary key. Planned while the keys were few, a join of the batch with ``event_keys`` became a
    sequential scan and a hash of every key, kept for the session's life: the store statement's CPU
    grew with the table (0.65 to 3.5 ms per one-event batch over 6,000 batches; BENCHMARKS.md)."""
    from hookstream.core.db import GENERIC_PLAN_SETTINGS
    from hookstream.router.router import _STORE_BATCH_SQL

    for name, value in GENERIC_PLAN_SETTINGS.items():
        await db.execute(f"SET {name} = '{value}'")
    # a session's first plan, on the fresh database's empty key partitions
    await db.execute("PREPARE store AS " + _STORE_BATCH_SQL)
    text_array = "ARRAY['x']::text[]"
    args = ", ".join([text_array] * 4 + ["ARRAY[now()]", text_array, text_array, "ARRAY[0]", "ARRAY[0::bigint]"]
                     + [text_array] * 4)
    plan = "\n".join(row[0] for row in await db.fetch(f"EXPLAIN (VERBOSE) EXECUTE store({args})"))
    assert "unnest($1), unnest($2)" in plan, plan  # the generic plan: parameters, not the values above
    key_scans = re.findall(r"(\w+(?: Only)? Scan)(?: using \w+)? on public\.event_keys_\w+", plan)
    assert key_scans, plan
    assert set(key_scans) <= {"Index Scan", "Index Only Scan"}, plan
    # each probe is bounded by the input row's organization and event id
    assert re.search(r"Index Cond: \(\(\w+\.organization_id = i\w*\.organization_id\)"
                     r" AND \(\w+\.event_id = i\w*\.event_id\)\)", plan), plan
