"""The routers' and senders' in-memory webhook view follows database changes within a second."""

from __future__ import annotations

import time

import pytest

from hookstream.core.webhooks import WebhookDirectory
from tests.support import make_org, make_webhook, wait_for

pytestmark = pytest.mark.integration


async def test_create_change_disable_delete_take_effect_within_a_second(db, database_url):
    org, _ = await make_org(db, "Org", stores=("s1", "s2"))
    async with WebhookDirectory(database_url) as one, WebhookDirectory(database_url) as two:
        started = time.monotonic()
        hook_id, _ = await make_webhook(db, org, "https://example.com/h", event_types=["order.created"],
                                        store_ids=["s1"])
        for replica in (one, two):
            await wait_for(lambda r=replica: [h.id for h in r.match(org, "order.created", "s1")] == [hook_id],
                           timeout_s=1.0, message="the new webhook in every replica")
        print(f"created -> visible in {time.monotonic() - started:.3f}s")

        await db.execute("UPDATE webhooks SET store_ids = '{s2}', url = 'https://example.com/v2' WHERE id = $1",
                         hook_id)
        for replica in (one, two):
            await wait_for(lambda r=replica: r.match(org, "order.created", "s1") == []
                           and [h.url for h in r.match(org, "order.created", "s2")] == ["https://example.com/v2"],
                           timeout_s=1.0, message="the changed webhook")

        await db.execute("UPDATE webhooks SET enabled = false WHERE id = $1", hook_id)
        for replica in (one, two):
            await wait_for(lambda r=replica: r.match(org, "order.created", "s2") == [], timeout_s=1.0,
                           message="the disabled webhook to stop matching")
            assert replica.get(hook_id) is not None and not replica.get(hook_id).enabled

        await db.execute("DELETE FROM webhooks WHERE id = $1", hook_id)
        for replica in (one, two):
            await wait_for(lambda r=replica: r.get(hook_id) is None, timeout_s=1.0, message="the deleted webhook")
