"""Helpers shared by the tests, the fault harness and the bench (conftest.py keeps only fixtures).

- the local infrastructure: :func:`load_local_env`, :func:`free_port`, :func:`unique_id`, databases
  (:func:`with_database`, :func:`create_database`, :func:`drop_database`), isolated topics and groups;
- waiting on a condition with a deadline (:func:`wait_for`), never a fixed sleep;
- hookstream (or any module) as a real child process (:class:`HookstreamProcess`);
- acting through the real database and broker: organizations, webhooks, events, topic reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from hookstream.core.kafka import open_producer
from hookstream.core.orgs import create_organization
from hookstream.core.publish import make_event, publish_event
from hookstream.core.signing import generate_secret
from hookstream.core.validation import EVENT_TYPES

ROOT = Path(__file__).resolve().parents[1]
LOCAL_ENV = ROOT / ".local" / "env"


# ------------------------------------------------------------------------------- infrastructure


def load_local_env() -> dict[str, str]:
    """``os.environ`` over ``.local/env`` (written by `make up`): an explicit variable wins over the file."""
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


async def api_ready(api_url: str) -> bool:
    """Whether the API at ``api_url`` answers ``/readyz`` with 200 (False while it cannot be reached)."""
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{api_url}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def database_at_version(url: str, version: int) -> None:
    """Apply hookstream's migrations up to ``version`` to the empty database at ``url`` and record them,
    as a database that old would be (for migration tests)."""
    from hookstream.core.db import list_migrations

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                           " applied_at timestamptz NOT NULL DEFAULT now())")
        for number, name, path in list_migrations():
            if number <= version:
                await conn.execute(path.read_text(encoding="utf-8"))
                await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name)
    finally:
        await conn.close()


def with_database(url: str, name: str) -> str:
    """``url`` naming database ``name`` instead."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def create_database(admin_url: str, name: str, *, template: str | None = None) -> str:
    """Create database ``name`` on ``admin_url``'s server (a copy of ``template`` if given); returns its URL."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        await conn.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name`` if it exists, disconnecting whoever is still connected to it."""
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def unique_id(prefix: str = "t") -> str:
    return f"{prefix}{secrets.token_hex(5)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WaitTimeout(AssertionError):
    """:func:`wait_for` ran out of time (an AssertionError, so a test reads as failed, not errored)."""


async def wait_for(predicate: Callable[[], object], *, timeout_s: float = 30.0, interval_s: float = 0.05,
                   message: str = "condition") -> object:
    """Poll ``predicate`` (sync or async) until it returns something truthy, and return that; raises
    :class:`WaitTimeout` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise WaitTimeout(f"timed out after {timeout_s}s waiting for {message}; last value: {last!r}")


@dataclass
class HookstreamProcess:
    """``python -m <module> <args>`` (a hookstream subcommand unless told otherwise) as a real child
    process, so it can be SIGKILLed; its output goes to ``log_path``."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    module: str = "hookstream.cli"
    proc: subprocess.Popen | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> HookstreamProcess:
        self._log = open(self.log_path, "ab")  # closed by stop()
        full_env = {**os.environ, **self.env}
        self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args], cwd=ROOT, env=full_env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def exit_code(self) -> int | None:
        """The exit code, or None while it runs (or was never started)."""
        return self.proc.poll() if self.proc else None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout_s: float = 30) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            return self.proc.wait(timeout_s)
        return self.proc.returncode if self.proc else 0

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; closes the log."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.terminate(timeout_s)
        self.kill()
        if self._log:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# ------------------------------------------------------------------------ topics and consumer groups


def isolated_topics(names: dict[str, str]) -> list[str]:
    """The topics named in ``isolated_names``' result (or any environment holding them)."""
    return [*names["HOOKSTREAM_SOURCE_TOPICS"].split(","), names["HOOKSTREAM_STATUS_TOPIC"],
            names["HOOKSTREAM_DEAD_LETTER_TOPIC"], names["HOOKSTREAM_DELIVERY_TOPIC"]]


async def delete_topics(bootstrap: str, topics: Iterable[str]) -> None:
    """Delete a test's own topics, those that exist. Left behind, every run's topics would pile up in
    the local broker (tens of partitions per test) until it takes minutes to start."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        doomed = set(topics) & set(await admin.list_topics())
        if doomed:
            await admin.delete_topics(sorted(doomed))
    finally:
        await admin.close()


def isolated_names(uid: str) -> dict[str, str]:
    """Topics and consumer groups of one's own, so concurrent tests and bench runs never share data."""
    return {
        "HOOKSTREAM_SOURCE_TOPICS": f"{uid}.products,{uid}.orders",
        "HOOKSTREAM_STATUS_TOPIC": f"{uid}.delivery-status",
        "HOOKSTREAM_DEAD_LETTER_TOPIC": f"{uid}.dead-letter",
        "HOOKSTREAM_DELIVERY_TOPIC": f"{uid}.deliveries",
        "HOOKSTREAM_ROUTER_GROUP": f"{uid}-router",
        "HOOKSTREAM_SENDER_GROUP": f"{uid}-sender",
    }


# ------------------------------------------------------------------- through the database and broker


@dataclass(frozen=True)
class ApiOrg:
    """An organization as an API client sees it: its id and the headers that carry its key."""

    id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def make_org(conn: asyncpg.Connection, name: str, stores: Iterable[str] = ("store_1", "store_2")) -> tuple[str, str]:
    """Create an organization and its stores (each named as its id); returns (organization id, API key)."""
    org_id, key = await create_organization(conn, name)
    for store in stores:
        await conn.execute("INSERT INTO stores (organization_id, id, name) VALUES ($1, $2, $3)", org_id, store, store)
    return org_id, key


async def make_webhook(conn: asyncpg.Connection, org_id: str, url: str, *, event_types: Iterable[str] = EVENT_TYPES,
                       store_ids: Iterable[str] = ("store_1",), enabled: bool = True,
                       filter_: str | None = None, webhook_id: str | None = None,
                       ordering: str = "none") -> tuple[str, str]:
    """Insert a webhook directly (as the API would, with an unsealed secret); returns (webhook id, secret)."""
    webhook_id = webhook_id or f"wh_{uuid.uuid4().hex[:16]}"
    secret = generate_secret()
    await conn.execute(
        "INSERT INTO webhooks (id, organization_id, url, event_types, store_ids, enabled, secret, filter, ordering)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        webhook_id, org_id, url, list(event_types), list(store_ids), enabled, secret, filter_, ordering)
    return webhook_id, secret


def sample_data(event_type: str, n: int = 1) -> dict:
    if event_type.startswith("product."):
        return {"product": {"id": f"prod_{n}", "title": f"Product {n}"}}
    return {"order": {"id": f"ord_{n}", "total": "42.10", "currency": "USD"}}


def sample_event(event_type: str, org_id: str, store_id: str, n: int = 1, event_id: str | None = None) -> dict:
    return make_event(event_type, organization_id=org_id, store_id=store_id, data=sample_data(event_type, n),
                      event_id=event_id)


async def publish_events(settings, events: Iterable[dict]) -> None:
    """Publish domain events to ``settings``' source topics, one producer, in order."""
    async with open_producer(settings.kafka_bootstrap_servers) as producer:
        for event in events:
            await publish_event(producer, event, settings.source_topics)


async def delivery_states(conn: asyncpg.Connection, webhook_id: str) -> dict[str, tuple[str, int]]:
    rows = await conn.fetch("SELECT event_id, status, attempts FROM deliveries WHERE webhook_id = $1", webhook_id)
    return {r["event_id"]: (r["status"], r["attempts"]) for r in rows}


async def count_final(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM deliveries WHERE status <> 'pending'")


async def read_topic(bootstrap: str, topic: str, *, expect: int, timeout_s: float = 30.0) -> list:
    """Read a topic from the beginning until ``expect`` records arrived (or the timeout); returns the records."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records = []
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while len(records) < expect:
                    batch = await consumer.getmany(timeout_ms=200)
                    for messages in batch.values():
                        records.extend(messages)
    finally:
        await consumer.stop()
    return records


async def read_topic_to_end(bootstrap: str, topic: str, *, timeout_s: float = 60.0) -> list:
    """Read a topic from the beginning up to the end offsets it has when the read starts: everything
    already acknowledged, however many duplicates it holds. Raises TimeoutError if that takes longer
    than ``timeout_s`` (a count-based stop cannot serve here: duplicates on one partition would end
    the read before the other partitions are read)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    records = []
    try:
        async with asyncio.timeout(timeout_s):
            ends: dict = {}
            while not ends or [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(messages)
                if not ends and consumer.assignment():  # without a group: every partition, once metadata is in
                    ends = await consumer.end_offsets(list(consumer.assignment()))
    finally:
        await consumer.stop()
    return records


def status_records(records) -> list[dict]:
    return [orjson.loads(r.value) for r in records]

