"""Fault-injection helpers: a steady event stream, outage windows for the real broker and database,
and the loss / duplicate / recovery accounting that tests/integration/test_faults.py reports.

Everything acts on the real services: the stream goes through an aiokafka producer, outcomes are
read back from PostgreSQL and from the status topic, requests from a tests.receiver.Receiver.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from aiokafka.errors import KafkaError

from hookstream.core.kafka import discard, open_producer
from tests.receiver import Received, Receiver
from tests.support import (
    ROOT,
    HookstreamProcess,
    make_org,
    make_webhook,
    read_topic_to_end,
    sample_event,
    status_records,
)

KAFKA_START = ROOT / "deploy" / "local" / "kafka" / "start.sh"
KAFKA_STOP = ROOT / "deploy" / "local" / "kafka" / "stop.sh"
PG_START = ROOT / "deploy" / "local" / "postgres" / "start.sh"
PG_STOP = ROOT / "deploy" / "local" / "postgres" / "stop.sh"

EVENTS = 5000
RATE_PER_S = 500
BATCH = 50  # events per producer batch: one batch every BATCH / RATE_PER_S seconds
HOOK_PATHS = ("/a", "/b", "/c")
SEND_RETRY_S = 0.5
STORE = "s1"
EVENT_TYPE = "order.created"


# --- the stream -------------------------------------------------------------------------------------


class SteadyPublisher:
    """Publishes ``events`` at ``rate_per_s`` in batches from a background task, retrying every send
    that fails (a broker restart must not lose input). ``sent_at[id]`` is when the event was first
    handed to the producer (time.time())."""

    def __init__(self, bootstrap: str, topic: str, events: list[dict], *, rate_per_s: float = RATE_PER_S,
                 batch: int = BATCH) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._events = events
        self._interval_s = batch / rate_per_s
        self._batch = batch
        self.sent_at: dict[str, float] = {}
        self.acked = 0
        self.resends = 0
        self.started_at = 0.0
        self.finished_at = 0.0
        self._task: asyncio.Task | None = None

    @property
    def handed_over(self) -> int:
        return len(self.sent_at)

    def start(self) -> SteadyPublisher:
        self._task = asyncio.create_task(self._run(), name="steady-publisher")
        return self

    async def wait(self, timeout_s: float = 120) -> None:
        assert self._task is not None
        async with asyncio.timeout(timeout_s):
            await self._task

    async def aclose(self) -> None:
        if self._task and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # Short request timeout: a send stuck on a stopped broker fails fast and is re-sent.
        async with open_producer(self._bootstrap, request_timeout_ms=5_000, retry_backoff_ms=200) as producer:
            self.started_at = time.time()
            start = loop.time()
            senders: list[asyncio.Task] = []
            for i in range(0, len(self._events), self._batch):
                delay = start + (i // self._batch) * self._interval_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                batch = self._events[i:i + self._batch]
                now = time.time()
                for event in batch:
                    self.sent_at[event["id"]] = now
                senders.append(asyncio.create_task(self._send_until_acked(producer, batch)))
            await asyncio.gather(*senders)
            self.finished_at = time.time()

    async def _send_until_acked(self, producer, batch: list[dict]) -> None:
        pending = batch
        while pending:
            failed: list[dict] = []
            futures: list[tuple[dict, asyncio.Future]] = []
            for i, event in enumerate(pending):
                try:
                    fut = await producer.send(self._topic, orjson.dumps(event), key=event["id"].encode())
                except (KafkaError, TimeoutError):
                    failed.extend(pending[i:])
                    break
                futures.append((event, fut))
            try:
                # A producer stuck after the broker restart is replaced by acked() (aiokafka#1018).
                results = await producer.acked([f for _, f in futures], return_exceptions=True)
            except (TimeoutError, KafkaError) as exc:  # stuck, or replaced while the broker is still down
                discard([f for _, f in futures])
                results = [exc] * len(futures)
            for (event, _), result in zip(futures, results, strict=True):
                if isinstance(result, BaseException):
                    failed.append(event)
                else:
                    self.acked += 1
            if failed:
                # Re-sending an id is safe: hookstream routes one id once.
                self.resends += len(failed)
                await asyncio.sleep(SEND_RETRY_S)
            pending = failed


@dataclass
class Stream:
    """One scenario's world: an organization, webhooks on the receiver, the events and their publisher."""

    database_url: str
    bootstrap: str
    status_topic: str
    receiver: Receiver
    hooks: dict[str, str]  # receiver path -> webhook id
    events: list[dict]
    publisher: SteadyPublisher
    api_key: str = ""

    @property
    def pairs(self) -> set[tuple[str, str]]:
        return {(hook, e["id"]) for hook in self.hooks.values() for e in self.events}

    def fresh_since(self, t: float) -> set[str]:
        """Ids of events first handed to the producer at or after ``t``."""
        return {eid for eid, at in self.publisher.sent_at.items() if at >= t}


async def make_stream(database_url: str, settings, receiver: Receiver, *, events: int = EVENTS,
                      paths: Iterable[str] = HOOK_PATHS, rate_per_s: float = RATE_PER_S) -> Stream:
    conn = await asyncpg.connect(database_url)
    try:
        org, api_key = await make_org(conn, "Faults", stores=(STORE,))
        hooks = {}
        for path in paths:
            hook_id, _ = await make_webhook(conn, org, receiver.url(path), event_types=[EVENT_TYPE],
                                            store_ids=[STORE])
            hooks[path] = hook_id
    finally:
        await conn.close()
    evs = [sample_event(EVENT_TYPE, org, STORE, n) for n in range(events)]
    publisher = SteadyPublisher(settings.kafka_bootstrap_servers, settings.source_topics[1], evs,
                                rate_per_s=rate_per_s)
    return Stream(database_url, settings.kafka_bootstrap_servers, settings.status_topic, receiver, hooks, evs,
                  publisher, api_key)


async def query(database_url: str, sql: str, *args):
    """One short-lived connection per query: the database may be restarted under the test."""
    conn = await asyncpg.connect(database_url, timeout=5)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def wait_mid_stream(stream: Stream, *, fraction: float = 0.35, min_requests: int = 500,
                          timeout_s: float = 60) -> None:
    """Until a share of the stream is published and deliveries are flowing."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (stream.publisher.handed_over >= fraction * len(stream.events)
                and len(stream.receiver.requests) >= min_requests):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"stream never got going: {stream.publisher.handed_over} handed over, "
                         f"{len(stream.receiver.requests)} requests received")


async def wait_all_succeeded(stream: Stream, *, timeout_s: float = 150) -> float | None:
    """Poll PostgreSQL until every pair is ``succeeded``; returns when (time.time()), or None on timeout
    (the caller then counts what is missing instead of failing blind)."""
    want = len(stream.pairs)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            rows = await query(stream.database_url, "SELECT count(*) AS n FROM deliveries WHERE status = 'succeeded'")
            if rows[0]["n"] >= want:
                return time.time()
        await asyncio.sleep(0.25)
    return None


# --- faults -------------------------------------------------------------------------------------------


async def run_script(path: Path, *, timeout_s: float = 120) -> str:
    """Run a deploy/local script without blocking the event loop (the receiver must keep answering)."""
    proc = await asyncio.create_subprocess_exec("bash", str(path), str(ROOT), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, env=dict(os.environ))
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace")
    print(f"\n{path.parent.name}/{path.name}: " + " | ".join(text.strip().splitlines()[-2:]))
    if proc.returncode != 0:
        raise AssertionError(f"{path} exited {proc.returncode}:\n{text}")
    return text


def start_sync(path) -> None:
    """Synchronous start, for fixture teardown after a timeout (the event loop may be gone)."""
    subprocess.run(["bash", str(path), str(ROOT)], cwd=ROOT, timeout=180, check=False)


@contextlib.asynccontextmanager
async def server_stopped(stop_script, start_script) -> AsyncIterator[None]:
    """Stop a shared local server; it is started again on exit, whatever happens inside."""
    try:
        await run_script(stop_script)
        yield
    finally:
        await asyncio.shield(run_script(start_script, timeout_s=150))


def kafka_restarted():
    """The shared broker stopped for the body of the ``async with``, then started again."""
    return server_stopped(KAFKA_STOP, KAFKA_START)


def postgres_stopped():
    """The shared PostgreSQL server stopped for the body of the ``async with``, then started again."""
    return server_stopped(PG_STOP, PG_START)


def assert_alive(*procs: HookstreamProcess) -> None:
    for p in procs:
        assert p.proc is not None and p.proc.poll() is None, (
            f"hookstream {' '.join(p.args)} exited with {p.proc.returncode if p.proc else None}:\n"
            + p.output()[-4000:])


async def terminate_within(process: HookstreamProcess, bound_s: float) -> tuple[int | None, float]:
    """SIGTERM and wait; returns (exit code or None if still running after ``bound_s``, seconds)."""
    started = time.monotonic()
    try:
        code = await asyncio.to_thread(process.terminate, bound_s)
    except subprocess.TimeoutExpired:
        code = None
    return code, time.monotonic() - started


async def metric_total(port: int, name: str) -> float:
    """Sum of a Prometheus counter's samples served by a hookstream process."""
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=3)) as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


# --- accounting ---------------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    events: int
    pairs: int
    finished: int
    lost: int
    duplicates: int
    recovery_s: float | None
    drain_s: float | None
    detail: dict

    def line(self) -> str:
        return (f"RELIABILITY {self.scenario} events={self.events} pairs={self.pairs} finished={self.finished} "
                f"lost={self.lost} duplicates={self.duplicates} recovery_s="
                + ("none" if self.recovery_s is None else f"{self.recovery_s:.1f}"))


async def account(stream: Stream, scenario: str, *, fault_start: float, fault_end: float,
                  all_done_at: float | None, answered_ok: Callable[[Received], bool] = lambda r: True) -> Result:
    """Count what reached a final state in PostgreSQL *and* on the status topic, and print the result.

    lost: pairs not answered 2xx by the endpoint and ``succeeded`` in both places. duplicates: 2xx-answered requests beyond the first
    per pair. recovery_s: from the end of the fault to the first successful request for an event
    published after the fault began (the pipeline carrying new work again); drain_s: from the end of
    the fault until every pair was ``succeeded`` in PostgreSQL.
    """
    by_path = {path: hook for path, hook in stream.hooks.items()}
    expected = stream.pairs
    rows = await query(stream.database_url, "SELECT webhook_id, event_id, status FROM deliveries")
    db_status = {(r["webhook_id"], r["event_id"]): r["status"] for r in rows}
    db_ok = {pair for pair, status in db_status.items() if status == "succeeded"}
    n_attempts = (await query(stream.database_url, "SELECT count(*) AS n FROM attempts"))[0]["n"]
    records = status_records(await read_topic_to_end(stream.bootstrap, stream.status_topic, timeout_s=60))
    topic_ok = {(r["webhook_id"], r["event_id"]) for r in records if r["status"] == "succeeded"}

    ok_requests = [r for r in stream.receiver.requests if answered_ok(r)]
    received = collections.Counter((by_path[r.path], orjson.loads(r.body)["id"]) for r in ok_requests
                                   if r.path in by_path)
    # finished means what a user would call delivered: answered 2xx by the endpoint, and succeeded in
    # PostgreSQL and on the status topic (a sender recording a 500 as success must not pass)
    finished = expected & db_ok & topic_ok & set(received)
    lost = expected - finished
    fresh = stream.fresh_since(fault_start)
    first_fresh = min((r.at for r in ok_requests if r.at >= fault_end and orjson.loads(r.body)["id"] in fresh),
                      default=None)
    # None when nothing published after the fault began was delivered after it ended: no recovery shown
    recovery_s = max(0.0, first_fresh - fault_end) if first_fresh is not None else None
    status_counts = collections.Counter(db_status.get(p, "missing") for p in expected)
    detail = {
        "db_status": dict(status_counts),
        "missing_in_db": len(expected - db_ok),
        "missing_on_status_topic": len(expected - topic_ok),
        "never_received": len(expected - set(received)),
        "requests": len(stream.receiver.requests),
        "status_records": len(records),
        "attempt_rows": n_attempts,
        "publisher_resends": stream.publisher.resends,
        "fault_s": round(fault_end - fault_start, 1),
        "fresh_events": len(fresh),
    }
    result = Result(scenario, len(stream.events), len(expected), len(finished), len(lost),
                    sum(n - 1 for n in received.values() if n > 1), recovery_s,
                    None if all_done_at is None else max(0.0, all_done_at - fault_end), detail)
    print()
    print(result.line())
    drain = "timeout" if result.drain_s is None else f"{result.drain_s:.1f}"
    print(f"RELIABILITY-DETAIL {scenario} drain_s={drain} {orjson.dumps(detail).decode()}")
    if lost:
        sample = sorted(lost)[:5]
        print(f"RELIABILITY-LOST {scenario} e.g. {[(p, db_status.get(p, 'missing')) for p in sample]}")
        # what state the lost ones are in, to tell a stuck delivery from a slow one
        states = await query(stream.database_url,
                             "SELECT d.event_id, d.status, d.attempts, d.in_flight, d.issued_attempt, d.next_attempt_at,"
                             " d.manual_due_at, d.last_error, now() AS now FROM deliveries d"
                             " WHERE (d.webhook_id, d.event_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
                             [w for w, _ in sample], [e for _, e in sample])
        for row in states:
            print(f"RELIABILITY-LOST-STATE {scenario} {dict(row)}")
    return result
