"""The Kafka topics hookstream reads and writes, as they should be, in one place: names (from
:class:`~hookstream.core.settings.Settings`), partitions and the topic configs the code relies on.

``hookstream topics`` (the deployments' init step) and the services' start-up create what is missing
from :func:`topic_specs` through :func:`apply_topic_specs`, which also reports how an existing topic
differs from its spec. Existing topics are never altered: adding partitions moves keys to other
partitions and a config change is an operator's decision, so a difference is reported (and logged as
a warning), not repaired. Deploy files list no topic of their own (tests/unit/test_deploy.py).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError, for_code

from hookstream.core.settings import DELIVERY_TOPIC_MAX_MESSAGE_BYTES, Settings

log = logging.getLogger(__name__)

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
# Every record matters until consumed or read by an operator: deleted by age, never compacted away
# (compaction would keep only the last status record or delivery task per key).
_DELETE = {"cleanup.policy": "delete"}


@dataclass(frozen=True)
class TopicSpec:
    """One topic as hookstream wants it.

    ``configs`` are the topic-level settings the code relies on; everything else (retention among
    them) stays at the broker's defaults and is never compared. ``owned`` is False for the source
    topics, which upstream publishers own: created when missing and asked for, never compared.
    """

    name: str
    partitions: int
    configs: Mapping[str, str] = field(default_factory=dict)
    owned: bool = True


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
                  {**_DELETE, "max.message.bytes": str(DELIVERY_MAX_MESSAGE_BYTES)}),
        TopicSpec(settings.status_topic, INTERNAL_TOPIC_PARTITIONS, dict(_DELETE)),
        TopicSpec(settings.dead_letter_topic, INTERNAL_TOPIC_PARTITIONS,
                  {**_DELETE, "max.message.bytes": str(DEAD_LETTER_MAX_MESSAGE_BYTES)}),
        *(TopicSpec(topic, INTERNAL_TOPIC_PARTITIONS, owned=False) for topic in settings.source_topics),
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
