"""deploy/local/ as a user meets it, with a second checkout of its own: a fresh Kafka broker and
PostgreSQL started by up.sh under a temporary ROOT on free ports.

- The first start of router + sender against that fresh broker (no ``__consumer_offsets`` yet, the
  case where aiokafka logs "Group Coordinator Request failed" at ERROR, then "Marking the coordinator
  dead" warnings) logs no ERROR line and none of those warnings.
- Ports are remembered: up.sh run again without the port variables finds the same servers.
- A checkout started on ports another checkout's servers hold fails and names that checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from hookstream.core.db import migrate
from hookstream.core.kafka import open_producer
from tests.receiver import Receiver
from tests.support import (
    ROOT,
    HookstreamProcess,
    free_port,
    isolated_names,
    make_org,
    make_webhook,
    sample_event,
    unique_id,
    wait_for,
)

pytestmark = pytest.mark.integration

LOCAL = ROOT / "deploy" / "local"
PORT_VARIABLES = ("HOOKSTREAM_LOCAL_KAFKA_PORT", "HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT", "HOOKSTREAM_LOCAL_PG_PORT")
# A second broker on a 2-core machine: keep its heap small.
SMALL_BROKER = "-Xms128m -Xmx384m -XX:+UseSerialGC -XX:CICompilerCount=2"


def script_env(**ports: int) -> dict[str, str]:
    """The environment without any port variable or connection setting, plus ``ports``."""
    env = {k: v for k, v in os.environ.items()
           if k not in PORT_VARIABLES and k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    env["KAFKA_JVM_OPTS"] = SMALL_BROKER
    env.update({name: str(port) for name, port in ports.items()})
    return env


def run_script(script: str, root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(LOCAL / script), str(root)], env=env, capture_output=True, text=True,
                          timeout=240)


def read_env(root: Path) -> dict[str, str]:
    lines = (root / ".local" / "env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def new_checkout() -> Path:
    """A temporary ROOT that the PostgreSQL owner (``postgres`` when run as root) can traverse, with
    this checkout's Kafka jars linked in rather than copied by Maven again."""
    root = Path(tempfile.mkdtemp(prefix="hs-checkout-"))
    root.chmod(0o755)
    (root / ".local" / "kafka").mkdir(parents=True)
    (root / ".local" / "kafka" / "libs").symlink_to(ROOT / ".local" / "kafka" / "libs")
    return root


def remove_checkout(root: Path) -> None:
    run_script("down.sh", root, script_env())
    location = root / ".local" / "postgres" / "LOCATION"
    if location.is_file():
        shutil.rmtree(location.read_text().strip(), ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def other_checkout() -> Iterator[Path]:
    """A second checkout with its own fresh broker and PostgreSQL, started by up.sh on free ports."""
    if not (ROOT / ".local" / "kafka" / "libs" / ".stamp").is_file():
        pytest.skip("no Kafka jars in .local/kafka/libs: run `make up` first")
    root = new_checkout()
    try:
        ports = {"HOOKSTREAM_LOCAL_KAFKA_PORT": free_port(), "HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT": free_port(),
                 "HOOKSTREAM_LOCAL_PG_PORT": free_port()}
        started = run_script("up.sh", root, script_env(**ports))
        assert started.returncode == 0, started.stdout + started.stderr
        yield root
    finally:
        remove_checkout(root)


async def test_first_start_on_a_fresh_broker_logs_no_error(other_checkout, tmp_path):
    """Runs first in this module: the other checkout's broker has never seen a consumer group."""
    local = read_env(other_checkout)
    await migrate(local["DATABASE_URL"])
    env = {"KAFKA_BOOTSTRAP_SERVERS": local["KAFKA_BOOTSTRAP_SERVERS"], "DATABASE_URL": local["DATABASE_URL"],
           **isolated_names(unique_id()), "HOOKSTREAM_ALLOW_HTTP": "true",
           "HOOKSTREAM_ALLOW_PRIVATE_NETWORKS": "true", "HOOKSTREAM_API_LISTEN": f"127.0.0.1:{free_port()}",
           "HOOKSTREAM_LOG_LEVEL": "INFO", "HOOKSTREAM_LOG_FORMAT": "json"}
    conn = await asyncpg.connect(local["DATABASE_URL"])
    async with Receiver() as receiver:
        try:
            org, _ = await make_org(conn, "Fresh", stores=("s1",))
            await make_webhook(conn, org, receiver.url("/fresh"), event_types=["order.created"], store_ids=["s1"])
        finally:
            await conn.close()
        process = HookstreamProcess(["all"], env, tmp_path / "all.log").start()
        try:
            await wait_for(lambda: "hookstream router+sender+api started" in process.output(), timeout_s=120,
                           message="hookstream all started")
            topic = env["HOOKSTREAM_SOURCE_TOPICS"].split(",")[1]
            async with open_producer(local["KAFKA_BOOTSTRAP_SERVERS"]) as producer:
                await producer.send_and_wait(topic, orjson.dumps(sample_event("order.created", org, "s1")), key=b"k")
            # Delivered: the router's and the sender's consumers both joined their groups.
            await wait_for(lambda: receiver.at("/fresh"), timeout_s=120, message="the event delivered")
        finally:
            process.stop()
    lines = [orjson.loads(line) for line in process.output().splitlines() if line.startswith("{")]
    assert lines, process.output()
    errors = [line for line in lines if line["level"] in ("error", "critical")]
    assert errors == []
    # nor aiokafka's wall of "Marking the coordinator dead" while the coordinator loads its partition
    assert [line for line in lines if line["logger"] == "aiokafka.consumer.group_coordinator"] == []


def test_ports_are_remembered_by_the_checkout(other_checkout):
    before = read_env(other_checkout)
    assert set(PORT_VARIABLES) <= set(before), "every port, the controller's too, is written to .local/env"
    again = run_script("up.sh", other_checkout, script_env())  # no port variable at all
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already running (pid" in again.stdout and before["HOOKSTREAM_LOCAL_KAFKA_PORT"] in again.stdout
    after = read_env(other_checkout)
    assert {k: after[k] for k in (*PORT_VARIABLES, "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")} == \
        {k: before[k] for k in (*PORT_VARIABLES, "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")}


def test_moving_a_running_checkout_to_other_ports_says_to_stop_it_first(other_checkout):
    taken = read_env(other_checkout)
    moved = run_script("up.sh", other_checkout, script_env(HOOKSTREAM_LOCAL_KAFKA_PORT=free_port()))
    assert moved.returncode != 0
    assert f"runs on port {taken['HOOKSTREAM_LOCAL_KAFKA_PORT']}, not" in moved.stderr, moved.stderr
    moved = run_script("postgres/start.sh", other_checkout, script_env(HOOKSTREAM_LOCAL_PG_PORT=free_port()))
    assert moved.returncode != 0
    assert f"runs on port {taken['HOOKSTREAM_LOCAL_PG_PORT']}, not" in moved.stderr, moved.stderr
    assert read_env(other_checkout) == taken, "a refused start leaves the remembered ports alone"


def test_a_checkout_on_ports_another_one_holds_fails_and_names_it(other_checkout):
    taken = read_env(other_checkout)
    root = new_checkout()
    try:
        # Its broker's port: Kafka starts first.
        clash = run_script("up.sh", root, script_env(
            HOOKSTREAM_LOCAL_KAFKA_PORT=int(taken["HOOKSTREAM_LOCAL_KAFKA_PORT"]),
            HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT=free_port(), HOOKSTREAM_LOCAL_PG_PORT=free_port()))
        assert clash.returncode != 0
        assert f"Kafka broker of the checkout {other_checkout} (pid " in clash.stderr, clash.stderr
        assert not (root / ".local" / "env").exists(), "nothing to connect to is written"
        # Its PostgreSQL's port.
        clash = run_script("postgres/start.sh", root, script_env(
            HOOKSTREAM_LOCAL_PG_PORT=int(taken["HOOKSTREAM_LOCAL_PG_PORT"])))
        assert clash.returncode != 0
        assert f"PostgreSQL of the checkout {other_checkout} (pid " in clash.stderr, clash.stderr
    finally:
        remove_checkout(root)


def test_kafka_data_formatted_for_another_controller_port_is_refused(other_checkout):
    """Last in this module: it restarts the other checkout's broker."""
    taken = read_env(other_checkout)
    stopped = run_script("kafka/stop.sh", other_checkout, script_env())
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    refused = run_script("kafka/start.sh", other_checkout,
                         script_env(HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT=free_port()))
    assert refused.returncode != 0
    assert f"was formatted for controller port {taken['HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT']}, not" \
        in refused.stderr, refused.stderr
    assert "delete" in refused.stderr and "topics and committed offsets are lost" in refused.stderr
    again = run_script("up.sh", other_checkout, script_env())  # the remembered ports: starts again
    assert again.returncode == 0, again.stdout + again.stderr
    assert read_env(other_checkout) == taken
