"""The Prometheus configuration and alert rules pass promtool: syntax, config (with its rule files)
and the rule unit tests in deploy/prometheus/alerts_test.yml (each alert firing and not firing).

promtool comes from the Debian package `prometheus` (installed by `make install`). Without it
these tests fail rather than skip: a rules file nobody checks is how alerts silently break."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMTOOL_TIMEOUT_S = 120


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH: run `make install` (it installs the Debian package `prometheus`)")
    return subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=PROMTOOL_TIMEOUT_S, check=False)


def assert_promtool_ok(*args: str) -> None:
    result = run_promtool(*args)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


def test_alert_rules_are_valid() -> None:
    assert_promtool_ok("check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))


def test_prometheus_config_is_valid_and_finds_its_rule_files() -> None:
    assert_promtool_ok("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))


def test_alert_rule_unit_tests_pass() -> None:
    assert_promtool_ok("test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml"))


def test_a_broken_rule_file_is_caught(tmp_path: Path) -> None:
    """Guards the guard: promtool's exit status really reports a bad expression."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum(rate(x[5m])\n")
    assert run_promtool("check", "rules", str(bad)).returncode != 0
