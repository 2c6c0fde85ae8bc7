"""The ``hookstream`` command: parse arguments, load settings once, run.

Subcommands: router, sender, api, all (the three in one process), migrate, topics, org create NAME,
publish. Each reads the configuration of CONTRACT §1 from the environment; a bad value stops
start-up with exit code 2 and a message naming the variable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from hookstream import __version__
from hookstream.core.settings import Settings, SettingsError, render_cli_help

log = logging.getLogger("hookstream")

EXIT_USAGE = 2
EXIT_FAILURE = 1
GC_THRESHOLD = (20_000, 20, 20)  # generation 0, 1, 2 (see run_services)

# Subcommands point at the top-level help, whose epilog lists every variable (from settings.VARIABLES).
_CONFIG_HELP = (
    "Configuration comes from the environment: KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL, DATABASE_READ_URL, HOOKSTREAM_*; "
    "`hookstream --help` lists every variable with its default."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hookstream", description="Webhook delivery for e-commerce events.",
                                     epilog=render_cli_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hookstream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("router", help="consume domain events, match webhooks, enqueue deliveries", epilog=_CONFIG_HELP)
    sub.add_parser("sender", help="deliver webhooks: HTTP attempts, retries, outcomes", epilog=_CONFIG_HELP)
    sub.add_parser("api", help="admin API, web console and /metrics", epilog=_CONFIG_HELP)
    sub.add_parser("all", help="router, sender and api in one process (local use)", epilog=_CONFIG_HELP)
    sub.add_parser("migrate", help="apply database migrations (idempotent)", epilog=_CONFIG_HELP)
    topics = sub.add_parser("topics", help="create missing Kafka topics from their specs and report drift (idempotent)",
                            epilog=_CONFIG_HELP)
    topics.add_argument("--with-source-topics", action="store_true",
                        help="also create missing source topics (HOOKSTREAM_SOURCE_TOPICS; owned upstream: local use)")
    topics.add_argument("--strict", action="store_true",
                        help="exit 1 when an existing topic differs from its spec (default: report and exit 0)")

    org = sub.add_parser("org", help="manage organizations", epilog=_CONFIG_HELP)
    org_sub = org.add_subparsers(dest="org_command", required=True, metavar="ACTION")
    create = org_sub.add_parser("create", help="create an organization and print its id and API key")
    create.add_argument("name", help="the organization's display name")
    create.add_argument("--json", action="store_true", help='print {"organization_id", "api_key"} on one line')

    publish = sub.add_parser("publish", help="validate and publish a domain event to Kafka", epilog=_CONFIG_HELP)
    publish.add_argument("--type", required=True, dest="event_type", help="event type, e.g. order.created")
    publish.add_argument("--store", required=True, help="store id")
    publish.add_argument("--org", required=True, help="organization id")
    publish.add_argument("--data", default="-",
                         help="the event's data object: @file.json, a JSON literal, or - for stdin (default)")
    publish.add_argument("--id", dest="event_id", help="event id (default: a new random one)")
    publish.add_argument("--occurred-at", help="RFC 3339 time (default: now)")
    return parser


def install_stop_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


async def run_services(settings: Settings, names: tuple[str, ...]) -> None:
    """Run the named services in this process until SIGTERM/SIGINT, then drain them."""
    from hookstream.core.db import open_pool
    from hookstream.core.errors import Stopped, retry_transient
    from hookstream.core.metrics import export_for, metrics_url, serve_metrics
    from hookstream.core.secretbox import SecretBox
    from hookstream.core.webhooks import WebhookDirectory

    if settings.secret_key is None:
        log.warning("HOOKSTREAM_SECRET_KEY is not set: webhook secrets are stored unencrypted (development only)")

    from hookstream.core import liveness

    liveness.configure(settings.liveness_stale_s)
    stop = asyncio.Event()
    install_stop_signals(stop)
    async with contextlib.AsyncExitStack() as stack:
        # A service started while PostgreSQL is away (restarting, not up yet) waits for it, as it
        # waits out an outage later on; a context that fails to enter leaves nothing on the stack.
        try:
            pool = await retry_transient(
                lambda: stack.enter_async_context(open_pool(settings.database_url, max_size=10)),
                what="connecting to PostgreSQL", stop=stop)
            # The API's delivery-log reads go to DATABASE_READ_URL (a replica) when it is set; the
            # router and the sender never open it: they write, and read what they just wrote.
            read_pool = None
            if "api" in names and settings.database_read_url:
                read_url = settings.database_read_url
                read_pool = await retry_transient(
                    lambda: stack.enter_async_context(open_pool(read_url, max_size=10)),
                    what="connecting to PostgreSQL (DATABASE_READ_URL)", stop=stop)
                log.info("api reads the delivery log, the events explorer and health stats from DATABASE_READ_URL")
            directory = None
            if "router" in names or "sender" in names:
                directory = await retry_transient(
                    lambda: stack.enter_async_context(
                        WebhookDirectory(settings.database_url, SecretBox(settings.secret_key))),
                    what="loading webhooks", stop=stop)
        except Stopped:
            log.info("hookstream %s stopped before it started", "+".join(names))
            return
        runners: list[Coroutine[Any, Any, None]] = []
        export_for(names)  # this process's /metrics: only the families of the services it runs
        if "api" not in names:
            url = await stack.enter_async_context(serve_metrics(*settings.metrics_listen_for(names[0])))
        else:
            url = metrics_url(*settings.api_listen)
        log.info("hookstream %s metrics on %s", "+".join(names), url)
        if "router" in names:
            from hookstream.router.router import run_router

            assert directory is not None
            runners.append(run_router(settings, stop, pool=pool, directory=directory))
        if "sender" in names:
            from hookstream.sender.sender import run_sender

            assert directory is not None
            runners.append(run_sender(settings, stop, pool=pool, directory=directory))
        if "api" in names:
            from hookstream.api.app import run_api

            runners.append(run_api(settings, stop, pool=pool, read_pool=read_pool))
        from hookstream.core.partitions import keep_partitions

        # Every process keeps the log's partitions (one pass at a time across processes): made days
        # ahead, dropped past HOOKSTREAM_RETENTION.
        runners.append(keep_partitions(pool, settings.retention_s, stop))
        log.info("hookstream %s started", "+".join(names))
        # What exists now (modules, classes, the clients) lives as long as the process: moved out of
        # the collector's reach, a full collection no longer rescans it. On this 2-core machine each
        # such rescan stalled every delivery in flight for 30-90 ms (BENCHMARKS.md, latency).
        gc.collect()
        gc.freeze()
        # A collection every GC_THRESHOLD allocations, not CPython's 700: a sender with a thousand
        # attempts in flight ran a young collection every few hundred microseconds, each rescanning
        # the attempts' live objects, 8 % of its CPU (BENCHMARKS.md, CPU per delivery); garbage with
        # reference cycles is reclaimed a little later instead.
        gc.set_threshold(*GC_THRESHOLD)
        tasks = [asyncio.create_task(r) for r in runners]
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        if failed:
            stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if failed and (exc := failed[0].exception()) is not None:
            raise exc
        log.info("hookstream %s stopped", "+".join(names))


async def cmd_migrate(settings: Settings) -> int:
    from hookstream.core.db import migrate

    applied = await migrate(settings.database_url)
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


async def cmd_topics(settings: Settings, *, with_source_topics: bool, strict: bool) -> int:
    """Create the missing topics of hookstream.core.topics.topic_specs and print a line per topic.
    Existing topics are left as they are: a difference from the spec is printed and logged, and is
    an error only with ``strict`` (an init step must not block start-up on an operator's choice)."""
    from hookstream.core.topics import TopicState, apply_topic_specs, topic_specs

    specs = [s for s in topic_specs(settings) if s.owned or with_source_topics]
    reports = await apply_topic_specs(settings.kafka_bootstrap_servers, specs)
    for report in reports:
        print(report.describe())
    differ = any(r.state is TopicState.DIFFERS for r in reports)
    return EXIT_FAILURE if strict and differ else 0


async def cmd_org_create(settings: Settings, name: str, as_json: bool) -> int:
    import asyncpg

    from hookstream.core.orgs import create_organization

    if not name.strip():
        print("hookstream org create: NAME must not be empty", file=sys.stderr)
        return EXIT_USAGE
    conn = await asyncpg.connect(settings.database_url)
    try:
        org_id, key = await create_organization(conn, name.strip())
    finally:
        await conn.close()
    if as_json:
        print(orjson.dumps({"organization_id": org_id, "api_key": key}).decode())
    else:
        print(f"organization_id: {org_id}\napi_key: {key}\n(the API key is shown only once)")
    return 0


def read_data_arg(raw: str) -> dict:
    if raw == "-":
        text = sys.stdin.read()
    elif raw.startswith("@"):
        with open(raw[1:], encoding="utf-8") as fh:
            text = fh.read()
    else:
        text = raw
    data = orjson.loads(text)
    if not isinstance(data, dict):
        raise ValueError("--data must be a JSON object")
    return data


async def warn_if_unknown(settings: Settings, organization_id: str, store_id: str, *,
                          database_configured: bool) -> None:
    """One warning on stderr when PostgreSQL does not know the organization or store (the router would
    route the event to no webhook), or when that could not be checked; the event is published anyway."""
    from hookstream.core.errors import describe
    from hookstream.core.publish import unknown_to_database

    if not database_configured:
        print("hookstream publish: warning: DATABASE_URL is not set; not checking that the organization and"
              " store exist", file=sys.stderr)
        return
    try:
        unknown = await unknown_to_database(settings.database_url, organization_id, store_id)
    except Exception as exc:  # only a warning depends on it: publish regardless
        print(f"hookstream publish: warning: could not check the organization and store in PostgreSQL"
              f" ({describe(exc, 200)}); publishing anyway", file=sys.stderr)
        return
    if unknown is not None:
        print(f"hookstream publish: warning: {unknown} is not in the database; the event is published, but"
              " no webhook will receive it", file=sys.stderr)


async def cmd_publish(settings: Settings, args: argparse.Namespace, *, database_configured: bool = True) -> int:
    from hookstream.core.kafka import open_producer
    from hookstream.core.publish import PublishError, check_publishable, make_event, publish_event

    try:
        data = read_data_arg(args.data)
    except (OSError, ValueError) as exc:
        print(f"hookstream publish: --data: {exc}", file=sys.stderr)
        return EXIT_USAGE
    event = make_event(args.event_type, organization_id=args.org, store_id=args.store, data=data,
                       event_id=args.event_id, occurred_at=args.occurred_at)
    try:  # an invalid event is refused before anything else is said about it
        check_publishable(orjson.dumps(event), max_bytes=settings.max_event_bytes)
    except PublishError as exc:
        print(f"hookstream publish: invalid event: {exc}", file=sys.stderr)
        return EXIT_USAGE
    await warn_if_unknown(settings, args.org, args.store, database_configured=database_configured)
    async with open_producer(settings.kafka_bootstrap_servers) as producer:
        try:
            published = await publish_event(producer, event, settings.source_topics,
                                            max_bytes=settings.max_event_bytes)
        except PublishError as exc:
            print(f"hookstream publish: invalid event: {exc}", file=sys.stderr)
            return EXIT_USAGE
    print(orjson.dumps({"event_id": published.event_id, "topic": published.topic,
                        "partition": published.partition, "offset": published.offset}).decode())
    return 0


def run_event_loop(coro: Coroutine[Any, Any, int | None]) -> int | None:
    """Run on uvloop where it is installed (Linux, macOS; a cheaper event loop for a sender whose CPU
    goes largely to scheduling and HTTP, see BENCHMARKS.md); the plain asyncio loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None, env: dict[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    environment = os.environ if env is None else env
    try:
        settings = Settings.from_env(environment)
    except SettingsError as exc:
        print(f"hookstream: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from hookstream.core.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    commands: dict[str, Callable[[], Coroutine[Any, Any, int | None]]] = {
        "router": lambda: run_services(settings, ("router",)),
        "sender": lambda: run_services(settings, ("sender",)),
        "api": lambda: run_services(settings, ("api",)),
        "all": lambda: run_services(settings, ("router", "sender", "api")),
        "migrate": lambda: cmd_migrate(settings),
        "topics": lambda: cmd_topics(settings, with_source_topics=args.with_source_topics, strict=args.strict),
        "publish": lambda: cmd_publish(settings, args, database_configured="DATABASE_URL" in environment),
    }
    commands["org"] = lambda: cmd_org_create(settings, args.name, args.json)
    command = commands[args.command]
    try:
        return run_event_loop(command()) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.exception("hookstream %s failed: %s: %s", args.command, type(exc).__name__, exc)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
