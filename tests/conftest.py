"""Shared fixtures: the real Kafka broker and PostgreSQL that `make up` started (never mocks).

Every test gets its own database (a copy of a migrated template, so migrations run once per
session), its own topics and its own consumer groups, so tests never see each other's data.
Connection settings come from the environment or from ``.local/env`` written by `make up`.
Only fixtures live here; the helpers they use, and that tests import, are in ``tests/support.py``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import pytest
from aiokafka.errors import KafkaError

from hookstream.core.db import migrate
from hookstream.core.settings import Settings
from tests.support import (
    HookstreamProcess,
    create_database,
    delete_topics,
    drop_database,
    free_port,
    isolated_names,
    isolated_topics,
    load_local_env,
    unique_id,
)


@pytest.fixture(scope="session")
def infra_env() -> dict[str, str]:
    env = load_local_env()
    missing = [k for k in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL") if k not in env]
    if missing:
        pytest.fail(f"{', '.join(missing)} not set and no .local/env: run `make up` (or `make test`) first")
    host, _, port = env["KAFKA_BOOTSTRAP_SERVERS"].split(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        pytest.fail(f"Kafka at {env['KAFKA_BOOTSTRAP_SERVERS']} is not reachable ({exc}): run `make up`")
    return env


@pytest.fixture(scope="session")
async def template_database(infra_env) -> AsyncIterator[str]:
    """A freshly migrated template database, made once per test session (its own name, so
    concurrent sessions never drop each other's template)."""
    admin_url = infra_env["DATABASE_URL"]
    name = unique_id("hs_template_")
    await migrate(await create_database(admin_url, name))
    yield name
    await drop_database(admin_url, name)


@pytest.fixture
async def database_url(infra_env, template_database) -> AsyncIterator[str]:
    """A new database for this test, already migrated; dropped afterwards."""
    name = unique_id("hs_test_")
    yield await create_database(infra_env["DATABASE_URL"], name, template=template_database)
    await drop_database(infra_env["DATABASE_URL"], name)


@pytest.fixture
async def db(database_url) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def hs_env(infra_env, database_url) -> AsyncIterator[dict[str, str]]:
    """Environment for a hookstream process in this test: its own database, topics and groups,
    short retry delays, and the dev switches that let it deliver to a local HTTP receiver.
    The topics are deleted after the test."""
    uid = unique_id()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": infra_env["KAFKA_BOOTSTRAP_SERVERS"],
        "DATABASE_URL": database_url,
        **isolated_names(uid),
        "HOOKSTREAM_RETRY_DELAYS": "300ms,300ms,300ms",
        # Generous for a receiver that shares a busy 2-core machine with the whole suite.
        "HOOKSTREAM_REQUEST_TIMEOUT": "5s",
        "HOOKSTREAM_BREAKER_OPEN": "1s",
        "HOOKSTREAM_ALLOW_HTTP": "true",
        "HOOKSTREAM_ALLOW_PRIVATE_NETWORKS": "true",
        "HOOKSTREAM_API_LISTEN": f"127.0.0.1:{free_port()}",
        "HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        "HOOKSTREAM_LOG_LEVEL": "INFO",
    }
    yield env
    try:
        await delete_topics(env["KAFKA_BOOTSTRAP_SERVERS"], isolated_topics(env))
    except KafkaError as exc:  # housekeeping: a broker left down by a failed test must not add an error
        logging.getLogger(__name__).warning("could not delete this test's topics: %r", exc)


@pytest.fixture
def hs_settings(hs_env) -> Settings:
    return Settings.from_env(hs_env)


@pytest.fixture
def spawn(tmp_path, hs_env) -> Iterator[Callable[..., HookstreamProcess]]:
    """Start hookstream subcommands as child processes; all are stopped at the end of the test."""
    started: list[HookstreamProcess] = []

    def _spawn(*args: str, env: dict[str, str] | None = None, name: str | None = None) -> HookstreamProcess:
        log_path = tmp_path / f"{name or args[0]}-{len(started)}.log"
        # Each process gets its own metrics port unless the test chose one.
        process_env = {**hs_env, "HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{free_port()}", **(env or {})}
        process = HookstreamProcess(list(args), process_env, log_path).start()
        started.append(process)
        return process

    yield _spawn
    for process in started:
        process.stop()


@pytest.fixture
def restore_infra(database_url):
    """Safety net for tests that stop the shared servers: whatever a test named here ("kafka",
    "postgres") is started again even if the test failed or timed out. Depends on ``database_url`` so
    it is torn down first (that fixture's teardown needs PostgreSQL)."""
    from tests import faults

    stopped: set[str] = set()
    yield stopped
    if "kafka" in stopped:
        faults.start_sync(faults.KAFKA_START)
    if "postgres" in stopped:
        faults.start_sync(faults.PG_START)
