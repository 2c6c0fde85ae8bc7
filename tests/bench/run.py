"""`make bench`: hookstream's benchmark harness (issue 6).

Every figure is taken against real processes: a migrated database of its own per scenario, unique
topics and consumer groups, `python -m hookstream.cli router` / `sender` child processes, an aiohttp
sink in its own process that verifies every signature, and an aiokafka producer (acks=all). A run
fails (exit 1) if any measured delivery was not received by the sink with a valid signature, or
its `succeeded` outcome is not in PostgreSQL and on the status topic.

    python -m tests.bench.run              # the issue's sizes, medians of 3 runs
    python -m tests.bench.run --smoke      # tiny counts, 1 run: the harness cannot rot
    python -m tests.bench.run --only e2e,latency --runs 1 --profile
    python -m tests.bench.run --only unordered,ordered,ordered_failing --runs 1   # issue 14
    python -m tests.bench.run --only log --runs 1 --log-deliveries 200000          # issue 17
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import gc
import logging
import os
import random
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, TopicPartition

from hookstream.core.db import migrate
from hookstream.core.kafka import RenewableProducer, ensure_topics, open_producer
from hookstream.core.publish import make_event
from hookstream.core.signing import decode_secret, generate_secret, signature_header
from hookstream.core.validation import Rejection, validate_event
from tests.bench import delivery_log
from tests.support import (
    ROOT,
    HookstreamProcess,
    WaitTimeout,
    create_database,
    delete_topics,
    drop_database,
    free_port,
    isolated_names,
    isolated_topics,
    load_local_env,
    make_org,
    make_webhook,
    wait_for,
)

DEFAULT_OUT = ROOT / ".local" / "bench" / "results.json"
EVENT_TYPE = "order.created"
STORE_ID = "store_1"
SOURCE_PARTITIONS = 12
# The sender's effective in-flight toward one webhook: min(SENDER_MAX_IN_FLIGHT, ENDPOINT_MAX_CONCURRENCY).
SENDER_MAX_IN_FLIGHT = 1000
ENDPOINT_MAX_CONCURRENCY = 32
# hookstream's default: a fast endpoint is never deferred, so the bench measures the shipped setting.
ENDPOINT_MAX_QUEUED = 256
ISOLATION_TIMEOUT = "2s"
POLL_S = 0.05
SETTLE_MIN_S = 1.5
PUBLISH_TICK_S = 0.005
# The latency scenario publishes this long at its rate before the measured events, in one steady
# stream, so that p50/p99 describe the steady state the issue asks for, not the ramp from idle.
LATENCY_WARMUP_S = 3.0

RESULT_KEYS = ("host_cpu_ref_ms", "host_rtt_ms", "baseline_rps", "e2e_rps", "ratio", "latency_p50_ms",
               "latency_p99_ms", "latency_200_p50_ms", "latency_200_p99_ms", "floor_p50_ms", "latency_200_over_floor", "fanout_rps", "isolation_ratio",
               "sender_peak_rss_mb", "scale_2_over_1", "cpu_ms_per_delivery", "idle_cpu_pct", "filters_rps",
               "filters_ratio", "unordered_rps", "ordered_rps", "ordered_failing_rps", "ordered_over_unordered",
               "ordered_failing_over_unordered", "ordered_violations",
               # the log scenario (issue 17, tests/bench/delivery_log.py)
               "log_deliveries", "log_build_s", "log_p50_ms", "log_p99_ms", "log_failed_p50_ms", "log_failed_p99_ms",
               "log_range_p50_ms", "log_range_p99_ms", "log_deep_p50_ms", "log_deep_p99_ms", "explorer_p50_ms",
               "explorer_p99_ms", "explorer_range_p50_ms", "explorer_range_p99_ms", "log_range_partitions_scanned",
               "log_bytes_per_delivery", "log_events_bytes_per_delivery", "log_deliveries_bytes_per_delivery",
               "log_deliveries_index_bytes_per_delivery", "log_attempts_bytes_per_delivery")
# How the runs' values of a key are summarised: the median, except where one bad run must show.
AGGREGATES = {"ordered_violations": max}
TARGETS = {  # key -> (description, check(results))
    "ratio": ("≥ 0.37", lambda r: r["ratio"] >= 0.37),
    "latency_p99_ms": ("≤ 40", lambda r: r["latency_p99_ms"] <= 40),
    "latency_200_p50_ms": ("≤ 6", lambda r: r["latency_200_p50_ms"] <= 6),
    "latency_200_p99_ms": ("≤ 20", lambda r: r["latency_200_p99_ms"] <= 20),
    "latency_200_over_floor": ("≤ 2", lambda r: r["latency_200_over_floor"] <= 2),
    "cpu_ms_per_delivery": ("≤ 0.45", lambda r: r["cpu_ms_per_delivery"] <= 0.45),
    "idle_cpu_pct": ("≤ 5", lambda r: r["idle_cpu_pct"] <= 5),
    "isolation_ratio": ("≥ 0.8", lambda r: r["isolation_ratio"] >= 0.8),
    "sender_peak_rss_mb": ("≤ 300", lambda r: r["sender_peak_rss_mb"] <= 300),
    "fanout_rps": ("≥ 0.8 × e2e_rps", lambda r: r["fanout_rps"] >= 0.8 * r["e2e_rps"]),
    "filters_ratio": ("≥ 0.9", lambda r: r["filters_ratio"] >= 0.9),
    "ordered_violations": ("= 0", lambda r: r["ordered_violations"] == 0),
}
# The host's speed, measured at the start of every run with the stack idle (``host_reference``): this
# machine's speed varies from day to day (and its CPU per delivery and latencies with it), so figures
# of different days are compared with these beside them.
HOST_REF_ROUNDS = 5
HOST_REF_ITERATIONS = 2000
HOST_RTT_REQUESTS = 300
SCENARIOS = ("baseline", "e2e", "latency", "latency_200", "floor", "fanout", "isolation", "backlog", "filters", "idle",
             "unordered", "ordered", "ordered_failing", "log")
# The ordered scenarios (issue 14): resources x events per resource, published interleaved (event k of
# every resource, then event k + 1) to one webhook with ordering "per_resource"; ``unordered`` is the
# same stream to a webhook without ordering. ``ordered_failing`` has the sink refuse (HTTP 500) the
# first attempt of ORDERED_FAIL_FRACTION of the events, chosen by a seeded shuffle, and retries after
# ORDERED_RETRY_DELAYS (the other scenarios keep 30s,5m,30m: none of their attempts fails).
ORDERED_FAIL_FRACTION = 0.2
ORDERED_FAIL_SEED = 14
ORDERED_RETRY_DELAYS = "300ms,300ms,300ms"
# The filters scenario's webhook filter: true for every bench event, so the same deliveries are made
# and the difference from e2e is the evaluation (a conversion, a comparison, a comprehension).
BENCH_FILTER = ('double(data.order.total) >= 10.0 && data.order.currency == "USD"'
                ' && data.order.lines.exists(l, l.quantity > 0)')


class BenchFailure(RuntimeError):
    """The run cannot be trusted: a delivery is missing, a process died, a wait timed out."""


@dataclass(frozen=True)
class Sizes:
    events: int = 50_000
    backlog: int = 100_000
    fanout_events: int = 2_000
    fanout_webhooks: int = 100
    latency_s: float = 30.0
    latency_rate: int = 500
    latency_200_s: float = 30.0
    latency_200_rate: int = 200
    floor_s: float = 15.0
    idle_s: float = 30.0
    isolation_events: int = 2_000
    isolation_webhooks: int = 10
    baseline_requests: int = 50_000
    ordered_resources: int = 1_000
    ordered_events: int = 10  # per resource
    log_deliveries: int = 10_000_000  # the log scenario's database (built once, measured each run)
    log_query_runs: int = 300  # timed executions of each log/explorer query
    runs: int = 3


SMOKE = Sizes(events=200, backlog=300, fanout_events=20, fanout_webhooks=10, latency_s=3.0, latency_rate=50,
              latency_200_s=3.0, latency_200_rate=50, floor_s=3.0, idle_s=3.0,
              isolation_events=30, isolation_webhooks=4, baseline_requests=200, ordered_resources=20,
              ordered_events=5, log_deliveries=3_000, log_query_runs=20, runs=1)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def latencies_ms(records: list, ids: set[str]) -> list[float]:
    """Publish-to-sink latency of each sink record for one of ``ids`` that carried its publish time."""
    return [(r[2] - r[3]) * 1000 for r in records if r[1] in ids and r[3] is not None]


def event_bytes(org_id: str, n: int, *, sent_at: float | None = None, event_id: str | None = None
                ) -> tuple[str, bytes, bytes]:
    """(event id, record value, record key) of one valid order.created event about order ``ord_<n>``,
    keyed by that order id as hookstream.core.publish.publish_event keys it."""
    data: dict = {"order": {"id": f"ord_{n}", "total": "42.10", "currency": "USD",
                            "lines": [{"id": f"line_{i}", "sku": f"sku_{i}", "quantity": 1, "price": "10.00"} for i in range(3)]}}
    if sent_at is not None:
        data["bench_sent_at"] = sent_at
    event = make_event(EVENT_TYPE, organization_id=org_id, store_id=STORE_ID, data=data, event_id=event_id)
    return event["id"], orjson.dumps(event), f"ord_{n}".encode()


def ordered_stream(org_id: str, resources: int, per_resource: int) -> tuple[list[tuple[str, bytes, bytes]],
                                                                             dict[str, tuple[int, int]]]:
    """The ordered scenarios' events, interleaved: event k of every order, then event k + 1. Returns
    the (id, value, key) to publish, in publish order, and each event id's (order number, k)."""
    events, position = [], {}
    for k in range(per_resource):
        for r in range(resources):
            event_id = f"evt_o{r}_k{k}"
            events.append(event_bytes(org_id, r, event_id=event_id))
            position[event_id] = (r, k)
    return events, position


def failing_firsts(event_ids: list[str]) -> set[str]:
    """The ``ORDERED_FAIL_FRACTION`` of ``event_ids`` whose first attempt the sink refuses: the same
    events in every run (a seeded shuffle), spread over the orders unevenly, as failures are."""
    return set(random.Random(ORDERED_FAIL_SEED).sample(event_ids, round(len(event_ids) * ORDERED_FAIL_FRACTION)))


def order_violations(records: list, position: dict[str, tuple[int, int]]) -> tuple[int, list[str]]:
    """Per order, the pairs (event k, event k + 1) where a request for event k (its first attempt, a
    retry, any at-least-once copy) reached the sink after the first request for event k + 1. Returns
    (how many such pairs, a few of them described)."""
    first: dict[tuple[int, int], int] = {}
    last: dict[tuple[int, int], int] = {}
    for r in records:
        if (pos := position.get(r[1])) is None:
            continue
        arrival = r[6]
        first[pos] = min(first.get(pos, arrival), arrival)
        last[pos] = max(last.get(pos, arrival), arrival)
    bad = [(r, k) for (r, k), arrived_last in last.items()
           if (r, k + 1) in first and arrived_last > first[(r, k + 1)]]
    examples = [f"ord_{r}: a request for event {k} (arrival {last[(r, k)]}) after the first for event {k + 1}"
                f" (arrival {first[(r, k + 1)]})" for r, k in sorted(bad)[:3]]
    return len(bad), examples


# --------------------------------------------------------------------------------------------- sink


def spawn_sink(log_dir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.bench.sink"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=open(log_dir / "sink.log", "ab"))


class SinkProcess:
    """The sink child process and a client for its control endpoints."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> SinkProcess:
        self.proc = spawn_sink(self._log_dir)
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 30)
        if not line.strip().isdigit():
            raise BenchFailure(f"sink did not start (said {line!r}); see {self._log_dir / 'sink.log'}")
        self.port = int(line)
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._session:
            await self._session.close()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _post(self, path: str, payload) -> None:
        async with self._session.post(self.url(path), data=orjson.dumps(payload)) as resp:
            resp.raise_for_status()

    async def set_secrets(self, secrets_by_path: dict[str, str]) -> None:
        await self._post("/_control/secrets", secrets_by_path)

    async def set_hang(self, paths: Iterable[str]) -> None:
        await self._post("/_control/hang", list(paths))

    async def set_fail_first(self, event_ids: Iterable[str]) -> None:
        await self._post("/_control/fail_first", list(event_ids))

    async def dump(self) -> list[tuple[str, str, float, float | None, bool, int, int]]:
        """(path, event id, arrival time, publish time or None, signature valid, status answered, arrival
        number) of every request since the last dump (tests/bench/sink.py)."""
        async with self._session.get(self.url("/_control/dump")) as resp:
            return orjson.loads(await resp.read())


# --------------------------------------------------------------------------------------- scenario


@dataclass
class Scenario:
    """One scenario's database, topics, webhooks and hookstream processes."""

    bench: Bench
    name: str
    webhooks: int
    filter: str | None = None  # set on every webhook of the scenario
    ordering: str = "none"  # set on every webhook of the scenario ("none" or "per_resource")
    # The publisher's linger: 5 ms batches a bulk publish; a steady-rate scenario sends each event at
    # once (0), so that its latency starts when the event is submitted, not when the publisher's batch is.
    publish_linger_ms: int = 5
    env: dict[str, str] = field(default_factory=dict)
    db_name: str = ""
    org_id: str = ""
    hooks: list[str] = field(default_factory=list)  # webhook ids
    procs: list[tuple[str, HookstreamProcess]] = field(default_factory=list)
    profilers: list[subprocess.Popen] = field(default_factory=list)
    conn: asyncpg.Connection | None = None
    # The scenario's own publisher, closed before its topics are deleted: a producer that outlived
    # them would refresh their metadata and so re-create them (the broker auto-creates topics).
    producer: RenewableProducer | None = None
    _closing: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @property
    def orders_topic(self) -> str:
        return self.env["HOOKSTREAM_SOURCE_TOPICS"].split(",")[1]

    @property
    def status_topic(self) -> str:
        return self.env["HOOKSTREAM_STATUS_TOPIC"]

    async def __aenter__(self) -> Scenario:
        bench = self.bench
        await settle(self.name)
        uid = f"b{secrets.token_hex(5)}"
        self.db_name = f"hs_bench_{uid}"
        url = await create_database(bench.admin_url, self.db_name, template=bench.template)
        self.env = {
            "KAFKA_BOOTSTRAP_SERVERS": bench.bootstrap,
            "DATABASE_URL": url,
            **isolated_names(uid),
            "HOOKSTREAM_RETRY_DELAYS": "30s,5m,30m",
            "HOOKSTREAM_ALLOW_HTTP": "true",
            "HOOKSTREAM_ALLOW_PRIVATE_NETWORKS": "true",
            "HOOKSTREAM_SENDER_MAX_IN_FLIGHT": str(SENDER_MAX_IN_FLIGHT),
            "HOOKSTREAM_ENDPOINT_MAX_CONCURRENCY": str(ENDPOINT_MAX_CONCURRENCY),
            "HOOKSTREAM_ENDPOINT_MAX_QUEUED": str(self.bench.endpoint_max_queued),
            "HOOKSTREAM_LOG_LEVEL": "INFO",
        }
        self.conn = await asyncpg.connect(url)
        self.org_id, _ = await make_org(self.conn, f"bench {self.name}", stores=(STORE_ID,))
        secrets_by_path = {}
        for _ in range(self.webhooks):
            webhook_id = f"wh_{secrets.token_hex(8)}"  # chosen here: the sink's path names it
            _, secret = await make_webhook(self.conn, self.org_id, bench.sink.url(f"/h/{webhook_id}"),
                                           event_types=[EVENT_TYPE], store_ids=[STORE_ID], filter_=self.filter,
                                           webhook_id=webhook_id, ordering=self.ordering)
            self.hooks.append(webhook_id)
            secrets_by_path[f"/h/{webhook_id}"] = secret
        await bench.sink.set_secrets(secrets_by_path)
        await ensure_topics(bench.bootstrap, self.env["HOOKSTREAM_SOURCE_TOPICS"].split(","),
                            partitions=SOURCE_PARTITIONS)
        self.producer = await self._closing.enter_async_context(open_producer(bench.bootstrap,
                                                                                     linger_ms=self.publish_linger_ms))
        return self

    async def __aexit__(self, *exc_info) -> None:
        await asyncio.gather(*(asyncio.to_thread(proc.stop, 40) for _, proc in self.procs))
        for profiler in self.profilers:
            try:
                await asyncio.to_thread(profiler.wait, 30)
            except subprocess.TimeoutExpired:
                profiler.kill()
        if self.conn:
            await self.conn.close()
        await self._closing.aclose()
        await delete_topics(self.bench.bootstrap, isolated_topics(self.env))
        await drop_database(self.bench.admin_url, self.db_name)

    def start(self, role: str, extra_env: dict[str, str] | None = None) -> HookstreamProcess:
        return self.start_command(role, "hookstream.cli", [role], extra_env)

    def start_command(self, role: str, module: str, args: list[str], extra_env: dict[str, str] | None = None
                      ) -> HookstreamProcess:
        """Start ``python -m <module> <args>`` with the scenario's environment, logging to the bench's log
        directory."""
        env = {**self.env, "HOOKSTREAM_METRICS_LISTEN": f"127.0.0.1:{free_port()}", **(extra_env or {})}
        log_path = self.bench.log_dir / f"{self.name}-{role}-{len(self.procs)}.log"
        proc = HookstreamProcess(args, env, log_path, module=module).start()
        if self.bench.profile_dir is not None:
            # Sampled from outside (py-spy, non-blocking), so the profile barely slows what it measures;
            # it ends, writing collapsed stacks, when the process exits.
            prof = self.bench.profile_dir / f"{self.name}-{role}-{len(self.procs)}.txt"
            self.profilers.append(subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(proc.pid), "--rate", "200",
                 "--nonblocking", "--format", "raw", "--output", str(prof)],
                stdout=subprocess.DEVNULL, stderr=open(log_path.with_suffix(".py-spy.log"), "ab")))
        self.procs.append((role, proc))
        return proc

    def check_alive(self) -> None:
        for role, proc in self.procs:
            if (code := proc.exit_code()) is not None:
                raise BenchFailure(f"{self.name}: {role} exited with {code}; see {self.bench.log_dir}")

    async def publish(self, count: int, *, start: int = 0, rate_per_s: float | None = None,
                      stamp: bool = False) -> list[str]:
        """Publish ``count`` events to the orders topic (at ``rate_per_s`` if given); returns their ids."""
        ids: list[str] = []
        futures = []
        producer = self.producer
        began = time.monotonic()
        for i in range(count):
            if rate_per_s is not None:
                # Wake every PUBLISH_TICK_S and send what is due: a steady rate without one timer per event.
                due = began + i / rate_per_s
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(max(wait, PUBLISH_TICK_S))
            event_id, value, key = event_bytes(self.org_id, start + i, sent_at=time.time() if stamp else None)
            ids.append(event_id)
            futures.append(await producer.send(self.orders_topic, value=value, key=key))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
        return ids

    async def publish_prepared(self, events: list[tuple[str, bytes, bytes]]) -> list[str]:
        """Publish prepared (id, value, key) events to the orders topic in this order; returns their ids."""
        futures = []
        for _, value, key in events:
            futures.append(await self.producer.send(self.orders_topic, value=value, key=key))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
        return [event_id for event_id, _, _ in events]

    async def count_succeeded(self, hooks: list[str] | None = None) -> int:
        if hooks is None:
            return await self.conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'succeeded'")
        return await self.conn.fetchval(
            "SELECT count(*) FROM deliveries WHERE status = 'succeeded' AND webhook_id = ANY($1::text[])", hooks)

    async def wait_until(self, what: str, predicate, timeout_s: float) -> float:
        """Poll ``predicate`` (async) until truthy, failing as soon as a process has died; returns the
        time.time() it became true."""

        async def reached() -> bool:
            if await predicate():
                return True
            self.check_alive()
            return False

        try:
            await wait_for(reached, timeout_s=timeout_s, interval_s=POLL_S, message=what)
        except WaitTimeout:
            raise BenchFailure(f"{self.name}: timed out after {timeout_s:.0f}s waiting for {what}") from None
        return time.time()

    async def wait_status(self, status: StatusReader, target: int, timeout_s: float) -> float:
        """time.time() at which the status topic held ``target`` succeeded records. Waiting on the topic
        (read anyway) instead of polling a count in PostgreSQL keeps the harness's queries off the
        database under test while the scenario runs; the database is checked once the topic is complete."""
        waiter = asyncio.ensure_future(status.wait_for(target, timeout_s))
        try:
            while not waiter.done():
                self.check_alive()
                await asyncio.wait({waiter}, timeout=0.5)
            return waiter.result()
        finally:
            waiter.cancel()

    async def wait_succeeded(self, expected: int, hooks: list[str] | None = None, timeout_s: float | None = None
                             ) -> float:
        timeout_s = timeout_s or 120 + expected / 100

        async def reached() -> bool:
            return await self.count_succeeded(hooks) >= expected

        return await self.wait_until(f"{expected} succeeded deliveries in PostgreSQL", reached, timeout_s)

    async def warm_up(self, events: int = 5) -> None:
        """Deliver a few events so every process has joined its group and created its topics."""
        await self.publish(events, start=10_000_000)
        await self.wait_succeeded(events * len(self.hooks), timeout_s=120)

    async def verify(self, expected: set[tuple[str, str]], status: StatusReader,
                     sink_records: list) -> None:
        """The honesty check: every expected (webhook, event) was received with a valid signature,
        is `succeeded` in PostgreSQL and has a `succeeded` record on the status topic."""
        failures = await self.conn.fetch(
            "SELECT outcome, error, count(*) AS n FROM attempts WHERE outcome <> 'succeeded'"
            " GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 5")
        for row in failures:
            log(f"{self.name}: {row['n']} attempts {row['outcome']}: {row['error']}")
        invalid = [r for r in sink_records if not r[4]]
        if invalid:
            raise BenchFailure(f"{self.name}: {len(invalid)} requests reached the sink with a bad signature")
        received = {(r[0].removeprefix("/h/"), r[1]) for r in sink_records if r[5] == 200}
        rows = await self.conn.fetch("SELECT webhook_id, event_id FROM deliveries WHERE status = 'succeeded'")
        durable = {(r["webhook_id"], r["event_id"]) for r in rows}
        problems = []
        for label, have in (("received by the sink", received), ("succeeded in PostgreSQL", durable),
                            ("succeeded on the status topic", status.succeeded)):
            missing = expected - have
            if missing:
                problems.append(f"{len(missing)} not {label} (e.g. {next(iter(missing))})")
        if problems:
            raise BenchFailure(f"{self.name}: of {len(expected)} deliveries, " + "; ".join(problems))


class StatusReader:
    """Reads a status topic from the beginning; notes when ``target`` succeeded records have arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                          enable_auto_commit=False, group_id=None, fetch_max_wait_ms=50)
        self.succeeded: set[tuple[str, str]] = set()
        self._task: asyncio.Task | None = None
        self._targets: list[tuple[int, asyncio.Future]] = []

    async def __aenter__(self) -> StatusReader:
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _read(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            for messages in batches.values():
                for m in messages:
                    record = orjson.loads(m.value)
                    if record["status"] == "succeeded":
                        self.succeeded.add((record["webhook_id"], record["event_id"]))
            now = time.time()
            for target, future in self._targets:
                if not future.done() and len(self.succeeded) >= target:
                    future.set_result(now)

    async def wait_for(self, target: int, timeout_s: float) -> float:
        """time.time() at which at least ``target`` distinct succeeded records had been read."""
        future = asyncio.get_running_loop().create_future()
        if len(self.succeeded) >= target:
            return time.time()
        self._targets.append((target, future))
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise BenchFailure(f"status topic: {len(self.succeeded)} of {target} succeeded records") from None


# -------------------------------------------------------------------------------------- the bench


@dataclass
class Bench:
    admin_url: str
    bootstrap: str
    sizes: Sizes
    log_dir: Path
    profile_dir: Path | None
    endpoint_max_queued: int = ENDPOINT_MAX_QUEUED
    template: str = ""
    sink: SinkProcess | None = None
    # Kafka's and PostgreSQL's server processes, counted in the CPU figures (found by listening port).
    infra_pids: dict[str, int] = field(default_factory=dict)
    # The log scenario's database, built in the first run and measured in every run; its plans and sizes.
    log_db: delivery_log.LogDatabase | None = None
    log_details: dict = field(default_factory=dict)

    async def log_scenario(self) -> dict[str, float]:
        if self.log_db is None:  # the build needs no quiet machine; the measuring does (below)
            log(f"log: building {self.sizes.log_deliveries:,} deliveries over {delivery_log.DAYS} days")
            self.log_db = await delivery_log.build(self.admin_url, self.template, self.sizes.log_deliveries, log)
            log(f"log: built {self.log_db.deliveries:,} deliveries ({self.log_db.events:,} events) in"
                f" {self.log_db.build_s:.0f}s: " + ", ".join(f"{k} {v:.0f}s" for k, v in self.log_db.build_phases.items()))
        await settle("log")
        figures, self.log_details = await delivery_log.measure(self.log_db, self.sizes.log_query_runs, log)
        return figures

    async def measure_delivery(self, sc: Scenario, ids: list[str], hooks: list[str], t0: float,
                               status: StatusReader) -> tuple[float, list]:
        """Wait for every (hook, id) to be durable in PostgreSQL and on the status topic, verify, and
        return (deliveries per second since ``t0``, sink records)."""
        expected = {(h, e) for h in hooks for e in ids}
        warm = 5 * len(sc.hooks)  # warm-up deliveries are also succeeded rows
        target = len(expected) + warm * (len(hooks) == len(sc.hooks))
        on_topic = await sc.wait_status(status, target, timeout_s=120 + len(expected) / 100)
        in_db = await sc.wait_succeeded(target, hooks=hooks)
        end = max(in_db, on_topic)
        records = await self.sink.dump()
        measured_hooks = set(hooks)
        await sc.verify(expected, status, [r for r in records if r[0].removeprefix("/h/") in measured_hooks])
        return len(expected) / (end - t0), records

    async def host_reference(self) -> tuple[float, float]:
        """(CPU ms of a fixed piece of a sender's work, median of ``HOST_REF_ROUNDS``; ms of one HTTP
        round trip to the sink over loopback, median of ``HOST_RTT_REQUESTS``), on the settled machine.

        The work (decode an event, sign a body, encode a record) is timed in this thread's CPU time,
        so it tells the host's speed, not how busy the machine is; the round trip includes waking
        another process, which is what every hop of the pipeline pays."""
        await settle("host")
        _, value, _ = event_bytes("org_host", 1)
        key = decode_secret(generate_secret())
        rounds = []
        for _ in range(HOST_REF_ROUNDS):
            began = time.thread_time()
            for i in range(HOST_REF_ITERATIONS):
                event = orjson.loads(value)
                body = orjson.dumps(event["data"])
                signature_header([key], event["id"], i, body)
                orjson.dumps({"id": event["id"], "status": "succeeded", "attempt": i, "body": body.decode()})
            rounds.append((time.thread_time() - began) * 1000)
        rtts = []
        async with aiohttp.ClientSession() as session:
            url = self.sink.url("/_control/count")
            for _ in range(HOST_RTT_REQUESTS):
                began = time.perf_counter()
                async with session.get(url) as resp:
                    await resp.read()
                rtts.append((time.perf_counter() - began) * 1000)
        return statistics.median(rounds), statistics.median(rtts)

    async def baseline(self) -> float:
        """A bare aiohttp client, same payload and concurrency as one sender toward one webhook."""
        n = self.sizes.baseline_requests
        concurrency = min(SENDER_MAX_IN_FLIGHT, ENDPOINT_MAX_CONCURRENCY)
        secret = generate_secret()
        key = decode_secret(secret)
        path = f"/h/baseline_{secrets.token_hex(4)}"
        await self.sink.set_secrets({path: secret})
        event_id, value, _ = event_bytes("org_baseline", 1)
        event = orjson.loads(value)
        body = orjson.dumps({"id": event["id"], "type": event["type"], "created_at": event["occurred_at"],
                             "organization_id": event["organization_id"], "store_id": event["store_id"],
                             "data": event["data"]})
        url = self.sink.url(path)
        remaining = iter(range(n))
        ids = [f"evt_base_{i}" for i in range(n)]

        async def worker(session: aiohttp.ClientSession) -> None:
            for i in remaining:
                ts = int(time.time())
                headers = {"content-type": "application/json", "webhook-id": ids[i], "webhook-timestamp": str(ts),
                           "webhook-signature": signature_header([key], ids[i], ts, body)}
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise BenchFailure(f"baseline: sink answered {resp.status}")

        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            t0 = time.time()
            await asyncio.gather(*(worker(session) for _ in range(concurrency)))
            elapsed = time.time() - t0
        records = await self.sink.dump()
        valid = {r[1] for r in records if r[0] == path and r[4]}
        if len(valid) != n:
            raise BenchFailure(f"baseline: {len(valid)} of {n} requests received with a valid signature")
        del event_id
        return n / elapsed

    async def e2e(self, name: str = "e2e", filter_: str | None = None) -> float:
        async with Scenario(self, name, 1, filter=filter_) as sc:
            sc.start("router")
            sc.start("sender")
            await sc.warm_up()
            async with StatusReader(self.bootstrap, sc.status_topic) as status:
                meter = CpuMeter({role: proc.pid for role, proc in sc.procs} | {"sink": self.sink.proc.pid})
                t0 = time.time()
                ids = await sc.publish(self.sizes.events)
                rps, _ = await self.measure_delivery(sc, ids, sc.hooks, t0, status)
                log(f"{sc.name}: CPU from the first publish to the last outcome, in % of one core: {meter.report()}")
            return rps

    async def ordered(self, name: str, *, ordering: str, failing: bool = False) -> tuple[float, int]:
        """The ordered stream (``ordered_stream``: resources x events, interleaved) to one webhook with
        ``ordering``; with ``failing``, the sink refuses the first attempt of ``failing_firsts`` of the
        events and the processes retry after ORDERED_RETRY_DELAYS. Returns (deliveries per second
        from the first publish to the last succeeded outcome, in PostgreSQL and on the status topic,
        measured as e2e is; the order violations the sink saw)."""
        resources, per_resource = self.sizes.ordered_resources, self.sizes.ordered_events
        env = {"HOOKSTREAM_RETRY_DELAYS": ORDERED_RETRY_DELAYS} if failing else None
        async with Scenario(self, name, 1, ordering=ordering) as sc:
            sc.start("router", env)
            sc.start("sender", env)
            await sc.warm_up()
            events, position = ordered_stream(sc.org_id, resources, per_resource)
            refused = failing_firsts([e[0] for e in events]) if failing else set()
            await self.sink.set_fail_first(refused)
            try:
                async with StatusReader(self.bootstrap, sc.status_topic) as status:
                    meter = CpuMeter({role: proc.pid for role, proc in sc.procs} | {"sink": self.sink.proc.pid})
                    t0 = time.time()
                    ids = await sc.publish_prepared(events)
                    rps, records = await self.measure_delivery(sc, ids, sc.hooks, t0, status)
                    log(f"{sc.name}: CPU from the first publish to the last outcome, in % of one core:"
                        f" {meter.report()}")
            finally:
                await self.sink.set_fail_first([])
            mine = [r for r in records if r[0] == f"/h/{sc.hooks[0]}" and r[1] in position]
            answered_500 = {r[1] for r in mine if r[5] == 500}
            if answered_500 != refused:
                raise BenchFailure(f"{sc.name}: the sink refused the first attempt of {len(answered_500)} events,"
                                   f" not of the {len(refused)} chosen")
            violations, examples = order_violations(mine, position)
            what = "order violations" if ordering != "none" else "out-of-order pairs (allowed: no ordering)"
            last_ok = max(r[2] for r in mine if r[5] == 200)
            log(f"{sc.name}: {len(ids)} events ({resources} orders x {per_resource}, interleaved), ordering"
                f" {ordering}, {len(refused)} first attempts refused, {len(mine)} requests; {rps:.0f}/s to the"
                f" last durable outcome, {len(ids) / (last_ok - t0):.0f}/s to the last 200 at the sink;"
                f" {violations} {what}" + "".join(f"; {e}" for e in examples))
            return rps, violations

    async def latency(self, name: str, rate: int, seconds: float) -> tuple[float, float]:
        """p50 and p99 (ms) from publish to the sink's receipt, at a steady ``rate`` for ``seconds``."""
        async with Scenario(self, name, 1, publish_linger_ms=0) as sc:
            sc.start("router")
            sc.start("sender")
            await sc.warm_up()
            ids = await self.publish_steady(sc, rate, seconds)
            async with StatusReader(self.bootstrap, sc.status_topic) as status:
                _, records = await self.measure_delivery(sc, ids, sc.hooks, time.time(), status)
            count = int(seconds * rate)
            warm = len(ids) - count
            # Every event is delivered and verified; the first ``warm`` (the ramp from idle) are not timed.
            wanted = set(ids[warm:])
            latencies = latencies_ms(records, wanted)
            if len(latencies) < count:
                raise BenchFailure(f"{name}: only {len(latencies)} of {count} events carried their publish time")
            ramp = latencies_ms(records, set(ids[:warm]))
            if ramp:
                log(f"{sc.name}: ramp from idle (first {warm} events, not timed): p50={percentile(ramp, 0.5):.0f}ms"
                    f" p99={percentile(ramp, 0.99):.0f}ms")
            await self.log_latency_stages(sc, [r for r in records if r[1] in wanted])
            return percentile(latencies, 0.50), percentile(latencies, 0.99)

    async def publish_steady(self, sc: Scenario, rate: int, seconds: float) -> list[str]:
        """Publish stamped events at ``rate`` for ``LATENCY_WARMUP_S`` (not timed) and then ``seconds``;
        returns every id, the untimed ones first."""
        count = int(seconds * rate)
        warm = int(min(LATENCY_WARMUP_S, seconds) * rate)
        # What earlier scenarios left in the page cache is written out now, not by the kernel's
        # periodic writeback in the middle of the measurement, where it queues in front of
        # PostgreSQL's commit flushes (seen as 100-200 ms commits in a 200/s run).
        await asyncio.to_thread(os.sync)
        # While publishing, this process does nothing else: the status topic is read (from its
        # start) afterwards, and a collector pause here, which would hold stamped events in the
        # producer and count as hookstream's latency, waits until the publishing ends.
        meter = CpuMeter({role: proc.pid for role, proc in sc.procs} | {"sink": self.sink.proc.pid})
        gc.disable()
        try:
            ids = await sc.publish(warm + count, rate_per_s=rate, stamp=True)
        finally:
            gc.enable()
        log(f"{sc.name}: CPU while publishing, in % of one core: {meter.report()}")
        return ids

    async def floor(self) -> float:
        """p50 (ms) of the design's bare minimum at the latency_200 rate: two produce -> consume hops,
        one PostgreSQL commit, one signed POST (tests/bench/floor.py), with hookstream's client settings."""
        rate, seconds = self.sizes.latency_200_rate, self.sizes.floor_s
        async with Scenario(self, "floor", 1, publish_linger_ms=0) as sc:
            hop_topic = f"{sc.env['HOOKSTREAM_DELIVERY_TOPIC']}.floor"
            await ensure_topics(self.bootstrap, [hop_topic])
            path = "/h/floor"
            secret = generate_secret()
            await self.sink.set_secrets({path: secret})
            common = ["--bootstrap", self.bootstrap, "--hop", hop_topic]
            sc.start_command("hop1", "tests.bench.floor", ["hop1", *common, "--source", sc.orders_topic,
                                      "--group", f"{sc.env['HOOKSTREAM_ROUTER_GROUP']}.floor",
                                      "--database", sc.env["DATABASE_URL"]])
            sc.start_command("hop2", "tests.bench.floor", ["hop2", *common, "--sink", self.sink.url(path),
                                      "--group", f"{sc.env['HOOKSTREAM_SENDER_GROUP']}.floor", "--secret", secret])
            try:
                warm = await sc.publish(5, start=10_000_000)
                await self.wait_sink(sc, set(warm))
                ids = await self.publish_steady(sc, rate, seconds)
                records = await self.wait_sink(sc, set(ids))
            finally:
                await delete_topics(self.bootstrap, [hop_topic])
            timed = set(ids[len(ids) - int(seconds * rate):])
            latencies = latencies_ms(records, timed)
            p50 = percentile(latencies, 0.50)
            # p99 only logged: what a machine's stalls add to the bare path, next to latency_200's p99
            log(f"floor: p50={p50:.1f}ms p99={percentile(latencies, 0.99):.1f}ms")
            return p50

    async def wait_sink(self, sc: Scenario, ids: set[str]) -> list:
        """Sink records until every one of ``ids`` has arrived (the floor has no status topic)."""
        records: list = []
        seen: set[str] = set()

        async def all_arrived() -> bool:
            sc.check_alive()
            batch = await self.sink.dump()
            records.extend(batch)
            seen.update(r[1] for r in batch)
            return ids <= seen

        try:
            await wait_for(all_arrived, timeout_s=120, interval_s=POLL_S, message="the sink")
        except WaitTimeout:
            raise BenchFailure(f"{sc.name}: {len(ids - seen)} of {len(ids)} events never reached the sink") from None
        return records

    async def idle(self) -> float:
        """The whole stack's CPU (router, sender, api, Kafka, PostgreSQL), in % of one core, over
        ``idle_s`` seconds with no events, after a warm-up delivery."""
        async with Scenario(self, "idle", 1) as sc:
            sc.start("router")
            sc.start("sender")
            sc.start("api", {"HOOKSTREAM_API_LISTEN": f"127.0.0.1:{free_port()}"})
            await sc.warm_up()
            await settle(sc.name, quiet_pct=15.0)
            await asyncio.sleep(2.0)  # the last outcome flush and offset commits
            meter = StackCpu({role: proc.pid for role, proc in sc.procs} | self.infra_pids)
            await asyncio.sleep(self.sizes.idle_s)
            sc.check_alive()
            used = meter.used()
            elapsed = meter.elapsed()
            log(f"{sc.name}: CPU with no events, % of one core: {meter.format(used, elapsed / 100, '%')}")
            return 100 * sum(used.values()) / elapsed

    async def log_latency_stages(self, sc: Scenario, records: list) -> None:
        """Where the time goes: published -> routed (the router's store statement began) -> attempt
        started (the sender's POST began) -> received by the sink; p50/p99 of each stage, and the
        seconds of the run in which the slowest 1 % of events were published (a cluster = a stall)."""
        rows = await sc.conn.fetch(
            "SELECT d.event_id, extract(epoch FROM d.created_at) AS routed, extract(epoch FROM a.started_at) AS sent"
            " FROM deliveries d JOIN attempts a ON a.delivery_id = d.id AND a.attempt = 1")
        stages = {r["event_id"]: (float(r["routed"]), float(r["sent"])) for r in rows}
        spans: dict[str, list[float]] = {"publish->routed": [], "routed->post": [], "post->sink": []}
        total = []
        for _path, event_id, arrived, published, *_ in records:
            if event_id not in stages:
                continue
            routed, sent = stages[event_id]
            spans["publish->routed"].append((routed - published) * 1000)
            spans["routed->post"].append((sent - routed) * 1000)
            spans["post->sink"].append((arrived - sent) * 1000)
            total.append((arrived - published, published, routed - published, sent - routed, arrived - sent))
        if not total:
            return
        (self.log_dir / f"{sc.name}-stages.json").write_bytes(orjson.dumps(sorted(total, key=lambda t: t[1])))
        parts = ", ".join(f"{name} p50={percentile(v, 0.5):.0f}ms p99={percentile(v, 0.99):.0f}ms"
                          for name, v in spans.items())
        log(f"{sc.name}: stages: {parts}")
        total.sort()
        start = min(t[1] for t in total)
        slow = total[int(len(total) * 0.99):]
        seconds = collections.Counter(int(t[1] - start) for t in slow)
        log(f"{sc.name}: slowest 1% by second of the run: "
            + ", ".join(f"{s}s:{n}" for s, n in sorted(seconds.items()))
            + "; their stages (median ms): " + ", ".join(
                f"{name}={statistics.median(t[i] for t in slow) * 1000:.0f}"
                for i, name in enumerate(spans, start=2)))

    async def fanout(self) -> float:
        async with Scenario(self, "fanout", self.sizes.fanout_webhooks) as sc:
            sc.start("router")
            sc.start("sender")
            await sc.warm_up(1)
            async with StatusReader(self.bootstrap, sc.status_topic) as status:
                t0 = time.time()
                ids = await sc.publish(self.sizes.fanout_events)
                expected = {(h, e) for h in sc.hooks for e in ids}
                warm = len(sc.hooks)
                on_topic = await sc.wait_status(status, len(expected) + warm, timeout_s=120 + len(expected) / 100)
                in_db = await sc.wait_succeeded(len(expected) + warm)
                records = await self.sink.dump()
                await sc.verify(expected, status, records)
                return len(expected) / (max(in_db, on_topic) - t0)

    async def isolation_once(self, hang: bool) -> float:
        """Healthy deliveries per second across the healthy webhooks, with or without one hanging."""
        async with Scenario(self, "isolation-hang" if hang else "isolation-ok", self.sizes.isolation_webhooks) as sc:
            timeout = {"HOOKSTREAM_REQUEST_TIMEOUT": ISOLATION_TIMEOUT}
            sc.start("router", timeout)
            sc.start("sender", timeout)
            await sc.warm_up(1)
            hanging, healthy = sc.hooks[0], sc.hooks[1:]
            if hang:
                await self.sink.set_hang([f"/h/{hanging}"])
            try:
                async with StatusReader(self.bootstrap, sc.status_topic) as status:
                    t0 = time.time()
                    ids = await sc.publish(self.sizes.isolation_events)
                    expected = {(h, e) for h in healthy for e in ids}

                    async def on_topic() -> bool:
                        return len({p for p in status.succeeded if p[0] != hanging}) >= len(expected) + len(healthy)

                    topic_at = await sc.wait_until("healthy status records", on_topic, 120 + len(expected) / 100)
                    in_db = await sc.wait_succeeded(len(expected) + len(healthy), hooks=healthy)
                    records = await self.sink.dump()
                    await sc.verify(expected, status, [r for r in records if r[0] != f"/h/{hanging}"])
                    return len(expected) / (max(in_db, topic_at) - t0)
            finally:
                await self.sink.set_hang([])

    async def backlog(self, senders: int) -> tuple[float, float, float]:
        """Publish the backlog with no sender running, then start ``senders`` replicas.

        Returns (deliveries per second from the first sink arrival, peak RSS MiB of the first sender,
        CPU core-ms per delivery of router + senders + Kafka + PostgreSQL from the first publish to
        the last outcome).
        """
        n = self.sizes.backlog
        async with Scenario(self, f"backlog{senders}", 1) as sc:
            router = sc.start("router")
            meter = StackCpu({"router": router.pid} | self.infra_pids)
            ids = await sc.publish(n)

            # Waiting on the delivery topic's end offsets, not on a count of deliveries polled in
            # PostgreSQL: the harness's own queries would be counted in the CPU figure.
            await self.wait_topic_filled(sc.env["HOOKSTREAM_DELIVERY_TOPIC"], n, timeout_s=120 + n / 100)
            if (routed := await sc.conn.fetchval("SELECT count(*) FROM deliveries")) < n:
                raise BenchFailure(f"{sc.name}: the delivery topic holds {n} tasks but only {routed} deliveries")
            async with StatusReader(self.bootstrap, sc.status_topic) as status:
                procs = [sc.start("sender") for _ in range(senders)]
                meter.add({f"sender{i}": proc.pid for i, proc in enumerate(procs)})
                peak_kb = 0

                async def done() -> bool:
                    nonlocal peak_kb
                    peak_kb = max(peak_kb, read_vm_hwm_kb(procs[0].pid))
                    return len(status.succeeded) >= n

                on_topic = await sc.wait_until(f"{n} succeeded status records", done, 120 + n / 100)
                used = meter.used()
                in_db = await sc.wait_succeeded(n)
                peak_kb = max(peak_kb, read_vm_hwm_kb(procs[0].pid))
                records = await self.sink.dump()
                await sc.verify({(sc.hooks[0], e) for e in ids}, status, records)
                cpu_ms = 1000 * sum(used.values()) / n
                log(f"{sc.name}: CPU per delivery, core-ms: {StackCpu.format(used, n / 1000)}; total {cpu_ms:.3f}")
                first = min(r[2] for r in records)
                return n / (max(in_db, on_topic) - first), peak_kb / 1024, cpu_ms

    async def wait_topic_filled(self, topic: str, n: int, timeout_s: float = 120) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None)
        await consumer.start()

        async def filled() -> bool:
            parts = consumer.partitions_for_topic(topic) or set()
            if not parts:
                await consumer._client.force_metadata_update()
                return False
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
            return sum(ends.values()) >= n

        try:
            await wait_for(filled, timeout_s=timeout_s, interval_s=0.2, message=f"{n} tasks on {topic}")
        except WaitTimeout:
            raise BenchFailure(f"delivery topic {topic} never held {n} tasks") from None
        finally:
            await consumer.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 when it is gone)."""
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy (not idle, not waiting for I/O) since boot."""
    with open("/proc/stat") as fh:
        ticks = [int(x) for x in fh.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


async def settle(name: str, *, quiet_pct: float = 25.0, max_wait_s: float = 20.0) -> None:
    """Wait (up to ``max_wait_s``) until the machine is quiet: the previous scenario's after-work
    (dropping its database and the checkpoint that forces, the broker flushing) must not be measured
    as this scenario's."""
    deadline = time.monotonic() + max_wait_s
    # The broker removes a deleted topic's files a second later (log.segment.delete.delay.ms, set by
    # deploy/local/kafka/start.sh); that and the dropped database are written out before measuring.
    await asyncio.sleep(SETTLE_MIN_S)
    await asyncio.to_thread(os.sync)
    busy = 100.0
    while time.monotonic() < deadline:
        before, t0 = machine_busy_seconds(), time.monotonic()
        await asyncio.sleep(0.5)
        busy = 100 * (machine_busy_seconds() - before) / (time.monotonic() - t0)
        if busy < quiet_pct:
            return
    log(f"{name}: the machine did not settle below {quiet_pct:.0f}% busy in {max_wait_s:.0f}s (last {busy:.0f}%)")


class CpuMeter:
    """Where the CPU went during a stretch: named processes, this harness, and the rest of the machine
    (Kafka, PostgreSQL, the kernel), each in % of one core."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        now["harness"] = cpu_seconds(os.getpid())
        now["machine"] = machine_busy_seconds()
        now["wall"] = time.monotonic()
        return now

    def report(self) -> str:
        end = self._read()
        used = {k: end[k] - self._start[k] for k in end}
        wall = used.pop("wall")
        machine = used.pop("machine")
        rest = machine - sum(used.values())
        parts = [f"{name} {100 * v / wall:.0f}%" for name, v in used.items()]
        return (", ".join(parts) + f", everything else (Kafka, PostgreSQL, kernel) {100 * rest / wall:.0f}%;"
                f" machine busy {100 * machine / wall:.0f}% of {100 * (os.cpu_count() or 1)}%")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3 onward), or None when gone."""
    with contextlib.suppress(OSError, IndexError):
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    return None


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and every live descendant (user + system), plus what its exited
    children used (cutime + cstime): a PostgreSQL server's backends are children of the postmaster."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            parents[int(entry)] = int(fields[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in tree:
        if (fields := _stat_fields(pid)) is not None:
            total += int(fields[11]) + int(fields[12])
            if pid == root:
                total += int(fields[13]) + int(fields[14])
    return total / tick


def listening_pid(port: int) -> int | None:
    """The process listening on local TCP ``port`` (found through /proc/net/tcp and each process's
    sockets), or None: the bench's own Kafka and PostgreSQL, wherever they were started from."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            with open(table) as fh:
                for line in list(fh)[1:]:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{cols[9]}]")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        return int(entry)
    return None


class StackCpu:
    """CPU seconds used since creation by named process trees (hookstream's processes, Kafka, PostgreSQL)."""

    def __init__(self, roots: dict[str, int]) -> None:
        self._roots = roots
        self._start = {name: tree_cpu_seconds(pid) for name, pid in roots.items()}
        self._t0 = time.monotonic()

    def add(self, roots: dict[str, int]) -> None:
        """Count these processes too (started after the meter: from zero)."""
        self._roots.update(roots)
        self._start.update({name: 0.0 for name in roots})

    def used(self) -> dict[str, float]:
        return {name: tree_cpu_seconds(pid) - self._start[name] for name, pid in self._roots.items()}

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    @staticmethod
    def format(used: dict[str, float], per: float | None = None, unit: str = "") -> str:
        return ", ".join(f"{name} {v / per if per else v:.3g}{unit}" for name, v in used.items())


def read_vm_hwm_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    return 0


async def run_once(bench: Bench, only: set[str], index: int) -> dict[str, float]:
    out: dict[str, float] = {}
    out["host_cpu_ref_ms"], out["host_rtt_ms"] = await bench.host_reference()
    log(f"run {index}: host reference: {out['host_cpu_ref_ms']:.1f} CPU ms of fixed work,"
        f" {out['host_rtt_ms']:.3f} ms a loopback HTTP round trip")
    if "baseline" in only:
        out["baseline_rps"] = await bench.baseline()
        log(f"run {index}: baseline_rps={out['baseline_rps']:.0f}")
    if "e2e" in only:
        out["e2e_rps"] = await bench.e2e()
        log(f"run {index}: e2e_rps={out['e2e_rps']:.0f}")
        if "baseline_rps" in out:
            out["ratio"] = out["e2e_rps"] / out["baseline_rps"]
    if "filters" in only:
        # the e2e scenario again, its webhook filtered: routed and delivered events per second
        out["filters_rps"] = await bench.e2e("filters", BENCH_FILTER)
        log(f"run {index}: filters_rps={out['filters_rps']:.0f}")
        if "e2e_rps" in out:
            out["filters_ratio"] = out["filters_rps"] / out["e2e_rps"]
    if "latency" in only:
        out["latency_p50_ms"], out["latency_p99_ms"] = await bench.latency(
            "latency", bench.sizes.latency_rate, bench.sizes.latency_s)
        log(f"run {index}: latency p50={out['latency_p50_ms']:.1f}ms p99={out['latency_p99_ms']:.1f}ms")
    if "latency_200" in only:
        out["latency_200_p50_ms"], out["latency_200_p99_ms"] = await bench.latency(
            "latency_200", bench.sizes.latency_200_rate, bench.sizes.latency_200_s)
        log(f"run {index}: latency_200 p50={out['latency_200_p50_ms']:.1f}ms"
            f" p99={out['latency_200_p99_ms']:.1f}ms")
    if "floor" in only:
        out["floor_p50_ms"] = await bench.floor()
        log(f"run {index}: floor p50={out['floor_p50_ms']:.1f}ms")
        if "latency_200_p50_ms" in out:
            out["latency_200_over_floor"] = out["latency_200_p50_ms"] / out["floor_p50_ms"]
    if "fanout" in only:
        out["fanout_rps"] = await bench.fanout()
        log(f"run {index}: fanout_rps={out['fanout_rps']:.0f}")
    if "isolation" in only:
        ok = await bench.isolation_once(hang=False)
        hung = await bench.isolation_once(hang=True)
        out["isolation_ratio"] = hung / ok
        log(f"run {index}: isolation healthy rps {hung:.0f} (one hanging) / {ok:.0f} (none)")
    if "backlog" in only:
        one, rss, cpu_ms = await bench.backlog(1)
        two, _, _ = await bench.backlog(2)
        out["sender_peak_rss_mb"] = rss
        out["cpu_ms_per_delivery"] = cpu_ms
        out["scale_2_over_1"] = two / one
        log(f"run {index}: backlog drain 1 sender {one:.0f}/s (peak RSS {rss:.0f} MiB), 2 senders {two:.0f}/s")
    if "idle" in only:
        out["idle_cpu_pct"] = await bench.idle()
        log(f"run {index}: idle stack CPU {out['idle_cpu_pct']:.1f}% of one core")
    if "unordered" in only:
        # the ordered scenarios' stream to a webhook without ordering: their baseline
        out["unordered_rps"], _ = await bench.ordered("unordered", ordering="none")
        log(f"run {index}: unordered_rps={out['unordered_rps']:.0f}")
    if "ordered" in only:
        out["ordered_rps"], violations = await bench.ordered("ordered", ordering="per_resource")
        out["ordered_violations"] = violations
        log(f"run {index}: ordered_rps={out['ordered_rps']:.0f} ({violations} order violations)")
        if "unordered_rps" in out:
            out["ordered_over_unordered"] = out["ordered_rps"] / out["unordered_rps"]
    if "ordered_failing" in only:
        out["ordered_failing_rps"], violations = await bench.ordered("ordered_failing", ordering="per_resource",
                                                                     failing=True)
        out["ordered_violations"] = out.get("ordered_violations", 0) + violations
        log(f"run {index}: ordered_failing_rps={out['ordered_failing_rps']:.0f} ({violations} order violations)")
        if "unordered_rps" in out:
            out["ordered_failing_over_unordered"] = out["ordered_failing_rps"] / out["unordered_rps"]
    if "log" in only:
        out.update(await bench.log_scenario())
        log(f"run {index}: log p50 {out['log_p50_ms']:.2f}ms p99 {out['log_p99_ms']:.2f}ms,"
            f" {out['log_bytes_per_delivery']:.0f} bytes per delivery")
    return out


def format_table(results: dict[str, float]) -> str:
    width = max(len(key) for key in RESULT_KEYS)
    lines = [f"{'metric':<{width}} {'value':>10}  {'target':<18} result", "-" * (width + 40)]
    for key in RESULT_KEYS:
        if key not in results:
            continue
        target, check = TARGETS.get(key, ("", None))
        verdict = ""
        if check is not None and (key != "fanout_rps" or "e2e_rps" in results):
            verdict = "PASS" if check(results) else "FAIL"
        lines.append(f"{key:<{width}} {results[key]:>10.2f}  {target:<18} {verdict}")
    return "\n".join(lines)


def prepare_dirs(out: str, profile: bool) -> tuple[Path, Path, Path | None]:
    """(results file, log directory, profile directory or None), created next to ``out``."""
    out_path = Path(out).resolve()
    log_dir = out_path.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    profile_dir = out_path.parent / "profiles" if profile else None
    if profile_dir is not None:
        profile_dir.mkdir(exist_ok=True)
    return out_path, log_dir, profile_dir


async def amain(args: argparse.Namespace) -> int:
    sizes = SMOKE if args.smoke else Sizes()
    overrides = {k: v for k, v in {
        "events": args.events, "backlog": args.backlog, "fanout_events": args.fanout_events,
        "fanout_webhooks": args.fanout_webhooks, "latency_s": args.latency_seconds,
        "latency_rate": args.latency_rate, "isolation_events": args.isolation_events,
        "baseline_requests": args.baseline_requests, "ordered_resources": args.ordered_resources,
        "ordered_events": args.ordered_events, "log_deliveries": args.log_deliveries,
        "log_query_runs": args.log_query_runs, "runs": args.runs}.items() if v is not None}
    sizes = dataclasses.replace(sizes, **overrides)
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    unknown = only - set(SCENARIOS)
    if unknown:
        print(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    env = load_local_env()
    admin_url = env.get("DATABASE_URL")
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS")
    if not admin_url or not bootstrap:
        print("DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS are not set and there is no .local/env: run `make up`",
              file=sys.stderr)
        return 2
    out_path, log_dir, profile_dir = prepare_dirs(args.out, args.profile)
    rejected = validate_event(event_bytes("org_check", 1, sent_at=time.time())[1], max_bytes=256 * 1024)
    if isinstance(rejected, Rejection):
        print(f"the bench's own event is invalid: {rejected}", file=sys.stderr)
        return 1
    log(f"sizes: {sizes}; scenarios: {', '.join(s for s in SCENARIOS if s in only)}; logs in {log_dir}")

    bench = Bench(admin_url, bootstrap, sizes, log_dir, profile_dir, endpoint_max_queued=args.endpoint_max_queued)
    bench.template = f"hs_bench_template_{secrets.token_hex(4)}"
    for name, port in (("kafka", int(bootstrap.split(",")[0].rsplit(":", 1)[1])),
                       ("postgres", urlsplit(admin_url).port or 5432)):
        if (pid := listening_pid(port)) is not None:
            bench.infra_pids[name] = pid
        else:
            log(f"{name} (port {port}) is not a process of this machine: its CPU is not in the CPU figures")
    template_url = await create_database(admin_url, bench.template)
    runs: list[dict[str, float]] = []
    try:
        await migrate(template_url)
        async with SinkProcess(log_dir) as sink:
            bench.sink = sink
            for i in range(1, sizes.runs + 1):
                runs.append(await run_once(bench, only, i))
    except BenchFailure as exc:
        print(f"bench FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if bench.log_db is not None:
            await drop_database(admin_url, bench.log_db.name)
        await drop_database(admin_url, bench.template)

    results = {key: AGGREGATES.get(key, statistics.median)([r[key] for r in runs])
               for key in RESULT_KEYS if key in runs[0]}
    out_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    if bench.log_details:
        details_path = out_path.with_name(out_path.stem + ".log-details.json")
        details_path.write_bytes(orjson.dumps(bench.log_details, option=orjson.OPT_INDENT_2) + b"\n")
        print(delivery_log.format_details(bench.log_details))
    print(f"hookstream bench: {sizes.runs} run(s), medians; {'smoke sizes' if args.smoke else 'sizes'}: "
          f"events={sizes.events} backlog={sizes.backlog} fanout={sizes.fanout_events}x{sizes.fanout_webhooks} "
          f"latency={sizes.latency_s:g}s@{sizes.latency_rate}/s isolation={sizes.isolation_events}x"
          f"{sizes.isolation_webhooks} baseline={sizes.baseline_requests}"
          f" ordered={sizes.ordered_resources}x{sizes.ordered_events} log={sizes.log_deliveries}"
          f"x{sizes.log_query_runs} queries")
    print(format_table(results))
    print(f"written: {out_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny counts and 1 run (the test suite's smoke run)")
    p.add_argument("--runs", type=int, help="repetitions; medians are reported (default 3)")
    p.add_argument("--events", type=int, help="e2e events to one webhook (default 50000)")
    p.add_argument("--backlog", type=int, help="backlog deliveries for RSS and scaling (default 100000)")
    p.add_argument("--fanout-events", type=int, help="fan-out events (default 2000)")
    p.add_argument("--fanout-webhooks", type=int, help="webhooks each fan-out event matches (default 100)")
    p.add_argument("--latency-seconds", type=float, help="steady-rate duration (default 30)")
    p.add_argument("--latency-rate", type=int, help="steady rate, events/s (default 500)")
    p.add_argument("--isolation-events", type=int, help="events in each isolation run (default 2000)")
    p.add_argument("--baseline-requests", type=int, help="bare-client requests (default 50000)")
    p.add_argument("--ordered-resources", type=int,
                   help="orders in the unordered/ordered/ordered_failing stream (default 1000)")
    p.add_argument("--ordered-events", type=int, help="events per order in that stream (default 10)")
    p.add_argument("--log-deliveries", type=int,
                   help="deliveries in the log scenario's database, over 30 days (default 10000000)")
    p.add_argument("--log-query-runs", type=int, help="timed runs of each log scenario query (default 300)")
    p.add_argument("--endpoint-max-queued", type=int, default=ENDPOINT_MAX_QUEUED,
                   help=f"HOOKSTREAM_ENDPOINT_MAX_QUEUED for the senders (default {ENDPOINT_MAX_QUEUED}, "
                        "hookstream's own default)")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--profile", action="store_true",
                   help="sample router and senders with py-spy (collapsed stacks in profiles/*.txt next to --out)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"results file (default {DEFAULT_OUT})")
    return p


def main(argv: list[str] | None = None) -> int:
    # aiokafka warns while a fresh topic elects its leaders; the sends are retried and awaited.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    # The same event loop as hookstream's processes (hookstream.cli): the baseline client is then a
    # like-for-like ceiling for the sender, and the publisher takes less CPU from what it measures.
    return uvloop.run(amain(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
