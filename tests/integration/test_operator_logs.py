"""The service log an operator reads (issue 16, "Operators"): a real sender's output stays bounded under a
flood of failing attempts, an endpoint's hostile error text cannot forge a log line nor leak a URL's token,
and disabling a webhook through the API is logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from hookstream.api.app import build_app
from hookstream.core.db import open_pool
from hookstream.core.orgs import create_organization
from hookstream.core.settings import Settings
from hookstream.sender.sender import RETRY_LOG_LIMIT
from tests.receiver import Behaviour, Receiver
from tests.support import ApiOrg, free_port, make_org, make_webhook, publish_events, sample_event, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# A text log line starts with its time: "2026-12-02 06:00:00,123 INFO    hookstream...".
LINE_START = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s")


async def test_a_flood_of_failed_attempts_that_will_be_retried_logs_a_bounded_number_of_lines(db, hs_settings, spawn):
    async with Receiver() as receiver:
        org, _ = await make_org(db, "Org", stores=("s1",))
        hook, _ = await make_webhook(db, org, receiver.url("/fail"), event_types=["order.created"], store_ids=["s1"])
        receiver.set("/fail", Behaviour(status=500))
        env = {"HOOKSTREAM_RETRY_DELAYS": "1h,1h,1h", "HOOKSTREAM_BREAKER_FAILURE_THRESHOLD": "10000"}
        metrics_port = free_port()
        spawn("router", env=env)
        sender = spawn("sender", env={**env, "HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"})
        await publish_events(hs_settings, [sample_event("order.created", org, "s1", n) for n in range(300)])
        await wait_for(lambda: db.fetchval("SELECT count(*) = 300 FROM attempts WHERE outcome = 'retrying'"),
                       timeout_s=120, message="300 failed first attempts recorded")
        # an outcome is logged just after it is durable, before the sender counts its retry: wait for all 300
        await wait_for(lambda: retries_scheduled(metrics_port, 300), timeout_s=30, message="300 outcomes observed")
        lines = [line for line in sender.output().splitlines() if "attempt failed; it will be retried" in line]
        # at INFO, a sample with the context an operator needs; not one line per attempt
        assert 1 <= len(lines) <= 2 * RETRY_LOG_LIMIT, len(lines)  # two intervals at most on a slow machine
        assert f"webhook_id={hook}" in lines[0] and f"organization_id={org}" in lines[0]
        assert "error=HTTP 500" in lines[0] and "event_type=order.created" in lines[0] and "attempts=1" in lines[0]
        assert "next_attempt_at=" in lines[0]
        assert not [line for line in sender.output().splitlines() if "delivery failed" in line]


async def retries_scheduled(metrics_port: int, expected: int) -> bool:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
        text = await response.text()
    return any(line.startswith('hookstream_retries_scheduled_total{tier="1"} ') and float(line.split()[-1]) >= expected
               for line in text.splitlines())


async def _serve_raw(response: bytes) -> tuple[asyncio.AbstractServer, int]:
    """An endpoint that answers every request with these bytes (not HTTP a client can parse)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read(65536)
            writer.write(response)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_an_endpoints_hostile_error_text_stays_on_one_line_without_the_urls_token(db, hs_settings, spawn):
    """aiohttp's error quotes the endpoint's bytes and the whole URL: the real sender's output keeps every
    line quoting them one of its own lines, and cuts the URL to its host (its path holds a token)."""
    forged = "2026-12-02 06:00:00,000 INFO    hookstream.api: FORGED admin key rotated"
    server, port = await _serve_raw(f"HTTP/1.1 2OO OK\n{forged}\r\n\u2028\x1b[2K\r\n\r\n".encode())
    try:
        org, _ = await make_org(db, "Org", stores=("s1",))
        hook, _ = await make_webhook(db, org, f"http://127.0.0.1:{port}/in/T0KEN-SECRET-42?sig=abc",
                                     event_types=["order.created"], store_ids=["s1"])
        env = {"HOOKSTREAM_RETRY_DELAYS": "100ms,100ms,100ms"}
        spawn("router", env=env)
        sender = spawn("sender", env=env)
        await publish_events(hs_settings, [sample_event("order.created", org, "s1", 1, event_id="evt_hostile")])
        await wait_for(lambda: db.fetchval("SELECT status = 'failed' FROM deliveries WHERE webhook_id = $1", hook),
                       timeout_s=60, message="the delivery failed after its retries")
        # stored for the tenant as it came (their own URL, their own bytes) ...
        assert "FORGED" in await db.fetchval("SELECT last_error FROM deliveries WHERE webhook_id = $1", hook)
        await wait_for(lambda: "delivery failed" in sender.output(), timeout_s=30, message="the failed line")
        output = sender.output()
        # ... but in the service log: every line that quotes it is one of ours, and no line starts forged
        quoting = [line for line in output.splitlines() if "FORGED" in line]
        assert quoting and all(LINE_START.match(line) for line in quoting)
        assert not [line for line in output.splitlines() if line.lstrip().startswith(forged)]
        assert all(" hookstream.sender.sender: " in line.split("FORGED")[0] for line in quoting)
        assert "\u2028" not in output and "\x1b" not in output
        failed = [line for line in quoting if "delivery failed" in line]
        assert len(failed) == 1 and "event_id=evt_hostile" in failed[0] and "attempts=4" in failed[0]
        assert "invalid HTTP response" in failed[0] and f"webhook_id={hook}" in failed[0]
        assert "T0KEN-SECRET-42" not in output and "sig=abc" not in output  # the URL's path and query are cut
        assert len(failed[0]) < 1000
    finally:
        server.close()
        await server.wait_closed()


async def test_disabling_a_webhook_through_the_api_is_logged_once(database_url, db, infra_env, caplog):
    settings = Settings(kafka_bootstrap_servers=infra_env["KAFKA_BOOTSTRAP_SERVERS"], database_url=database_url,
                        allow_http=True, allow_private_networks=True)
    org = ApiOrg(*await create_organization(db, "A"))
    async with open_pool(database_url, max_size=3) as pool:
        client = TestClient(TestServer(build_app(settings, pool)))
        await client.start_server()
        try:
            async def call(method: str, path: str, body: dict) -> dict:
                async with client.request(method, path, json=body, headers=org.headers) as response:
                    assert response.status in (200, 201), await response.text()
                    return await response.json()

            await call("POST", "/v1/stores", {"id": "s1", "name": "Store 1"})
            hook = await call("POST", "/v1/webhooks", {"url": "https://example.com/hook",
                                                       "event_types": ["order.created"], "store_ids": ["s1"]})
            caplog.set_level(logging.INFO, logger="hookstream.api.webhooks")
            await call("PATCH", f"/v1/webhooks/{hook['id']}", {"description": "still on"})
            await call("PATCH", f"/v1/webhooks/{hook['id']}", {"enabled": False})
            await call("PATCH", f"/v1/webhooks/{hook['id']}", {"enabled": False})  # no change, no line
            await call("PATCH", f"/v1/webhooks/{hook['id']}", {"enabled": True})
        finally:
            await client.close()
    lines = [(r.getMessage(), r.webhook_id, r.organization_id) for r in caplog.records
             if r.name == "hookstream.api.webhooks"]
    assert lines == [("webhook disabled through the API", hook["id"], org.id),
                     ("webhook enabled through the API", hook["id"], org.id)]
    assert not [r for r in caplog.records if hook["secret"] in r.getMessage()]
