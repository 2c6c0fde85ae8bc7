"""settings.VARIABLES, the one table of configuration variables: every entry is documented, its
default parses to the field's default, its bounds are enforced, and the docs made from it (README.md,
docs/CONTRACT.md, ``hookstream --help``) are current."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from hookstream.core import settings as settings_module
from hookstream.core.settings import (
    DURATION,
    INT,
    SIZE,
    TABLE_BEGIN,
    TABLE_END,
    VARIABLES,
    Settings,
    SettingsError,
    Variable,
    render_cli_help,
    render_markdown_table,
    replace_marked_table,
)

ROOT = Path(__file__).resolve().parents[2]
DOCS_WITH_TABLE = [ROOT / "README.md", ROOT / "docs" / "CONTRACT.md"]
HOOKSTREAM_BIN = Path(sys.executable).parent / "hookstream"
# The smallest step of each bounded kind: one step past a bound is out of bounds.
STEP: dict[object, float] = {INT: 1, SIZE: 1, DURATION: 0.001}
# Settings fields no variable sets: fixed, or (metrics listeners) replaced by HOOKSTREAM_METRICS_LISTEN.
FIELDS_WITHOUT_VARIABLE = {"retry_jitter_ratio", "router_metrics_listen", "sender_metrics_listen"}
FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings)}
BOUNDED = [v for v in VARIABLES if v.minimum is not None or v.maximum is not None]


def by_env(variables: list[Variable[Any]]) -> dict[str, Any]:
    return {"argvalues": variables, "ids": [v.env for v in variables]}


# ------------------------------------------------------------------------------------ the table


def test_every_variable_is_named_once_and_sets_a_distinct_settings_field() -> None:
    envs = [v.env for v in VARIABLES]
    fields = [v.field for v in VARIABLES]
    assert len(set(envs)) == len(envs)
    assert len(set(fields)) == len(fields)
    assert set(fields) <= FIELD_DEFAULTS.keys()
    assert FIELD_DEFAULTS.keys() - set(fields) == FIELDS_WITHOUT_VARIABLE
    assert all(env.startswith("HOOKSTREAM_") or env in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "DATABASE_READ_URL")
               for env in envs)


@pytest.mark.parametrize("variable", **by_env(list(VARIABLES)))
def test_every_variable_has_one_line_of_help(variable: Variable[Any]) -> None:
    assert variable.help.strip() and variable.kind.accepts.strip()
    for text in (variable.help, variable.describe_accepts()):
        assert "\n" not in text
        assert "|" not in text  # it would split the Markdown table's row


@pytest.mark.parametrize("variable", **by_env(list(VARIABLES)))
def test_every_default_parses_to_the_settings_default(variable: Variable[Any]) -> None:
    if variable.default is None:  # documented as unset: the field's default is None
        assert FIELD_DEFAULTS[variable.field] is None
        return
    assert variable.read(variable.default) == FIELD_DEFAULTS[variable.field]
    assert Settings.from_env({variable.env: variable.default}) == Settings()


def test_from_env_reads_only_the_variables_of_the_table() -> None:
    class RecordingEnv(Mapping[str, str]):
        def __init__(self) -> None:
            self.asked: set[str] = set()

        def __getitem__(self, key: str) -> str:
            self.asked.add(key)
            raise KeyError(key)

        def __iter__(self) -> Iterator[str]:
            return iter(())

        def __len__(self) -> int:
            return 0

    env = RecordingEnv()
    assert Settings.from_env(env) == Settings()
    assert env.asked == {v.env for v in VARIABLES}


# ----------------------------------------------------------------------------------------- bounds


def test_bounded_variables_are_the_numeric_ones() -> None:
    assert len(BOUNDED) >= 10
    assert all(v.kind in STEP for v in BOUNDED)


@pytest.mark.parametrize("variable", **by_env(BOUNDED))
def test_bounds_are_inclusive(variable: Variable[Any]) -> None:
    for bound in (variable.minimum, variable.maximum):
        if bound is not None:
            raw = variable.kind.format(bound)
            assert variable.kind.parse(variable.env, raw) == pytest.approx(bound), raw
            Settings.from_env({variable.env: raw})


@pytest.mark.parametrize("variable", **by_env(BOUNDED))
def test_one_step_past_a_bound_is_refused_naming_the_variable(variable: Variable[Any]) -> None:
    step = STEP[variable.kind]
    past = [b - step for b in (variable.minimum,) if b is not None]
    past += [b + step for b in (variable.maximum,) if b is not None]
    for value in past:
        raw = variable.kind.format(value)
        with pytest.raises(SettingsError) as info:
            Settings.from_env({variable.env: raw})
        message = str(info.value)
        assert message.startswith(f"{variable.env}={raw!r}: must be "), message
        assert variable.describe_bounds() in message


def test_bounds_messages_keep_their_wording() -> None:
    cases = {
        "HOOKSTREAM_REQUEST_TIMEOUT": ("301s", "must be between 50ms and 5m"),
        "HOOKSTREAM_BREAKER_OPEN": ("50ms", "must be between 100ms and 1h"),
        "HOOKSTREAM_OUTCOME_FLUSH_INTERVAL": ("11s", "must be between 1ms and 10s"),
        "HOOKSTREAM_MAX_RESPONSE_EXCERPT": ("2MiB", "must be at most 1MiB"),
        "HOOKSTREAM_SENDER_MAX_IN_FLIGHT": ("0", "must be between 1 and 100000"),
        "HOOKSTREAM_MAX_EVENT_BYTES": ("2MiB", "must be between 1KiB and 1MiB (an event's delivery task"),
    }
    for env, (raw, expected) in cases.items():
        with pytest.raises(SettingsError, match="^" + re.escape(f"{env}='{raw}': {expected}")):
            Settings.from_env({env: raw})


def test_outcome_flush_interval_is_bounded_in_seconds_and_stored_in_milliseconds() -> None:
    assert Settings.from_env({"HOOKSTREAM_OUTCOME_FLUSH_INTERVAL": "1ms"}).outcome_flush_interval_ms == 1
    assert Settings.from_env({"HOOKSTREAM_OUTCOME_FLUSH_INTERVAL": "10s"}).outcome_flush_interval_ms == 10_000
    with pytest.raises(SettingsError, match="HOOKSTREAM_OUTCOME_FLUSH_INTERVAL"):
        Settings.from_env({"HOOKSTREAM_OUTCOME_FLUSH_INTERVAL": "0.6ms"})  # below 1ms, though it rounds to 1


def test_empty_secret_key_means_unset() -> None:
    assert Settings.from_env({"HOOKSTREAM_SECRET_KEY": ""}).secret_key is None
    assert Settings.from_env({"HOOKSTREAM_SECRET_KEY": "  "}).secret_key is None


def test_secret_variables_are_never_echoed() -> None:
    assert {v.env for v in VARIABLES if v.secret} == {"DATABASE_URL", "DATABASE_READ_URL", "HOOKSTREAM_SECRET_KEY"}
    for env in ("DATABASE_URL", "DATABASE_READ_URL"):
        for raw in ("postgresql://u:pw-1@[::1/db", "mysql://u:pw-1@db/hs"):
            with pytest.raises(SettingsError) as info:
                Settings.from_env({env: raw})
            assert "pw-1" not in str(info.value)


# ------------------------------------------------------------------------------ docs from the table


def marked_region(text: str) -> str:
    return text.split(TABLE_BEGIN, 1)[1].split(TABLE_END, 1)[0].removeprefix("\n")


@pytest.mark.parametrize("path", DOCS_WITH_TABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_configuration_table_is_the_generated_one(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(TABLE_BEGIN) == 1 and text.count(TABLE_END) == 1, path
    # On failure: .venv/bin/python -m hookstream.core.settings --write README.md docs/CONTRACT.md
    assert marked_region(text) == render_markdown_table()


def test_markdown_table_has_one_row_per_variable() -> None:
    rows = render_markdown_table().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| `{v.env}`" for v in VARIABLES]
    assert all(row.count(" | ") == 3 for row in rows)


def test_replace_marked_table_keeps_the_rest_and_refuses_bad_markers() -> None:
    text = f"intro\n{TABLE_BEGIN}\nold\n{TABLE_END}\nafter\n"
    assert replace_marked_table(text, "new\n") == f"intro\n{TABLE_BEGIN}\nnew\n{TABLE_END}\nafter\n"
    for bad in ("no markers", f"{TABLE_END}\n{TABLE_BEGIN}\n", f"{TABLE_BEGIN}{TABLE_BEGIN}{TABLE_END}"):
        with pytest.raises(ValueError):
            replace_marked_table(bad, "new\n")


def test_module_main_prints_and_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert settings_module.main(["--markdown"]) == 0
    assert capsys.readouterr().out == render_markdown_table()
    doc = tmp_path / "doc.md"
    doc.write_text(f"# doc\n{TABLE_BEGIN}\nstale\n{TABLE_END}\n", encoding="utf-8")
    assert settings_module.main(["--write", str(doc)]) == 0
    assert marked_region(doc.read_text(encoding="utf-8")) == render_markdown_table()


def test_cli_help_lists_every_variable_with_default_and_help() -> None:
    text = render_cli_help()
    assert max(len(line) for line in text.splitlines()) <= 79
    flat = " ".join(text.split())
    for variable in VARIABLES:
        default = "unset" if variable.default is None else variable.default
        assert f"  {variable.env} (default: {default})\n" in text
        assert " ".join(variable.help.replace("`", "").split()) in flat


def test_hookstream_help_lists_every_variable() -> None:
    proc = subprocess.run([str(HOOKSTREAM_BIN), "--help"], capture_output=True, text=True, timeout=60,
                          check=False, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"})
    assert proc.returncode == 0, proc.stderr
    assert render_cli_help() in proc.stdout  # the epilog as written: RawDescriptionHelpFormatter
    for variable in VARIABLES:
        assert variable.env in proc.stdout
