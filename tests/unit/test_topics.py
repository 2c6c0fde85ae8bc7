"""The topic specs (hookstream/core/topics.py): names from Settings, limits that agree with the clients
and the router, retention by age, and the docs' topic table and commands made from them. Creating
them on a real broker: tests/integration/test_topics.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from hookstream.core import kafka, topics
from hookstream.core.settings import DELIVERY_TOPIC_MAX_MESSAGE_BYTES, VARIABLES, Settings
from hookstream.core.topics import (
    COMMANDS_BEGIN,
    COMMANDS_END,
    TABLE_BEGIN,
    TABLE_END,
    TopicReport,
    TopicSpec,
    TopicState,
    render_fix_commands,
    render_markdown_table,
    topic_specs,
    write_marked_blocks,
)
from hookstream.router import router

ROOT = Path(__file__).resolve().parents[2]
DAY_MS = 24 * 60 * 60 * 1000
# Every doc holding a generated topic block, and which blocks it holds.
DOCS = {ROOT / "deploy" / "README.md": [(TABLE_BEGIN, TABLE_END, render_markdown_table),
                                        (COMMANDS_BEGIN, COMMANDS_END, render_fix_commands)],
        ROOT / "docs" / "CONTRACT.md": [(TABLE_BEGIN, TABLE_END, render_markdown_table)]}


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
    # The cap on HOOKSTREAM_MAX_EVENT_BYTES (and its help text) is computed from this same limit.
    assert int(delivery.configs["max.message.bytes"]) == DELIVERY_TOPIC_MAX_MESSAGE_BYTES


def test_owned_topics_keep_records_by_age_for_days_and_dead_letters_longest() -> None:
    settings = Settings()
    by_name = {s.name: s for s in topic_specs(settings)}
    delivery, status, dead = by_name[settings.delivery_topic], by_name[settings.status_topic], \
        by_name[settings.dead_letter_topic]
    assert int(status.configs["retention.ms"]) == 7 * DAY_MS
    assert int(dead.configs["retention.ms"]) == 30 * DAY_MS
    # Dead letters are read by people, after the status topic's consumers have moved on.
    assert int(dead.configs["retention.ms"]) >= int(status.configs["retention.ms"])
    # A first attempt lives only on the delivery topic until it is made: days, not the broker's whim.
    assert int(delivery.configs["retention.ms"]) >= 7 * DAY_MS
    for spec in (delivery, status, dead):
        assert spec.configs["retention.bytes"] == "-1", f"{spec.name}: a size limit would cut retention short"


def test_each_spec_names_the_variable_that_names_its_topic() -> None:
    # The docs' table says which variable names each topic: setting it renames that spec, and only that one.
    settings = Settings()
    known = {v.env for v in VARIABLES}
    defaults = topic_specs(settings)
    for index, spec in enumerate(defaults):
        assert spec.setting in known and spec.about.strip() and "|" not in spec.about, spec.name
        value = "renamed"
        if spec.setting == "HOOKSTREAM_SOURCE_TOPICS":
            value = ",".join("renamed" if name == spec.name else name for name in settings.source_topics)
        renamed = topic_specs(Settings.from_env({spec.setting: value}))
        assert [i for i, (a, b) in enumerate(zip(defaults, renamed, strict=True)) if a.name != b.name] == [index]
        assert renamed[index].name == "renamed", spec.name


def test_report_lines_say_what_happened() -> None:
    spec = TopicSpec("t", 12, {"max.message.bytes": "10", "cleanup.policy": "delete"})
    assert TopicReport(spec, TopicState.CREATED, 3).describe() == (
        "t: created (12 partitions, replication factor 3, cleanup.policy=delete, max.message.bytes=10)")
    assert TopicReport(spec, TopicState.MATCHES, 1).describe() == "t: matches its spec"
    assert TopicReport(spec, TopicState.DIFFERS, 1, ("a", "b")).describe() == "t: differs from its spec: a; b"


# ---------------------------------------------------------------------------- docs from the specs


def marked_region(text: str, begin: str, end: str) -> str:
    return text.split(begin, 1)[1].split(end, 1)[0].removeprefix("\n")


@pytest.mark.parametrize("path", list(DOCS), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_topic_blocks_are_the_generated_ones(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for begin, end, render in DOCS[path]:
        assert text.count(begin) == 1 and text.count(end) == 1, (path, begin)
        # On failure: .venv/bin/python -m hookstream.core.topics --write deploy/README.md docs/CONTRACT.md
        assert marked_region(text, begin, end) == render(), (path, begin)


def test_table_has_a_row_per_topic_with_every_spec_config() -> None:
    settings = Settings()
    table = render_markdown_table(settings)
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    specs = topic_specs(settings)
    assert len(rows) == len(specs) - len(settings.source_topics) + 1  # the source topics share a row
    for spec in specs:
        [row] = [r for r in rows if f"`{spec.name}`" in r.split(" | ")[0]]
        cells = row.split(" | ")
        assert len(cells) == 5 and cells[1] == f"`{spec.setting}`", row
        assert cells[2].startswith(str(spec.partitions)), row
        for key, value in spec.configs.items():
            assert f"`{key}={value}`" in cells[3], (spec.name, key)
    assert "`retention.ms=2592000000` (30 days)" in table
    assert f"Replication factor {topics.MAX_REPLICATION_FACTOR}" in table


def test_fix_commands_set_every_owned_spec() -> None:
    commands = render_fix_commands()
    assert commands.startswith("```sh\n") and commands.endswith("```\n")
    flat = commands.replace("\\\n    ", "")
    for spec in (s for s in topic_specs(Settings()) if s.owned):
        configs = ",".join(f"{k}={v}" for k, v in sorted(spec.configs.items()))
        assert f"--entity-name {spec.name} --add-config {configs}\n" in flat, spec.name
        assert f"--alter --topic {spec.name} --partitions {spec.partitions}\n" in flat, spec.name


def test_write_marked_blocks_updates_what_a_doc_holds_and_refuses_a_doc_without_markers() -> None:
    text = f"intro\n{TABLE_BEGIN}\nstale\n{TABLE_END}\nafter\n"
    assert write_marked_blocks(text) == f"intro\n{TABLE_BEGIN}\n{render_markdown_table()}{TABLE_END}\nafter\n"
    both = f"{COMMANDS_BEGIN}\n{COMMANDS_END}\n{TABLE_BEGIN}\n{TABLE_END}\n"
    assert write_marked_blocks(both) == (f"{COMMANDS_BEGIN}\n{render_fix_commands()}{COMMANDS_END}\n"
                                         f"{TABLE_BEGIN}\n{render_markdown_table()}{TABLE_END}\n")
    for bad in ("no markers", f"{TABLE_END}\n{TABLE_BEGIN}\n", f"{TABLE_BEGIN}{TABLE_BEGIN}{TABLE_END}"):
        with pytest.raises(ValueError):
            write_marked_blocks(bad)


def test_module_main_prints_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert topics.main(["--markdown"]) == 0
    assert capsys.readouterr().out == render_markdown_table()
    assert topics.main(["--commands"]) == 0
    assert capsys.readouterr().out == render_fix_commands()
    doc = tmp_path / "doc.md"
    doc.write_text(f"# doc\n{TABLE_BEGIN}\nstale\n{TABLE_END}\n", encoding="utf-8")
    assert topics.main(["--write", str(doc)]) == 0
    assert marked_region(doc.read_text(encoding="utf-8"), TABLE_BEGIN, TABLE_END) == render_markdown_table()
    with pytest.raises(SystemExit):
        topics.main(["--write", str(tmp_path / "doc.md"), str(_without_markers(tmp_path))])


def _without_markers(tmp_path: Path) -> Path:
    path = tmp_path / "plain.md"
    path.write_text("# nothing generated here\n", encoding="utf-8")
    return path
