"""`hookstream topics` against the real broker: it creates the missing topics with their specs'
partitions and configs, retention included (read back with the admin client), is idempotent, leaves existing topics as
they are and reports how they differ from their specs. Each test uses topics of its own."""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from hookstream.core.settings import Settings
from hookstream.core.topics import TopicSpec, TopicState, apply_topic_specs, topic_specs
from tests.support import delete_topics, isolated_names, isolated_topics

DAY_MS = 24 * 60 * 60 * 1000


@pytest.fixture
async def topics_env(infra_env) -> AsyncIterator[dict[str, str]]:
    """Kafka and topic names of this test's own (none of them exists yet); deleted afterwards."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": infra_env["KAFKA_BOOTSTRAP_SERVERS"], **isolated_names("t" + secrets.token_hex(5))}
    yield env
    await delete_topics(env["KAFKA_BOOTSTRAP_SERVERS"], isolated_topics(env))


@pytest.fixture
async def admin(infra_env) -> AsyncIterator[AIOKafkaAdminClient]:
    client = AIOKafkaAdminClient(bootstrap_servers=infra_env["KAFKA_BOOTSTRAP_SERVERS"])
    await client.start()
    yield client
    await client.close()


async def run_topics(env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    """Run `hookstream topics` as its own process; returns its exit code and the lines it printed."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "hookstream.cli", "topics", *args,
                                                env={"PATH": "/usr/bin:/bin", **env},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert b"Traceback" not in err, err.decode()
    return proc.returncode, out.decode().splitlines()


async def existing(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, tuple[int, dict[str, str]]]:
    """For each of ``names`` that exists: its partition count and its effective topic configs."""
    present = [n for n in names if n in set(await admin.list_topics())]
    if not present:
        return {}
    partitions = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(present)}
    [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in present])
    configs = {r["resource_name"]: {e["config_names"]: e["config_value"] for e in r["config_entries"]}
               for r in response.to_object()["resources"]}
    return {n: (partitions[n], configs[n]) for n in present}


async def test_topics_creates_missing_topics_with_their_specs_and_reports_drift(topics_env, admin):
    settings = Settings.from_env(topics_env)
    specs = {s.name: s for s in topic_specs(settings)}
    owned = [s.name for s in specs.values() if s.owned]
    # Made before, by hand: a status topic with too few partitions (its configs as specified), a
    # dead-letter topic with the broker's default size limit and 7 days' retention (what
    # deploy/compose.yaml's old kafka-topics.sh service made on a broker with the usual defaults).
    await admin.create_topics([NewTopic(settings.status_topic, 3, 1,
                                        topic_configs=dict(specs[settings.status_topic].configs)),
                               NewTopic(settings.dead_letter_topic, 12, 1,
                                        topic_configs={"max.message.bytes": str(1024 * 1024),
                                                       "retention.ms": str(7 * DAY_MS), "retention.bytes": "-1",
                                                       "cleanup.policy": "delete"})])

    code, lines = await run_topics(topics_env)
    assert code == 0, lines  # drift is reported, not an error: an init step must not block start-up
    assert lines == [
        f"{settings.delivery_topic}: created (12 partitions, replication factor 1, cleanup.policy=delete,"
        " max.message.bytes=4194304, retention.bytes=-1, retention.ms=604800000)",
        f"{settings.status_topic}: differs from its spec: 3 partitions, the spec has 12",
        f"{settings.dead_letter_topic}: differs from its spec: max.message.bytes=1048576, the spec has 8388608;"
        " retention.ms=604800000, the spec has 2592000000",
    ]
    found = await existing(admin, [*owned, *settings.source_topics])
    assert set(found) == set(owned), "source topics are created only with --with-source-topics"
    partitions, configs = found[settings.delivery_topic]
    assert partitions == specs[settings.delivery_topic].partitions
    assert {k: configs[k] for k in specs[settings.delivery_topic].configs} == specs[settings.delivery_topic].configs
    assert configs["retention.ms"] == str(7 * DAY_MS)
    # existing topics are left as they were
    assert found[settings.status_topic][0] == 3
    assert found[settings.dead_letter_topic][1]["max.message.bytes"] == str(1024 * 1024)
    assert found[settings.dead_letter_topic][1]["retention.ms"] == str(7 * DAY_MS)

    # idempotent: nothing more is created, the same differences are reported; --strict fails on them
    code, again = await run_topics(topics_env, "--strict")
    assert code == 1
    assert again == [f"{settings.delivery_topic}: matches its spec", *lines[1:]]

    # once an operator brings the topics to their specs, every one matches
    await admin.create_partitions({settings.status_topic: NewPartitions(12)})
    await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, settings.dead_letter_topic,
                                              dict(specs[settings.dead_letter_topic].configs))])
    code, fixed = await run_topics(topics_env, "--strict")
    assert (code, fixed) == (0, [f"{name}: matches its spec" for name in owned])
    found = await existing(admin, owned)
    for name in owned:
        assert found[name][0] == 12
        assert {k: found[name][1][k] for k in specs[name].configs} == specs[name].configs, name


async def test_topics_creates_source_topics_only_when_asked_and_never_compares_them(topics_env, admin):
    settings = Settings.from_env(topics_env)
    products, orders = settings.source_topics
    await admin.create_topics([NewTopic(products, 2, 1)])  # upstream's choice of partitions

    code, lines = await run_topics(topics_env, "--with-source-topics", "--strict")
    assert code == 0, lines
    assert lines[3:] == [f"{products}: exists (owned upstream, not compared)",
                         f"{orders}: created (12 partitions, replication factor 1)"]
    found = await existing(admin, [products, orders])
    assert (found[products][0], found[orders][0]) == (2, 12)


async def test_concurrent_runs_create_each_topic_once_without_error(topics_env, admin):
    # Every pod's init step runs `hookstream topics`: several start at once.
    settings = Settings.from_env(topics_env)
    owned = [s for s in topic_specs(settings) if s.owned]
    runs = await asyncio.gather(*(apply_topic_specs(settings.kafka_bootstrap_servers, owned) for _ in range(4)))
    states = [[r.state for r in reports] for reports in runs]
    for i in range(len(owned)):
        assert [s[i] for s in states].count(TopicState.CREATED) <= 1
        assert {s[i] for s in states} <= {TopicState.CREATED, TopicState.MATCHES}
    assert any(TopicState.CREATED in s for s in states)
    # Each topic was created with its spec's configs, retention included, as the broker reports them
    # (once its metadata reaches the broker this admin client asks).
    found: dict[str, tuple[int, dict[str, str]]] = {}
    for _ in range(50):
        found = await existing(admin, [s.name for s in owned])
        if len(found) == len(owned):
            break
        await asyncio.sleep(0.2)
    for spec in owned:
        assert {k: found[spec.name][1][k] for k in spec.configs} == spec.configs, spec.name
    assert found[settings.status_topic][1]["retention.ms"] == str(7 * DAY_MS)
    assert found[settings.dead_letter_topic][1]["retention.ms"] == str(30 * DAY_MS)
    assert found[settings.delivery_topic][1]["retention.ms"] == str(7 * DAY_MS)


async def test_a_topic_the_broker_refuses_to_create_raises_naming_it(topics_env):
    settings = Settings.from_env(topics_env)
    bad = TopicSpec(settings.delivery_topic, 12, {"cleanup.policy": "shred"})
    with pytest.raises(KafkaError, match=settings.delivery_topic):
        await apply_topic_specs(settings.kafka_bootstrap_servers, [bad])
