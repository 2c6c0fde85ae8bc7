"""The topic specs (hookstream/core/topics.py): names from Settings, limits that agree with the clients
and the router. Creating them on a real broker: tests/integration/test_topics.py."""

from __future__ import annotations

from hookstream.core import kafka, topics
from hookstream.core.settings import Settings
from hookstream.core.topics import TopicReport, TopicSpec, TopicState, topic_specs
from hookstream.router import router


def test_specs_name_the_topics_settings_name() -> None:
    settings = Settings.from_env({"HOOKSTREAM_DELIVERY_TOPIC": "d", "HOOKSTREAM_STATUS_TOPIC": "s",
                                  "HOOKSTREAM_DEAD_LETTER_TOPIC": "dl", "HOOKSTREAM_SOURCE_TOPICS": "p,o"})
    specs = topic_specs(settings)
    assert [(s.name, s.owned) for s in specs] == [("d", True), ("s", True), ("dl", True), ("p", False), ("o", False)]


def test_owned_topics_have_their_limits_and_are_never_compacted() -> None:
    settings = Settings()
    by_name = {s.name: s for s in topic_specs(settings)}
    delivery, status, dead = by_name[settings.delivery_topic], by_name[settings.status_topic], \
        by_name[settings.dead_letter_topic]
    # Any delivery task the topic accepts can be fetched by a sender, and the router's largest fits.
    assert int(delivery.configs["max.message.bytes"]) == kafka.FETCH_MAX_PARTITION_BYTES
    assert router.MAX_TASK_BYTES < int(delivery.configs["max.message.bytes"])
    # A dead letter copies a record the producer may send at its largest request.
    assert int(dead.configs["max.message.bytes"]) == topics.DEAD_LETTER_MAX_MESSAGE_BYTES
    for spec in (delivery, status, dead):
        assert spec.configs["cleanup.policy"] == "delete", spec.name
        assert spec.partitions == topics.INTERNAL_TOPIC_PARTITIONS, spec.name
    for name in settings.source_topics:
        assert by_name[name].configs == {}, "upstream's topics get no configs from hookstream"


def test_report_lines_say_what_happened() -> None:
    spec = TopicSpec("t", 12, {"max.message.bytes": "10", "cleanup.policy": "delete"})
    assert TopicReport(spec, TopicState.CREATED, 3).describe() == (
        "t: created (12 partitions, replication factor 3, cleanup.policy=delete, max.message.bytes=10)")
    assert TopicReport(spec, TopicState.MATCHES, 1).describe() == "t: matches its spec"
    assert TopicReport(spec, TopicState.DIFFERS, 1, ("a", "b")).describe() == "t: differs from its spec: a; b"
