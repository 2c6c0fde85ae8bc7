"""Webhook changes reach running router and sender processes without a restart (issue 18): a URL
change, disabling, rotating the secret and deleting, each visible in the next event's delivery,
including right after PostgreSQL restarted under them (the directory's LISTEN connection died)."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import orjson
import pytest

from hookstream.core.kafka import open_producer
from hookstream.core.publish import publish_event
from hookstream.core.signing import generate_secret
from tests import faults
from tests.receiver import Receiver
from tests.support import make_org, make_webhook, sample_event, wait_for

pytestmark = pytest.mark.integration

# The directory follows LISTEN/NOTIFY; a change must show well within its 30 s full-reload interval.
CHANGE_WITHIN_S = 5.0


class Publisher:
    def __init__(self, settings, org: str) -> None:
        self.settings, self.org, self.n = settings, org, 0

    async def one(self) -> str:
        self.n += 1
        event = sample_event("order.created", self.org, "s1", self.n, event_id=f"evt_live_{self.n}")
        async with open_producer(self.settings.kafka_bootstrap_servers) as producer:
            await publish_event(producer, event, self.settings.source_topics)
        return event["id"]


async def arrives(receiver: Receiver, path: str, event_id: str, within_s: float = CHANGE_WITHIN_S):
    def got():
        return [r for r in receiver.at(path) if orjson.loads(r.body)["id"] == event_id]

    [request] = await wait_for(got, timeout_s=within_s, message=f"{event_id} at {path}")
    return request


async def assert_not_sent(receiver: Receiver, db, webhook_id: str, event_id: str) -> None:
    await asyncio.sleep(1.5)
    assert [r for r in receiver.requests if orjson.loads(r.body)["id"] == event_id] == []


async def test_changes_reach_running_processes_also_after_a_postgres_restart(db, database_url, hs_settings, spawn,
                                                                             restore_infra):
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        hook, secret = await make_webhook(db, org, receiver.url("/v1"), event_types=["order.created"],
                                          store_ids=["s1"])
        router, sender = spawn("router"), spawn("sender")
        publish = Publisher(hs_settings, org)
        assert (await arrives(receiver, "/v1", await publish.one(), within_s=30)).verify(secret)

        async def change_and_check(db, round_: str) -> None:
            # the URL
            await db.execute("UPDATE webhooks SET url = $2 WHERE id = $1", hook, receiver.url(f"/{round_}-moved"))
            await asyncio.sleep(1.0)
            await arrives(receiver, f"/{round_}-moved", await publish.one())
            # disabled: the router stops matching it
            await db.execute("UPDATE webhooks SET enabled = false WHERE id = $1", hook)
            await asyncio.sleep(1.0)
            disabled_event = await publish.one()
            await assert_not_sent(receiver, db, hook, disabled_event)
            assert await db.fetchval("SELECT count(*) FROM deliveries WHERE event_id = $1", disabled_event) == 0
            await db.execute("UPDATE webhooks SET enabled = true WHERE id = $1", hook)
            # a rotated secret signs at once, with the old one during its grace period
            new_secret = generate_secret()
            await db.execute(
                "UPDATE webhooks SET previous_secret = secret, secret = $2, previous_secret_expires_at = $3"
                " WHERE id = $1", hook, new_secret, dt.datetime.now(dt.UTC) + dt.timedelta(hours=24))
            await asyncio.sleep(1.0)
            signed = await arrives(receiver, f"/{round_}-moved", await publish.one())
            assert signed.verify(new_secret) and len(signed.headers["webhook-signature"].split(" ")) == 2

        await change_and_check(db, "before")
        restore_infra.add("postgres")
        async with faults.postgres_stopped():
            await asyncio.sleep(3)
        restore_infra.discard("postgres")
        conn = await asyncpg.connect(database_url)  # the test's own connection died with the server
        try:
            await change_and_check(conn, "after")
            # deleted: nothing more is sent
            await conn.execute("DELETE FROM webhooks WHERE id = $1", hook)
            await asyncio.sleep(1.0)
            await assert_not_sent(receiver, conn, hook, await publish.one())
        finally:
            await conn.close()
        faults.assert_alive(router, sender)
