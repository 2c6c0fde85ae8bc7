"""Foundation: migrations against a real PostgreSQL, `hookstream publish` through a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import asyncpg
import orjson
import pytest

from hookstream.core.db import list_migrations, migrate, open_pool
from hookstream.core.kafka import open_producer
from hookstream.core.publish import PublishError, make_event, publish_event
from tests.support import ROOT, read_topic, unique_id, with_database

pytestmark = pytest.mark.integration


@pytest.fixture
async def empty_database(infra_env):
    name = unique_id("hs_empty_")
    admin = await asyncpg.connect(infra_env["DATABASE_URL"])
    await admin.execute(f'CREATE DATABASE "{name}"')
    yield with_database(infra_env["DATABASE_URL"], name)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


async def test_migrations_apply_once_and_twice_is_a_no_op(empty_database):
    first = await migrate(empty_database)
    assert first == [f"{v:04d}_{n}" for v, n, _ in list_migrations()]
    assert await migrate(empty_database) == []
    conn = await asyncpg.connect(empty_database)
    try:
        recorded = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in recorded] == [v for v, _, _ in list_migrations()]
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        assert {"organizations", "api_keys", "stores", "webhooks", "events", "deliveries", "attempts"} <= tables
        # The delivery-log query is served by each day partition's index, newest first: merged, never sorted.
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN SELECT * FROM deliveries WHERE webhook_id = 'w' ORDER BY created_at DESC, id DESC LIMIT 50"))
        assert "Merge Append" in plan and "webhook_id_created_at_id_idx" in plan, plan
        assert "Seq Scan" not in plan and "->  Sort" not in plan, plan
    finally:
        await conn.close()


def run_cli(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hookstream.cli", *args], cwd=ROOT, env={**os.environ, **env},
                          input=stdin, capture_output=True, text=True, timeout=60)


async def test_a_pooled_connection_returns_without_an_unfinished_transaction(database_url):
    # The pool skips asyncpg's session reset query; what it must still do is roll back a transaction
    # its last user left open, so the next user neither sees nor commits that work.
    async with open_pool(database_url, min_size=1, max_size=1) as pool:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO organizations (id, name) VALUES ('org_left_open', 'x')")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            await conn.execute("INSERT INTO organizations (id, name) VALUES ('org_next', 'y')")
        names = {r["id"] for r in await pool.fetch("SELECT id FROM organizations WHERE id LIKE 'org_%'")}
    assert "org_next" in names
    assert "org_left_open" not in names


async def test_cli_migrate_twice(empty_database, hs_env):
    env = {**hs_env, "DATABASE_URL": empty_database}
    first = run_cli("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "0001_init" in first.stdout
    second = run_cli("migrate", env=env)
    assert second.returncode == 0 and "up to date" in second.stdout


async def test_cli_publish_round_trips_through_kafka(hs_env, hs_settings, tmp_path):
    data = {"order": {"id": "ord_991", "total": "42.10", "currency": "USD"}}
    (tmp_path / "order.json").write_text(json.dumps(data))
    result = run_cli("publish", "--type", "order.created", "--store", "store_042", "--org", "org_acme",
                     "--data", f"@{tmp_path / 'order.json'}", "--id", "evt_01JD8Y4W2Q6N", env=hs_env)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["topic"] == hs_settings.source_topics[1] and printed["event_id"] == "evt_01JD8Y4W2Q6N"

    from_stdin = run_cli("publish", "--type", "product.updated", "--store", "s", "--org", "o",
                         env=hs_env, stdin='{"product": {"id": "prod_7"}}')
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert json.loads(from_stdin.stdout)["topic"] == hs_settings.source_topics[0]

    [record] = await read_topic(hs_settings.kafka_bootstrap_servers, hs_settings.source_topics[1], expect=1)
    assert record.key == b"ord_991"  # keyed by the resource id
    event = orjson.loads(record.value)
    assert event["id"] == "evt_01JD8Y4W2Q6N" and event["type"] == "order.created"
    assert event["organization_id"] == "org_acme" and event["store_id"] == "store_042" and event["data"] == data
    [product] = await read_topic(hs_settings.kafka_bootstrap_servers, hs_settings.source_topics[0], expect=1)
    assert product.key == b"prod_7"


async def test_cli_publish_refuses_an_invalid_event(hs_env):
    result = run_cli("publish", "--type", "order.exploded", "--store", "s", "--org", "o", "--data", "{}", env=hs_env)
    assert result.returncode == 2
    assert "unknown_type" in result.stderr
    bad_json = run_cli("publish", "--type", "order.created", "--store", "s", "--org", "o", "--data", "{", env=hs_env)
    assert bad_json.returncode == 2 and "--data" in bad_json.stderr


async def test_publish_helper_validates_before_sending(hs_settings):
    async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
        with pytest.raises(PublishError, match="bad_id"):
            await publish_event(producer, make_event("order.created", organization_id="o", store_id="s",
                                                     data={"order": {"id": "1"}}, event_id="no spaces!"),
                                hs_settings.source_topics)
        published = await publish_event(
            producer, make_event("order.shipped", organization_id="o", store_id="s", data={"order": {"id": "o1"}}),
            hs_settings.source_topics)
    assert published.topic == hs_settings.source_topics[1] and published.offset >= 0


async def test_bad_setting_stops_startup_naming_the_variable(hs_env):
    for var, value in (("HOOKSTREAM_REQUEST_TIMEOUT", "soon"), ("HOOKSTREAM_API_LISTEN", "nowhere"),
                       ("HOOKSTREAM_ALLOW_HTTP", "maybe")):
        result = run_cli("all", env={**hs_env, var: value})
        assert result.returncode == 2, result.stderr
        assert var in result.stderr


async def test_a_producer_whose_acks_stall_is_replaced_and_keeps_working(hs_settings, monkeypatch):
    """aiokafka#1018: a producer can stop completing sends after a broker restart. A batch whose
    acknowledgements do not arrive in time raises TimeoutError and the producer is replaced."""
    import asyncio

    from hookstream.core import kafka

    monkeypatch.setattr(kafka, "ACK_TIMEOUT_S", 0.5)
    async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
        first = producer._producer
        never_acknowledged = asyncio.get_running_loop().create_future()
        with pytest.raises(TimeoutError):
            await producer.acked([never_acknowledged])
        assert producer._producer is not first  # replaced
        metadata = await producer.send_and_wait(hs_settings.source_topics[1], b"{}", key=b"k")
        assert metadata.offset >= 0  # and the new one works


async def test_a_producer_that_lost_its_idempotence_state_is_replaced(hs_settings):
    """After a broker restart every send can fail with OutOfOrderSequenceNumber until the producer
    starts over: such a failure replaces it, so the caller's retry goes through."""
    import asyncio

    from aiokafka.errors import OutOfOrderSequenceNumber

    async with open_producer(hs_settings.kafka_bootstrap_servers) as producer:
        first = producer._producer
        failed = asyncio.get_running_loop().create_future()
        failed.set_exception(OutOfOrderSequenceNumber())
        with pytest.raises(OutOfOrderSequenceNumber):
            await producer.acked([failed])
        assert producer._producer is not first
        assert (await producer.send_and_wait(hs_settings.source_topics[1], b"{}", key=b"k")).offset >= 0
