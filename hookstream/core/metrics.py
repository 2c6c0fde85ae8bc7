"""Prometheus metrics (CONTRACT §7). Labels stay low-cardinality: per-webhook detail lives in the delivery log.

Each metric names the services that export it (``exported_by``): a ``router`` process serves only the
router's families and a ``sender`` only the sender's, so a dashboard summing a family over every
scraped process does not also add the other service's zeros, and a family's presence says which
process owns it. ``hookstream all`` exports all of them (:func:`export_for`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Collection, Iterable, Iterator
from typing import TypeVar

from aiohttp import web
from aiokafka import TopicPartition
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric

from hookstream.core import liveness

ROUTER = frozenset({"router"})
SENDER = frozenset({"sender"})
ROUTER_AND_SENDER = ROUTER | SENDER
EVERY_SERVICE = ROUTER | SENDER | frozenset({"api"})
# family name (as collected: ``hookstream_x`` for ``hookstream_x_total``) -> the services exporting it
OWNERS: dict[str, frozenset[str]] = {}
_M = TypeVar("_M", bound=MetricWrapperBase)


def exported_by(services: frozenset[str], metric: _M) -> _M:
    """Register ``metric`` as one that only processes running one of ``services`` export."""
    for family in metric.describe():
        OWNERS[family.name] = services
    return metric


class ProcessRegistry(CollectorRegistry):
    """The default registry seen by one process: families owned by services it does not run are left
    out; everything else (the client's ``process_*`` / ``python_*``, the API's own) is kept."""

    def __init__(self, services: Collection[str]) -> None:
        super().__init__(auto_describe=False)
        self.services = frozenset(services)

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            owners = OWNERS.get(family.name)
            if owners is None or owners & self.services:
                yield family


_exported: CollectorRegistry = REGISTRY  # until export_for: everything (tests running services in-process)


def export_for(services: Collection[str]) -> None:
    """From now on /metrics of this process serves the families of ``services`` (router, sender, api)."""
    global _exported
    _exported = ProcessRegistry(services)


EVENTS_CONSUMED = exported_by(ROUTER, Counter("hookstream_events_consumed_total", "Domain-event records read by the router", ["topic"]))
EVENTS_REJECTED = exported_by(ROUTER, Counter(
    "hookstream_events_rejected_total", "Domain-event records sent to the dead-letter topic", ["reason"]
))
EVENTS_DUPLICATE = exported_by(ROUTER, Counter(
    "hookstream_events_duplicate_total", "Domain events dropped because their id was already routed"
))
DELIVERIES_SCHEDULED = exported_by(ROUTER, Counter(
    "hookstream_deliveries_scheduled_total", "Deliveries enqueued by the router (one per matched webhook)",
    ["event_type"],
))
DELIVERY_ATTEMPTS = exported_by(SENDER, Counter(
    "hookstream_delivery_attempts_total", "HTTP delivery attempts by outcome, status class and event type",
    ["outcome", "status_class", "event_type"],
))
DELIVERIES_FINISHED = exported_by(SENDER, Counter(
    "hookstream_deliveries_finished_total", "Deliveries that reached a final state", ["status"]
))
ATTEMPT_DURATION = exported_by(SENDER, Histogram(
    "hookstream_delivery_attempt_duration_seconds", "Duration of one delivery attempt",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
))
DELIVERY_LATENCY = exported_by(SENDER, Histogram(
    "hookstream_delivery_latency_seconds", "From the event's occurred_at to its successful delivery",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200),
))
INFLIGHT = exported_by(SENDER, Gauge("hookstream_inflight_deliveries", "Deliveries taken from Kafka and not yet durably finished"))
DELIVERIES_DEFERRED = exported_by(SENDER, Counter(
    "hookstream_deliveries_deferred_total",
    "Deliveries put back briefly without an attempt because their endpoint is slow or failing and saturated",
))
REPLAYS_SKIPPED = exported_by(SENDER, Counter(
    "hookstream_replayed_attempts_skipped_total",
    "Delivery tasks read again after a crash or rebalance whose attempt was already recorded",
))
RETRIES_SCHEDULED = exported_by(SENDER, Counter(
    "hookstream_retries_scheduled_total", "Automatic retries scheduled, by retry tier (1..3)", ["tier"]
))
RETRY_BACKLOG = exported_by(SENDER, Gauge(
    "hookstream_retry_backlog", "Deliveries waiting in the durable retry schedule, by retry tier", ["tier"]
))
BREAKER_TRANSITIONS = exported_by(SENDER, Counter(
    "hookstream_circuit_breaker_transitions_total", "Endpoint circuit-breaker state changes", ["state"]
))
FLUSH_BATCH_SIZE = exported_by(SENDER, Histogram(
    "hookstream_outcome_flush_batch_size", "Attempt outcomes written per flush",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
))
FLUSH_DURATION = exported_by(SENDER, Histogram(
    "hookstream_outcome_flush_duration_seconds", "Time to make one batch of outcomes durable",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
))
EVENTS_UNMATCHED = exported_by(ROUTER, Counter(
    "hookstream_events_unmatched_total",
    "Valid events routed to no webhook (reason: unknown_organization | no_webhook | filtered, when every"
    " match was filtered out by its webhook's filter)",
    ["reason"],
))
FILTER_ERRORS = exported_by(ROUTER, Counter(
    "hookstream_filter_errors_total",
    "Filter evaluations that failed (a missing key, a bad conversion, a non-boolean result): nothing routed",
))
POISON_RECORDS = exported_by(ROUTER_AND_SENDER, Counter(
    "hookstream_poison_records_total",
    "Records PostgreSQL or Kafka refused permanently, isolated from their batch and dealt with alone"
    " (stage: router | outcomes | retry_pump; action: dead_lettered | recorded_reduced | dropped | failed)",
    ["stage", "action"],
))
ATTEMPT_CRASHES = exported_by(SENDER, Counter(
    "hookstream_attempt_crashes_total",
    "Attempts that raised instead of returning an outcome (recorded as failed, retryable attempts)",
))
CONSUMER_LAG = exported_by(ROUTER_AND_SENDER, Gauge(
    "hookstream_consumer_lag", "Records behind the partition's end, per consumer group and partition",
    ["group", "topic", "partition"],
))

# Partition upkeep runs in every process, one pass at a time (hookstream/core/partitions.py): the
# process that did the last pass reports these.
PARTITIONS_DROPPED = exported_by(EVERY_SERVICE, Counter(
    "hookstream_partitions_dropped_total", "Partitions of the delivery log dropped as older than HOOKSTREAM_RETENTION"))
RETENTION_KEPT_UNFINISHED = exported_by(EVERY_SERVICE, Gauge(
    "hookstream_retention_kept_unfinished_deliveries",
    "Deliveries older than HOOKSTREAM_RETENTION kept because they have not finished (at the last upkeep pass)"))


@functools.cache
def attempts_counter(outcome: str, status_class_: str, event_type: str) -> Counter:
    """The bound child of DELIVERY_ATTEMPTS (label lookup once per combination, not per attempt)."""
    return DELIVERY_ATTEMPTS.labels(outcome, status_class_, event_type)


@functools.cache
def finished_counter(status: str) -> Counter:
    return DELIVERIES_FINISHED.labels(status)


def forget_lag(group: str, partitions: Iterable[TopicPartition]) -> None:
    """Drop the lag series of partitions this process no longer owns (their new owner reports them)."""
    for tp in partitions:
        with contextlib.suppress(KeyError):
            CONSUMER_LAG.remove(group, tp.topic, str(tp.partition))


def status_class(http_status: int | None) -> str:
    """``2xx``..``5xx``, or ``none`` when no HTTP answer came back (timeout, connection, TLS, breaker)."""
    return f"{http_status // 100}xx" if http_status else "none"


async def handle_metrics(_request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(_exported), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def handle_healthz(_request: web.Request) -> web.Response:
    """Liveness: 200 while every long-running loop of this process has beaten recently, else 503."""
    status, body = liveness.health()
    return web.json_response(body, status=status)


def metrics_url(host: str, port: int) -> str:
    """``http://host:port/metrics`` (an IPv6 host in brackets)."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"


@contextlib.asynccontextmanager
async def serve_metrics(host: str, port: int) -> AsyncIterator[str]:
    """A tiny HTTP server with /metrics and /healthz, for the router and sender processes; yields the
    URL of /metrics, with the port actually bound (port 0 picks a free one)."""
    app = web.Application()
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/healthz", handle_healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        bound = runner.addresses[0][1] if runner.addresses else port
        yield metrics_url(host, bound)
    finally:
        await runner.cleanup()
