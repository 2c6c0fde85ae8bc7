"""The `hookstream` entry point: a bad configuration stops start-up with exit 2 naming the variable;
every command has working --help. Nothing here reaches Kafka or PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hookstream.cli import EXIT_USAGE, build_parser, main

HOOKSTREAM_BIN = Path(sys.executable).parent / "hookstream"
ROOT = Path(__file__).resolve().parents[2]


def run_hookstream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    return subprocess.run(
        [str(HOOKSTREAM_BIN), *args],
        env={**base, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# ---------------------------------------------------------------------------------------- in process


def test_bad_setting_exits_2_naming_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"], env={"HOOKSTREAM_REQUEST_TIMEOUT": "ten"}) == 2
    out, err = capsys.readouterr()
    assert "HOOKSTREAM_REQUEST_TIMEOUT" in err
    assert out == ""


@pytest.mark.parametrize(
    "argv",
    [
        ["router"],
        ["sender"],
        ["api"],
        ["all"],
        ["migrate"],
        ["topics"],
        ["org", "create", "Acme"],
        ["publish", "--type", "order.created", "--store", "s1", "--org", "o1", "--data", "{}"],
    ],
)
@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("HOOKSTREAM_RETRY_DELAYS", "bogus"),
        ("KAFKA_BOOTSTRAP_SERVERS", "nohost"),
        ("HOOKSTREAM_ALLOW_HTTP", "perhaps"),
    ],
)
def test_every_command_validates_settings_before_starting(
    argv: list[str], var: str, raw: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv, env={var: raw}) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert var in err
    assert out == ""


def test_database_password_is_not_printed_on_configuration_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate"], env={"DATABASE_URL": "mysql://u:s3cr3t-pw@db/x"}) == 2
    _, err = capsys.readouterr()
    assert "DATABASE_URL" in err
    assert "s3cr3t-pw" not in err


@pytest.mark.parametrize(
    "argv", [[], ["bogus"], ["org"], ["org", "create"], ["publish"], ["router", "--nope"]]
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv, env={})
    assert info.value.code == 2
    assert capsys.readouterr().err


def test_parser_knows_every_command() -> None:
    parser = build_parser()
    for argv in (
        ["router"],
        ["sender"],
        ["api"],
        ["all"],
        ["migrate"],
        ["topics"],
        ["org", "create", "n"],
        ["publish", "--type", "t", "--store", "s", "--org", "o"],
    ):
        assert parser.parse_args(argv).command == argv[0]


def test_topics_flags() -> None:
    parser = build_parser()
    plain = parser.parse_args(["topics"])
    assert (plain.with_source_topics, plain.strict) == (False, False)
    both = parser.parse_args(["topics", "--with-source-topics", "--strict"])
    assert (both.with_source_topics, both.strict) == (True, True)


def test_publish_defaults() -> None:
    args = build_parser().parse_args(["publish", "--type", "order.created", "--store", "s", "--org", "o"])
    assert (args.event_type, args.store, args.org, args.data, args.event_id, args.occurred_at) == (
        "order.created",
        "s",
        "o",
        "-",
        None,
        None,
    )


def test_org_create_json_flag() -> None:
    args = build_parser().parse_args(["org", "create", "Acme Inc", "--json"])
    assert (args.command, args.org_command, args.name, args.json) == ("org", "create", "Acme Inc", True)


# ------------------------------------------------------------------------------- real entry point


def test_entry_point_is_installed() -> None:
    assert HOOKSTREAM_BIN.exists()


def test_real_entry_point_bad_retry_delays_exits_2() -> None:
    proc = run_hookstream("router", env={"HOOKSTREAM_RETRY_DELAYS": "bogus"})
    assert proc.returncode == 2, proc.stderr
    assert "HOOKSTREAM_RETRY_DELAYS" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_real_entry_point_help() -> None:
    proc = run_hookstream("--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage: hookstream" in proc.stdout
    for command in ("router", "sender", "api", "all", "migrate", "topics", "org", "publish"):
        assert command in proc.stdout


@pytest.mark.parametrize(
    ("argv", "must_mention"),
    [
        (["router"], "router"),
        (["sender"], "sender"),
        (["api"], "api"),
        (["all"], "all"),
        (["migrate"], "migrate"),
        (["topics"], "--with-source-topics"),
        (["org", "create"], "name"),
        (["publish"], "--type"),
    ],
    ids=["router", "sender", "api", "all", "migrate", "topics", "org-create", "publish"],
)
def test_real_entry_point_subcommand_help(argv: list[str], must_mention: str) -> None:
    # --help must work even with a broken environment: it reads no configuration.
    proc = run_hookstream(*argv, "--help", env={"HOOKSTREAM_RETRY_DELAYS": "bogus"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: hookstream " + " ".join(argv))
    assert must_mention in proc.stdout
    assert proc.stderr == ""
