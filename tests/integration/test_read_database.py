"""DATABASE_READ_URL (issue 17, read scaling): a real ``hookstream api`` whose delivery-log views read a
second database, while authentication, the webhook check, webhooks and every write stay on DATABASE_URL.

The second database stands in for a streaming replica: a database of its own on the same PostgreSQL
server, migrated like the main one, holding an event and its delivery that the main database does not
have. The delivery log answering with them proves where the reads go.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from hookstream.core.db import migrate
from tests.support import (
    api_ready,
    create_database,
    drop_database,
    make_org,
    make_webhook,
    unique_id,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def read_url(infra_env) -> AsyncIterator[str]:
    """A second database on the test server, migrated from scratch; dropped afterwards."""
    admin_url = infra_env["DATABASE_URL"]
    name = unique_id("hs_read_")
    url = await create_database(admin_url, name)
    try:
        await migrate(url)
        yield url
    finally:
        await drop_database(admin_url, name)



async def insert_delivery(conn: asyncpg.Connection, org_id: str, webhook_id: str, event_id: str) -> None:
    """One event and its succeeded delivery, with only the columns every schema version has (the ids
    are the database's own)."""
    await conn.execute(
        """
        WITH ev AS (
            INSERT INTO events (organization_id, event_id, event_type, store_id, occurred_at, body,
                                source_topic, source_partition, source_offset)
            VALUES ($1, $2, 'order.created', 's1', now(), '{}', 'test', 0, 0)
            RETURNING seq, event_id, event_type, store_id)
        INSERT INTO deliveries (webhook_id, event_seq, event_id, event_type, store_id, status, attempts)
        SELECT $3, seq, event_id, event_type, store_id, 'succeeded', 1 FROM ev
        """, org_id, event_id, webhook_id)


async def test_the_delivery_log_reads_the_read_database_and_writes_go_to_the_main_one(db, hs_env, spawn, read_url):
    org_id, key = await make_org(db, "Org", stores=("s1",))
    spawn("api", env={"DATABASE_READ_URL": read_url})
    api = f"http://{hs_env['HOOKSTREAM_API_LISTEN']}"
    await wait_for(lambda: api_ready(api), timeout_s=30, message="api ready")
    read_db = await asyncpg.connect(read_url)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
            # Created through the API: in the main database only (the "replica" here never catches up).
            async with http.post(f"{api}/v1/webhooks", json={"url": "https://example.com/hook",
                                                             "event_types": ["order.created"],
                                                             "store_ids": ["s1"]}) as r:
                assert r.status == 201, await r.text()
                hook_id = (await r.json())["id"]
            assert await db.fetchval("SELECT count(*) FROM webhooks WHERE id = $1", hook_id) == 1
            assert await read_db.fetchval("SELECT count(*) FROM webhooks") == 0
            # The webhook is checked on the main database: a webhook the replica does not have yet has
            # an empty log, not a 404.
            async with http.get(f"{api}/v1/webhooks/{hook_id}/events") as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["data"] == []

            # The same organization and webhook in the read database, with a delivery only it has.
            event_id = f"evt_replica_{secrets.token_hex(4)}"
            await read_db.execute("INSERT INTO organizations (id, name) VALUES ($1, 'Org')", org_id)
            await make_webhook(read_db, org_id, "https://example.com/hook", event_types=["order.created"],
                               store_ids=["s1"], webhook_id=hook_id)
            await insert_delivery(read_db, org_id, hook_id, event_id)
            await read_db.execute(
                "INSERT INTO webhook_stats_hourly (webhook_id, hour, shard, attempts, succeeded)"
                " VALUES ($1, date_trunc('hour', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', 0, 3, 2)", hook_id)
            assert await db.fetchval("SELECT count(*) FROM deliveries") == 0
            assert await db.fetchval("SELECT count(*) FROM events") == 0

            # The delivery log, its attempts, the events explorer and the health stats read it.
            async with http.get(f"{api}/v1/webhooks/{hook_id}/events") as r:
                assert r.status == 200, await r.text()
                [delivery] = (await r.json())["data"]
            assert (delivery["event_id"], delivery["status"], delivery["attempts"]) == (event_id, "succeeded", 1)
            async with http.get(f"{api}/v1/webhooks/{hook_id}/events", params={"status": "succeeded"}) as r:
                assert [d["event_id"] for d in (await r.json())["data"]] == [event_id]
            async with http.get(f"{api}/v1/webhooks/{hook_id}/events/{event_id}/attempts") as r:
                assert r.status == 200, await r.text()  # the delivery is found (main has none): no attempts
                assert (await r.json())["data"] == []
            async with http.get(f"{api}/v1/webhooks/{hook_id}/events/{event_id}/attempts/1") as r:
                assert r.status == 404 and (await r.json())["error"]["message"] == "attempt not found"
            async with http.get(f"{api}/v1/events") as r:
                assert r.status == 200, await r.text()
                [event] = (await r.json())["data"]
            assert event["event_id"] == event_id
            assert [(d["webhook_id"], d["status"]) for d in event["deliveries"]] == [(hook_id, "succeeded")]
            async with http.get(f"{api}/v1/webhooks/{hook_id}/stats") as r:
                assert r.status == 200, await r.text()
                stats = await r.json()
            assert (stats["attempts"], stats["succeeded"], stats["failed"]) == (3, 2, 1)

            # Writes go to the main database, and what the user wrote reads back at once.
            async with http.patch(f"{api}/v1/webhooks/{hook_id}", json={"description": "edited"}) as r:
                assert r.status == 200, await r.text()
            async with http.get(f"{api}/v1/webhooks/{hook_id}") as r:
                assert (await r.json())["description"] == "edited"
            assert await db.fetchval("SELECT description FROM webhooks WHERE id = $1", hook_id) == "edited"
            assert await read_db.fetchval("SELECT description FROM webhooks WHERE id = $1", hook_id) == ""
            async with http.post(f"{api}/v1/webhooks", json={"url": "https://example.com/second",
                                                             "event_types": ["order.created"],
                                                             "store_ids": ["s1"]}) as r:
                assert r.status == 201, await r.text()
                second_id = (await r.json())["id"]
            assert await db.fetchval("SELECT url FROM webhooks WHERE id = $1", second_id) == "https://example.com/second"
            assert await read_db.fetchval("SELECT count(*) FROM webhooks WHERE id = $1", second_id) == 0
            async with http.get(f"{api}/v1/webhooks") as r:
                assert {w["id"] for w in (await r.json())["data"]} == {hook_id, second_id}
            # A redelivery is a write: it looks for the event in the main database, which has none.
            async with http.post(f"{api}/v1/webhooks/{hook_id}/events/{event_id}/redeliver") as r:
                assert r.status == 404, await r.text()
            assert await read_db.fetchval("SELECT status FROM deliveries WHERE event_id = $1", event_id) == "succeeded"
    finally:
        await read_db.close()


async def test_a_malformed_database_read_url_stops_start_up_naming_it(spawn):
    proc = spawn("api", env={"DATABASE_READ_URL": "mysql://reader:hunter2@replica/hs"})
    assert proc.proc is not None
    assert proc.proc.wait(30) == 2
    output = proc.output()
    assert "DATABASE_READ_URL" in output and "expected postgresql://" in output, output
    assert "hunter2" not in output
