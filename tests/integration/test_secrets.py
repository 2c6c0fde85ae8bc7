"""Webhook secrets are encrypted at rest and still sign correctly, through real API, router and sender."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import pytest

from hookstream.core.kafka import open_producer
from hookstream.core.publish import publish_event
from hookstream.core.secretbox import SecretBox, generate_key
from hookstream.core.signing import generate_secret
from tests.receiver import Receiver
from tests.support import api_ready, make_org, sample_event, wait_for

pytestmark = pytest.mark.integration



async def test_secret_is_encrypted_in_the_database_and_signs_deliveries(db, hs_env, hs_settings, spawn):
    env = {"HOOKSTREAM_SECRET_KEY": generate_key()}
    async with Receiver() as receiver:
        org, key = await make_org(db, "Org", stores=("s1",))
        spawn("api", env=env)
        spawn("router", env=env)
        spawn("sender", env=env)
        api = f"http://{hs_env['HOOKSTREAM_API_LISTEN']}"
        await wait_for(lambda: api_ready(api), timeout_s=30, message="api ready")
        auth = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(headers=auth) as http:
            async with http.post(f"{api}/v1/webhooks", json={"url": receiver.url("/h"), "event_types": ["order.created"],
                                                             "store_ids": ["s1"]}) as r:
                assert r.status == 201
                created = await r.json()
            secret, hook_id = created["secret"], created["id"]
            stored = await db.fetchval("SELECT secret FROM webhooks WHERE id = $1", hook_id)
            assert stored.startswith("enc:v1:") and secret not in stored
            assert secret.removeprefix("whsec_") not in stored

            async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
                await publish_event(producer, sample_event("order.created", org, "s1", 1), hs_settings.source_topics)
            await wait_for(lambda: receiver.at("/h"), timeout_s=30, message="the delivery")
            [first] = receiver.at("/h")  # exactly one request: one event, one attempt
            assert first.verify(secret)

            async with http.post(f"{api}/v1/webhooks/{hook_id}/rotate-secret") as r:
                assert r.status == 200
                new_secret = (await r.json())["secret"]
            rotated = await db.fetchrow("SELECT secret, previous_secret FROM webhooks WHERE id = $1", hook_id)
            assert all(v.startswith("enc:v1:") for v in rotated.values())
            async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
                await publish_event(producer, sample_event("order.created", org, "s1", 2), hs_settings.source_topics)
            await wait_for(lambda: len(receiver.at("/h")) >= 2, timeout_s=30, message="the second delivery")
            await asyncio.sleep(0.5)  # room for a wrong extra request to show
            _, second = receiver.at("/h")
            assert len(second.headers["webhook-signature"].split(" ")) == 2  # both secrets sign during the grace
            assert second.verify(new_secret) and second.verify(secret)


async def test_a_sender_without_the_key_fails_clearly_and_leaks_nothing(db, hs_settings, spawn):
    env = {"HOOKSTREAM_SECRET_KEY": generate_key()}
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        secret = generate_secret()
        box = SecretBox(base64.b64decode(env["HOOKSTREAM_SECRET_KEY"]))
        await db.execute(
            "INSERT INTO webhooks (id, organization_id, url, event_types, store_ids, secret)"
            " VALUES ('wh_locked', $1, $2, '{order.created}', '{s1}', $3)",
            org, receiver.url("/h"), box.seal(secret, "wh_locked"))
        spawn("router", env=env)
        sender = spawn("sender", env={"HOOKSTREAM_SECRET_KEY": ""})
        async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
            await publish_event(producer, sample_event("order.created", org, "s1", 1), hs_settings.source_topics)
        error = await wait_for(lambda: db.fetchval("SELECT last_error FROM deliveries WHERE attempts >= 1"),
                               timeout_s=30, message="the first attempt")
        assert "cannot sign" in error and "HOOKSTREAM_SECRET_KEY" in error
        assert receiver.requests == []
        sender.stop()
        assert secret not in sender.output() and "HOOKSTREAM_SECRET_KEY is not set" in sender.output()
