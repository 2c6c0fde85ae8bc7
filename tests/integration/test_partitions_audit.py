"""Regression tests from the hostile-input audit of issue 17 (partitions and retention): each failed on
the first version of the change and shows the defect it guards against. Real PostgreSQL, no mocks."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import orjson
import pytest
from multidict import MultiDict

from hookstream.api.deliveries import build_log_query
from hookstream.api.errors import ApiError
from hookstream.api.params import encode_cursor
from hookstream.core.db import migrate
from hookstream.core.partitions import day_of, day_start, ensure_partitions, expire_partitions
from hookstream.core.publish import make_event
from hookstream.router.router import _STORE_BATCH_SQL
from hookstream.sender.retries import _CLAIM_DUE_RETRIES_SQL
from tests.support import (
    create_database,
    database_at_version,
    drop_database,
    make_org,
    make_webhook,
    unique_id,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DAY = dt.timedelta(days=1)
RETENTION_S = 30 * 86400.0


def _batch(org: str, hook: str, event_id: str, offset: int) -> list:
    now = dt.datetime.now(dt.UTC)
    return [[org], [event_id], ["order.created"], ["s1"], [now], ["{}"], ["aiq.orders"], [0], [offset],
            [hook], [org], [event_id], [None]]


async def test_a_record_stored_by_a_router_still_committing_is_handed_back_as_a_replay(database_url, db):
    """Rebalance: router A stores a record and has not committed; router B (the partition's new owner)
    stores the same record. B waits for A's commit and must get A's delivery back as a replay, so it
    enqueues it should A die before producing its task (with nothing back, the delivery would stay in
    flight with no task, for ever)."""
    org, _ = await make_org(db, "Shop", stores=("s1",))
    hook, _ = await make_webhook(db, org, "https://example.com/x", store_ids=["s1"])
    a, b = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        tx = a.transaction()
        await tx.start()
        stored = await a.fetch(_STORE_BATCH_SQL, *_batch(org, hook, "evt_rebalance", 42))
        seq_or_id = [r["id"] for r in stored if r["id"] is not None]
        assert seq_or_id
        other = asyncio.create_task(b.fetch(_STORE_BATCH_SQL, *_batch(org, hook, "evt_rebalance", 42)))
        await asyncio.sleep(0.3)
        await tx.commit()
        rows = await other
    finally:
        await a.close()
        await b.close()
    # B must learn about the event (a replay row, or the delivery itself), to enqueue it if needed
    assert rows, "router B got no row at all for the record: its delivery can be lost"


async def test_an_event_is_kept_while_a_later_days_pending_delivery_needs_it(db):
    """A replay on a later day adds a delivery (a webhook that matches now) on that day for an event of
    the day before; retention must keep that event, or the retry pump (which joins events) could
    never claim the delivery again."""
    now = dt.datetime.now(dt.UTC)
    first = day_start(day_of(now)) - 40 * DAY
    await ensure_partitions(db, first, ahead_days=1)
    org, _ = await make_org(db, "Shop", stores=("s1",))
    hook, _ = await make_webhook(db, org, "https://example.com/x", store_ids=["s1"])
    seq = await db.fetchval(
        "INSERT INTO events (seq, organization_id, event_id, event_type, store_id, occurred_at, body, source_topic,"
        " source_partition, source_offset, received_at) VALUES (hookstream_id('events_seq_seq', $1), $2, 'evt_x',"
        " 'order.created', 's1', $1, '{}', 't', 0, 0, $1) RETURNING seq", first + dt.timedelta(hours=23), org)
    later = first + DAY + dt.timedelta(minutes=1)
    await db.execute(
        "INSERT INTO deliveries (id, webhook_id, event_seq, event_id, event_type, store_id, created_at, attempts,"
        " next_attempt_at, next_retry_index) VALUES (hookstream_id('deliveries_id_seq', $1), $2, $3, 'evt_x',"
        " 'order.created', 's1', $1, 1, now() - interval '1 second', 1)", later, hook, seq)
    assert len(await db.fetch(_CLAIM_DUE_RETRIES_SQL, 10, [])) == 1
    await expire_partitions(db, now, RETENTION_S)
    assert len(await db.fetch(_CLAIM_DUE_RETRIES_SQL, 10, [])) == 1, "the pending retry can no longer be claimed"


async def test_the_keys_of_events_stored_before_the_migration_last_the_retention(infra_env):
    """The keys of the events stored before 0006 stay until the retention has passed since the migration
    (filed in the span before it, they were dropped up to 7 days early)."""
    admin_url = infra_env["DATABASE_URL"]
    name = unique_id("hs_v5_")
    url = await create_database(admin_url, name)
    try:
        await database_at_version(url, 5)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "INSERT INTO events (organization_id, event_id, event_type, store_id, occurred_at, body, source_topic,"
                " source_partition, source_offset) VALUES ('o', 'evt_old', 'order.created', 's1', now(), '{}', 't', 0, 1)")
            await migrate(url)
            migrated = await conn.fetchval("SELECT applied_at FROM schema_migrations WHERE version = 6")
            await expire_partitions(conn, migrated + dt.timedelta(seconds=RETENTION_S) - dt.timedelta(hours=1),
                                    RETENTION_S)
            assert await conn.fetchval("SELECT count(*) FROM event_keys WHERE event_id = 'evt_old'") == 1
        finally:
            await conn.close()
    finally:
        await drop_database(admin_url, name)


async def test_a_cursor_at_the_end_of_time_is_not_a_server_error(db):
    """A cursor is base64 JSON the client can write; a time at datetime.max or .min would reach PostgreSQL
    as +-infinity, where hookstream_day() raises (a 500): such a cursor is a 400 invalid_cursor."""
    org, _ = await make_org(db, "Shop", stores=("s1",))
    hook, _ = await make_webhook(db, org, "https://example.com/x", store_ids=["s1"])
    for end in (dt.datetime.max, dt.datetime.min):
        cursor = encode_cursor("d", end.replace(tzinfo=dt.UTC), 5)
        with pytest.raises(ApiError) as refused:
            build_log_query(hook, org, MultiDict({"cursor": cursor}), 10)
        assert (refused.value.status, refused.value.code) == (400, "invalid_cursor")
    # the last microsecond before the end still reads a page (of nothing newer than it)
    cursor = encode_cursor("d", (dt.datetime.max - dt.timedelta(microseconds=1)).replace(tzinfo=dt.UTC), 5)
    sql, args = build_log_query(hook, org, MultiDict({"cursor": cursor}), 10)
    assert await db.fetch(sql, *args) == []


@pytest.mark.parametrize("same_record", [True, False])
async def test_store_batch_hands_back_what_another_router_keyed_meanwhile(database_url, db, same_record):
    """Through ``store_batch``: router B stores a record while router A, which stored the same event id,
    has not committed. The same record (a rebalance) comes back to B as a replay, its delivery to be
    enqueued again; another record with that id (a second publish) is counted as one and routes nothing."""
    from hookstream.core.validation import validate_event
    from hookstream.router.router import SourceRecord, store_batch

    org, _ = await make_org(db, "Shop", stores=("s1",))
    hook, _ = await make_webhook(db, org, "https://example.com/x", store_ids=["s1"])
    raw = orjson.dumps(make_event("order.created", organization_id=org, store_id="s1", event_id="evt_raced",
                                  data={"order": {"id": "o1"}}))
    event = validate_event(raw)
    a, b = await asyncpg.connect(database_url), await asyncpg.connect(database_url)
    try:
        tx = a.transaction()
        await tx.start()
        mine, _ = await store_batch(a, [(SourceRecord("aiq.orders", 0, 7, None, raw, ()), event, raw.decode())],
                                    [(hook, event)])
        record = SourceRecord("aiq.orders", 0, 7 if same_record else 8, None, raw, ())
        other = asyncio.create_task(store_batch(b, [(record, event, raw.decode())], [(hook, event)]))
        await asyncio.sleep(0.3)
        await tx.commit()
        rows, second_publishes = await other
    finally:
        await a.close()
        await b.close()
    if same_record:
        assert [(r["id"], r["first_in_flight"]) for r in rows] == [(mine[0]["id"], True)] and second_publishes == 0
    else:
        assert (rows, second_publishes) == ([], 1)
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE event_id = 'evt_raced'") == 1
