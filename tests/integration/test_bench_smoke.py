"""The benchmark harness at tiny sizes, so it cannot rot (issue 6). No timing assertions: only that
the run completes honestly (exit 0: every delivery received, signed and durable) and writes every
result key as a positive number, except ``ordered_violations``, which must be 0 (issue 14: per order,
the sink saw every request for an event before the first request for the next)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import orjson
import pytest

from tests.bench.run import RESULT_KEYS
from tests.support import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(480)]


def test_bench_smoke_run_writes_every_result(infra_env, tmp_path):
    out = tmp_path / "results.json"
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": infra_env["KAFKA_BOOTSTRAP_SERVERS"],
           "DATABASE_URL": infra_env["DATABASE_URL"]}
    proc = subprocess.run([sys.executable, "-m", "tests.bench.run", "--smoke", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, f"bench --smoke failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    results = orjson.loads(out.read_bytes())
    assert set(results) == set(RESULT_KEYS)
    for key in RESULT_KEYS:
        value = results[key]
        assert isinstance(value, int | float) and math.isfinite(value), (key, value)
        assert value == 0 if key == "ordered_violations" else value > 0, (key, value)
    for key in ("ratio", "latency_p99_ms", "isolation_ratio", "sender_peak_rss_mb", "fanout_rps", "filters_ratio",
                "ordered_over_unordered", "ordered_failing_over_unordered", "ordered_violations"):
        assert key in proc.stdout, f"the table has no {key} line"
