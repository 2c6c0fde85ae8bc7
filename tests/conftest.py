"""Shared fixtures: the real Kafka broker and PostgreSQL that `make up` started (never mocks).

Every test gets its own database (a copy of a migrated template, so migrations run once per
session), its own topics and its own consumer groups, so tests never see each other's data.
Connection settings come from the environment or from ``.local/env`` written by `make up`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka.errors import KafkaError

from hookstream.core.db import migrate
from hookstream.core.settings import Settings
from tests.support import delete_topics, isolated_names, isolated_topics

ROOT = Path(__file__).resolve().parents[1]
LOCAL_ENV = ROOT / ".local" / "env"


def load_local_env() -> dict[str, str]:
    """``os.environ`` over ``.local/env``: an explicit variable wins over the file."""
    env: dict[str, str] = {}
    if LOCAL_ENV.exists():
        for line in LOCAL_ENV.read_text().splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                env[key] = value
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def unique_id(prefix: str = "t") -> str:
    return f"{prefix}{secrets.token_hex(5)}"


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
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    await migrate(with_database(admin_url, name))
    yield name
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def database_url(infra_env, template_database) -> AsyncIterator[str]:
    """A new database for this test, already migrated; dropped afterwards."""
    name = unique_id("hs_test_")
    conn = await asyncpg.connect(infra_env["DATABASE_URL"])
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    finally:
        await conn.close()
    yield with_database(infra_env["DATABASE_URL"], name)
    conn = await asyncpg.connect(infra_env["DATABASE_URL"])
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def db(database_url) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


async def wait_for(predicate: Callable[[], object], *, timeout_s: float = 30.0, interval_s: float = 0.05,
                   message: str = "condition") -> object:
    """Poll ``predicate`` (sync or async) until it returns something truthy, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {message}; last value: {last!r}")


@dataclass
class HookstreamProcess:
    """A hookstream subcommand running as a real child process (so it can be SIGKILLed)."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = None
    _log: object = field(default=None, repr=False)

    def start(self) -> HookstreamProcess:
        self._log = open(self.log_path, "ab")
        full_env = {**os.environ, **self.env}
        self.proc = subprocess.Popen([sys.executable, "-m", "hookstream.cli", *self.args], cwd=ROOT, env=full_env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 30) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            return self.proc.wait(timeout_s)
        return self.proc.returncode if self.proc else 0

    def stop(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.terminate(20)
        self.kill()
        if self._log:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


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
