"""The Kafka topics hookstream reads and writes, as they should be, in one place: names (from
:class:`~hookstream.core.settings.Settings`), partitions and the topic configs the code and the
operators rely on (size limits, cleanup policy, retention).

``hookstream topics`` (the deployments' init step) and the services' start-up create what is missing
from :func:`topic_specs` through :func:`apply_topic_specs`, which also reports how an existing topic
differs from its spec. Existing topics are never altered: adding partitions moves keys to other
partitions and a config change is an operator's decision, so a difference is reported (and logged as
a warning), not repaired. Deploy files list no topic of their own (tests/unit/test_deploy.py).

The topic table of deploy/README.md and docs/CONTRACT.md, and deploy/README.md's commands that bring
an existing topic to its spec, are made from :func:`topic_specs` (:func:`render_markdown_table`,
:func:`render_fix_commands`); regenerate them with
``python -m hookstream.core.topics --write deploy/README.md docs/CONTRACT.md``
(tests/unit/test_topics.py fails while a copy is stale).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from hookstream.core.settings import (
    DELIVERY_TOPIC_MAX_MESSAGE_BYTES,
    Settings,
    format_size,
    replace_marked_table,
    rewrite_files,
)

log = logging.getLogger(__name__)

# Where deploy/README.md and docs/CONTRACT.md hold the generated topic table, and deploy/README.md
# the generated commands (render_markdown_table, render_fix_commands).
TABLE_BEGIN = "<!-- topics-table:begin -->"
TABLE_END = "<!-- topics-table:end -->"
COMMANDS_BEGIN = "<!-- topics-commands:begin -->"
COMMANDS_END = "<!-- topics-commands:end -->"

# Enough partitions that several sender replicas share the delivery topic (one partition feeds at
# most one sender of the group): deploy/k8s/keda-scaledobject-sender.yaml scales up to this many.
INTERNAL_TOPIC_PARTITIONS = 12
# Room on the dead-letter topic for a copy of a record at the broker's default limit plus headers.
DEAD_LETTER_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# The delivery topic's limit, equal to the sender's max_partition_fetch_bytes so that any task the
# broker accepts can be fetched. The router refuses (dead-letters as too_large) an event whose
# delivery task would not fit; HOOKSTREAM_MAX_EVENT_BYTES is capped at a quarter of it, since a
# task can be up to ~4x its event (numbers re-serialised, e.g. 1e15 -> 1000000000000000.0, then the
# body escaped into a JSON string).
DELIVERY_MAX_MESSAGE_BYTES = DELIVERY_TOPIC_MAX_MESSAGE_BYTES
# Copies of each partition of a topic hookstream creates: three where the cluster has three brokers,
# as many as it has otherwise (one on a development broker). Producers send with acks=all.
MAX_REPLICATION_FACTOR = 3
_DAY_MS = 24 * 60 * 60 * 1000
# How long each owned topic keeps a record, by age only (retention.bytes=-1: a broker-wide size limit
# must not cut it shorter). A first attempt exists only as its task on the delivery topic until a
# sender makes it (retries and deferrals are rows in PostgreSQL, put back on the topic when due): a
# task older than DELIVERY_RETENTION_MS may be deleted before a sender consumes it, leaving its
# delivery pending without an attempt. So this is how long the senders may be down, or behind,
# without loss.
DELIVERY_RETENTION_MS = 7 * _DAY_MS
# How long a consumer of the status topic may be away and still read every outcome (PostgreSQL keeps
# them all for the delivery log).
STATUS_RETENTION_MS = 7 * _DAY_MS
# Dead letters are read by people, after an alert, possibly after a weekend or a holiday: longer.
DEAD_LETTER_RETENTION_MS = 30 * _DAY_MS
# Every record matters until consumed or read by an operator: deleted by age, never compacted away
# (compaction would keep only the last status record or delivery task per key).
_DELETE = {"cleanup.policy": "delete", "retention.bytes": "-1"}


@dataclass(frozen=True)
class TopicSpec:
    """One topic as hookstream wants it.

    ``configs`` are the topic-level settings it is created with and compared on; every other config
    stays at the broker's defaults and is never compared. ``owned`` is False for the source topics,
    which upstream publishers own: created when missing and asked for, never compared. ``setting``
    names the variable that names the topic and ``about`` says in a line of Markdown what the topic
    holds and why its configs are what they are: both only for the docs' table.
    """

    name: str
    partitions: int
    configs: Mapping[str, str] = field(default_factory=dict)
    owned: bool = True
    setting: str = ""
    about: str = ""


class TopicState(enum.Enum):
    CREATED = "created"
    MATCHES = "matches its spec"
    DIFFERS = "differs from its spec"
    NOT_CHECKED = "exists (owned upstream, not compared)"


@dataclass(frozen=True)
class TopicReport:
    """What :func:`apply_topic_specs` found or did for one spec; ``differences`` name each way an
    existing topic falls short of it (empty unless ``state`` is DIFFERS)."""

    spec: TopicSpec
    state: TopicState
    replication_factor: int
    differences: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for a person: the topic, what happened, and any differences."""
        line = f"{self.spec.name}: {self.state.value}"
        if self.state is TopicState.CREATED:
            settings = [f"{self.spec.partitions} partitions", f"replication factor {self.replication_factor}",
                        *(f"{k}={v}" for k, v in sorted(self.spec.configs.items()))]
            line += f" ({', '.join(settings)})"
        if self.differences:
            line += ": " + "; ".join(self.differences)
        return line


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic hookstream uses: the three it owns (delivery tasks, status records, dead
    letters), then the source topics of ``settings.source_topics`` (``owned=False``)."""
    return [
        TopicSpec(settings.delivery_topic, INTERNAL_TOPIC_PARTITIONS,
                  {**_DELETE, "max.message.bytes": str(DELIVERY_MAX_MESSAGE_BYTES),
                   "retention.ms": str(DELIVERY_RETENTION_MS)},
                  setting="HOOKSTREAM_DELIVERY_TOPIC",
                  about="router → sender, one task per delivery (internal). `max.message.bytes` is the senders'"
                        " fetch limit (the router dead-letters an event whose task would not fit); a first"
                        " attempt exists only here until a sender makes it, so `retention.ms` is how long the"
                        " senders may be down or behind without losing one"),
        TopicSpec(settings.status_topic, INTERNAL_TOPIC_PARTITIONS,
                  {**_DELETE, "retention.ms": str(STATUS_RETENTION_MS)},
                  setting="HOOKSTREAM_STATUS_TOPIC",
                  about="one record per attempt outcome; `retention.ms` is how long a consumer may be away"
                        " (PostgreSQL keeps every attempt)"),
        TopicSpec(settings.dead_letter_topic, INTERNAL_TOPIC_PARTITIONS,
                  {**_DELETE, "max.message.bytes": str(DEAD_LETTER_MAX_MESSAGE_BYTES),
                   "retention.ms": str(DEAD_LETTER_RETENTION_MS)},
                  setting="HOOKSTREAM_DEAD_LETTER_TOPIC",
                  about="rejected input records, read by people: room for a copy of any input record plus"
                        " headers, kept longer"),
        *(TopicSpec(topic, INTERNAL_TOPIC_PARTITIONS, owned=False, setting="HOOKSTREAM_SOURCE_TOPICS",
                    about="domain events, owned upstream: hookstream sets no config on them and compares"
                          " nothing (it creates a missing one only when asked or allowed)")
          for topic in settings.source_topics),
    ]


async def apply_topic_specs(bootstrap: str, specs: Sequence[TopicSpec]) -> list[TopicReport]:
    """Create the topics of ``specs`` that are missing, with their partitions and configs, and
    compare the existing owned ones with their specs; returns a report per spec, in order (a name
    given twice counts once, its first spec wins). Existing topics are left as they are.

    A difference is: fewer partitions than the spec (more are an operator's choice and fine), fewer
    replicas than this cluster's replication factor, or a config in the spec with another value.
    Each differing topic is logged as a warning. Raises the broker's error (a KafkaError) when a
    missing topic cannot be created; another process creating it first is not an error.
    """
    unique: dict[str, TopicSpec] = {}
    for spec in specs:
        unique.setdefault(spec.name, spec)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        replication = max(1, min(MAX_REPLICATION_FACTOR, len(cluster["brokers"])))
        existing = set(await admin.list_topics())
        created = await _create_topics(admin, [s for s in unique.values() if s.name not in existing], replication)
        # Every one, not only those created here: another process starting beside this one may have
        # created a topic a moment ago, and its partitions may not be served yet.
        await _wait_until_served(admin, bootstrap, list(unique))
        compared = [s for s in unique.values() if s.owned and s.name not in created]
        differences = await _compare_topics(admin, compared, replication)
    finally:
        await admin.close()
    reports: list[TopicReport] = []
    for spec in unique.values():
        if spec.name in created:
            state = TopicState.CREATED
        elif not spec.owned:
            state = TopicState.NOT_CHECKED
        else:
            state = TopicState.DIFFERS if differences[spec.name] else TopicState.MATCHES
        reports.append(TopicReport(spec, state, replication, tuple(differences.get(spec.name, ()))))
    if created:
        log.info("created topics %s", ", ".join(sorted(created)))
    for report in reports:
        if report.state is TopicState.DIFFERS:
            log.warning("topic %s differs from its spec (left as it is): %s", report.spec.name,
                        "; ".join(report.differences))
    return reports


# How long apply_topic_specs waits for the partitions of the topics it created to be served.
TOPICS_SERVED_TIMEOUT_S = 30.0
_TOPICS_POLL_S = 0.1


async def _wait_until_served(admin: Any, bootstrap: str, names: Sequence[str]) -> None:
    """Wait (at most TOPICS_SERVED_TIMEOUT_S) until every partition of the topics ``names`` has a
    leader in the metadata and answers for its offsets. A consumer that starts on a topic created a
    moment before (here, or by another process starting beside this one) otherwise gets "not found in
    cluster metadata" and NotLeaderForPartition answers, which aiokafka logs at ERROR while it
    retries. This wait is quiet itself: the admin's metadata request does not log, and an offsets
    lookup retries without logging. On timeout it returns, and the consumers wait as they did."""
    if not names:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TOPICS_SERVED_TIMEOUT_S
    while True:
        topics = {t["topic"]: t for t in await admin.describe_topics(sorted(names))}
        if all(name in topics and topics[name]["error_code"] == 0 and topics[name]["partitions"]
               and all(p["error_code"] == 0 and p["leader"] >= 0 for p in topics[name]["partitions"])
               for name in names):
            break
        if loop.time() > deadline:
            return
        await asyncio.sleep(_TOPICS_POLL_S)
    partitions = [TopicPartition(name, p["partition"]) for name in names for p in topics[name]["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        with contextlib.suppress(KafkaError, TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - loop.time())):
                await consumer.start()
                await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()


async def _create_topics(admin: Any, specs: list[TopicSpec], replication: int) -> set[str]:
    """Create ``specs``' topics in one request; returns the names created here (not those another
    process created in the meantime)."""
    if not specs:
        return set()
    response = await admin.create_topics([NewTopic(s.name, s.partitions, replication, topic_configs=dict(s.configs))
                                          for s in specs])
    created: set[str] = set()
    failures: list[tuple[int, str]] = []
    for result in response.to_object()["topic_errors"]:
        code, topic = int(result["error_code"]), str(result["topic"])
        if code == 0:
            created.add(topic)
        elif code != TopicAlreadyExistsError.errno:
            failures.append((code, f"{topic}: {result.get('error_message') or for_code(code).message}"))
    if failures:
        raise for_code(failures[0][0])("could not create topics: " + "; ".join(text for _, text in failures))
    return created


async def _compare_topics(admin: Any, specs: list[TopicSpec], replication: int) -> dict[str, list[str]]:
    """How each existing topic of ``specs`` differs from its spec (an empty list: not at all)."""
    differences: dict[str, list[str]] = {s.name: [] for s in specs}
    if not specs:
        return differences
    by_name = {s.name: s for s in specs}
    known: set[str] = set()
    for topic in await admin.describe_topics(list(by_name)):
        name, partitions = str(topic["topic"]), topic["partitions"]
        if name not in by_name or not partitions:
            continue  # not in this broker's metadata yet (another process is creating it): nothing to compare
        known.add(name)
        spec = by_name[name]
        if len(partitions) < spec.partitions:
            differences[name].append(f"{len(partitions)} partitions, the spec has {spec.partitions}")
        replicas = min(len(p["replicas"]) for p in partitions)
        if replicas < replication:
            differences[name].append(f"replication factor {replicas}, this cluster's is {replication}")
    # Only for topics the broker knows: for any other name it answers with the broker's defaults.
    resources = [ConfigResource(ConfigResourceType.TOPIC, s.name, dict.fromkeys(s.configs))
                 for s in specs if s.configs and s.name in known]
    if resources:
        for response in await admin.describe_configs(resources):
            for resource in response.to_object()["resources"]:
                name = str(resource["resource_name"])
                if name not in by_name:
                    continue
                if resource["error_code"]:
                    raise for_code(int(resource["error_code"]))(f"could not describe topic {name}: "
                                                                f"{resource['error_message']}")
                actual = {str(e["config_names"]): e["config_value"] for e in resource["config_entries"]}
                for key, wanted in sorted(by_name[name].configs.items()):
                    if actual.get(key) != wanted:
                        differences[name].append(f"{key}={actual.get(key)}, the spec has {wanted}")
    return differences


# ------------------------------------------------------------------------------ docs from the specs


def _config_text(key: str, value: str) -> str:
    """One config as the table writes it: ``key=value`` and, for sizes and durations, what it means."""
    gloss = ""
    if key.endswith(".bytes"):
        gloss = "no size limit" if int(value) < 0 else format_size(int(value))
    elif key.endswith(".ms"):
        ms = int(value)
        gloss = f"{ms // _DAY_MS} days" if ms % _DAY_MS == 0 else f"{ms / 3_600_000:g} h"
    return f"`{key}={value}`" + (f" ({gloss})" if gloss and gloss != value else "")


def render_markdown_table(settings: Settings | None = None) -> str:
    """The topic table of deploy/README.md and docs/CONTRACT.md, from :func:`topic_specs` of
    ``settings`` (the defaults when None): one row per topic (source topics alike share one), then
    what holds for every topic; ends in a newline."""
    rows = ["| topic (default name) | named by | partitions | configs (compared on existing topics) | what, and why |",
            "|---|---|---|---|---|"]
    specs = topic_specs(settings or Settings())
    grouped: list[tuple[TopicSpec, list[str]]] = []
    for spec in specs:  # consecutive specs alike but for their names share a row
        if grouped and replace(grouped[-1][0], name=spec.name) == spec:
            grouped[-1][1].append(spec.name)
        else:
            grouped.append((spec, [spec.name]))
    for spec, names in grouped:
        topics = ", ".join(f"`{name}`" for name in names)
        partitions = str(spec.partitions) if spec.owned else f"{spec.partitions} when hookstream creates one"
        configs = ", ".join(_config_text(k, v) for k, v in sorted(spec.configs.items())) or "none"
        rows.append(f"| {topics} | `{spec.setting}` | {partitions} | {configs} | {spec.about} |")
    rows += ["", f"Replication factor {MAX_REPLICATION_FACTOR}, or the number of brokers when there are fewer (1 on a"
             " development broker). Every config not in the table stays at the broker's defaults and is not compared."]
    return "\n".join(rows) + "\n"


def render_fix_commands(settings: Settings | None = None) -> str:
    """A fenced ``sh`` block: for each topic hookstream owns, the ``kafka-configs.sh`` command that
    sets its spec's configs on an existing topic and the ``kafka-topics.sh`` one that raises its
    partitions to the spec's; ends in a newline."""
    lines = ["```sh", "# BROKERS: your bootstrap servers. Set an existing topic's configs to its spec:"]
    owned = [s for s in topic_specs(settings or Settings()) if s.owned]
    for spec in owned:
        configs = ",".join(f"{k}={v}" for k, v in sorted(spec.configs.items()))
        lines.append(f"kafka-configs.sh --bootstrap-server BROKERS --alter --entity-type topics --entity-name {spec.name}"
                     f" \\\n    --add-config {configs}")
    lines.append("# Only for a topic with fewer partitions than its spec (keys move to other partitions):")
    for spec in owned:
        lines.append(f"kafka-topics.sh --bootstrap-server BROKERS --alter --topic {spec.name} --partitions {spec.partitions}")
    lines.append("```")
    return "\n".join(lines) + "\n"


def write_marked_blocks(text: str) -> str:
    """``text`` with each generated block it holds (the table, the commands) made current; raises
    ValueError when it holds neither, or a block's markers are repeated or out of order."""
    blocks = [(TABLE_BEGIN, TABLE_END, render_markdown_table()), (COMMANDS_BEGIN, COMMANDS_END, render_fix_commands())]
    present = [(begin, end, block) for begin, end, block in blocks if begin in text or end in text]
    if not present:
        raise ValueError(f"holds neither {TABLE_BEGIN} nor {COMMANDS_BEGIN}")
    for begin, end, block in present:
        text = replace_marked_table(text, block, begin, end)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hookstream.core.topics",
                                     description="Print or update the topic table and commands made from topic_specs.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print the Markdown table")
    action.add_argument("--commands", action="store_true",
                        help="print the commands that bring existing topics to their specs")
    action.add_argument("--write", nargs="+", type=Path, metavar="FILE",
                        help=f"replace the blocks between {TABLE_BEGIN} / {COMMANDS_BEGIN} and their end markers"
                             " in each FILE")
    args = parser.parse_args(argv)
    if args.markdown or args.commands:
        sys.stdout.write(render_markdown_table() if args.markdown else render_fix_commands())
        return 0
    rewrite_files(args.write, write_marked_blocks, parser)
    return 0


if __name__ == "__main__":
    sys.exit(main())
