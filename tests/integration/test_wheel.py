"""hookstream as a deployment installs it: the sdist and wheel from ``deploy/build-dist.sh``, installed
by ``deploy/install-wheel.sh`` (the Dockerfile's two steps) into a fresh venv outside the repository,
then run from a directory that holds no source: ``--help``, ``migrate`` on an empty database, and
``all`` delivering a published event to a real receiver."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import orjson
import pytest

from tests.receiver import Receiver
from tests.support import create_database, drop_database, unique_id, wait_for

# The module's fixture builds and installs (about 30 s here, more on a cold pip cache): the
# first test's budget covers it.
pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
# The package's files as git tracks them; the schemas' other examples are test fixtures, not shipped.
TRACKED = sorted(subprocess.run(["git", "ls-files", "hookstream"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split())
SHIPPED = [f for f in TRACKED if not f.startswith("hookstream/schemas/examples/")
           or f.startswith("hookstream/schemas/examples/events/valid/")]


def run(args: list[str | Path], *, cwd: Path, env: dict[str, str] | None = None,
        timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout_s)
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a process on a machine with no checkout: no PYTHONPATH, no venv of ours."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(ROOT)))
    return {**env, **extra}


class Installed:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.dist = work / "dist"
        self.venv = work / "venv"
        self.home = work / "home"  # the directory the installed commands run in: no source there

    @property
    def hookstream(self) -> Path:
        return self.venv / "bin" / "hookstream"

    def start(self, *args: str, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "wb") as log:
            return subprocess.Popen([str(self.hookstream), *args], cwd=self.home, env=clean_env(**env),
                                    stdout=log, stderr=subprocess.STDOUT)

    def cli(self, *args: str, env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return run([self.hookstream, *args], cwd=self.home, env=clean_env(**env), timeout_s=timeout_s)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    it = Installed(tmp_path_factory.mktemp("wheel"))
    it.home.mkdir()
    tools = Path(sys.executable).parent
    run(["bash", ROOT / "deploy" / "build-dist.sh", it.dist], cwd=it.work,
        env={**os.environ, "PYTHON": sys.executable, "UV": str(tools / "uv")})
    # A venv of the base interpreter, as `python3 -m venv` on a fresh machine makes it.
    run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", it.venv], cwd=it.work, env=clean_env())
    run(["bash", ROOT / "deploy" / "install-wheel.sh", it.venv / "bin" / "python", it.dist], cwd=it.work,
        env=clean_env())
    yield it


def test_wheel_and_sdist_carry_exactly_the_package_and_its_licence(installed: Installed) -> None:
    [wheel] = installed.dist.glob("hookstream-*-py3-none-any.whl")
    [sdist] = installed.dist.glob("hookstream-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    metadata = {n for n in names if n.split("/", 1)[0].endswith(".dist-info")}
    assert sorted(set(names) - metadata) == SHIPPED  # nothing missing, nothing extra
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in metadata)
    assert {"hookstream/schemas/openapi.json", "hookstream/api/static/index.html"} <= set(SHIPPED)
    assert any(f.startswith("hookstream/schemas/sql/") for f in SHIPPED)
    with tarfile.open(sdist) as tar:
        in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert [f for f in SHIPPED if f not in in_sdist] == []
    assert "LICENSE" in in_sdist
    lines = (installed.dist / "requirements.txt").read_text().splitlines()
    pinned = {line.split("==")[0] for line in lines if "==" in line and not line.startswith((" ", "#"))}
    assert {"aiokafka", "aiohttp", "asyncpg", "orjson", "prometheus-client"} <= pinned
    assert not pinned & {"pytest", "ruff", "mypy", "playwright", "build"}  # runtime only
    assert all(line.rstrip().endswith("\\") for line in lines if "==" in line), "every pin carries hashes"


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    python = installed.venv / "bin" / "python"
    found = run([python, "-c", "import hookstream, hookstream.resources as r; print(hookstream.__file__);"
                 " print(r.MIGRATIONS)"], cwd=installed.home, env=clean_env()).stdout.split()
    assert all(path.startswith(str(installed.venv)) for path in found), found
    assert not any(path.startswith(str(ROOT)) for path in found)


def test_help_lists_the_subcommands_and_version_is_the_wheels(installed: Installed) -> None:
    out = installed.cli("--help", env={}).stdout
    listed = set(re.findall(r"^    ([a-z]+) {2,}\S", out, re.M))  # argparse's subcommand lines
    assert listed == {"router", "sender", "api", "all", "migrate", "topics", "org", "publish"}, out
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert installed.cli("--version", env={}).stdout.strip() == f"hookstream {version}"


@pytest.fixture
async def empty_database(infra_env: dict[str, str]) -> AsyncIterator[str]:
    """A database with no tables at all: the installed ``hookstream migrate`` makes them."""
    name = unique_id("hs_wheel_")
    yield await create_database(infra_env["DATABASE_URL"], name)
    await drop_database(infra_env["DATABASE_URL"], name)


async def test_installed_migrate_and_all_deliver_an_event(installed: Installed, hs_env: dict[str, str],
                                                         empty_database: str) -> None:
    env = {**hs_env, "DATABASE_URL": empty_database}
    first = installed.cli("migrate", env=env)
    assert "0001" in first.stdout + first.stderr
    conn = await asyncpg.connect(empty_database)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions and versions[0] == 1
    finally:
        await conn.close()
    again = installed.cli("migrate", env=env)
    assert again.stdout.strip() == "database is up to date"

    org = orjson.loads(installed.cli("org", "create", "Wheel shop", "--json", env=env).stdout)
    api = f"http://{env['HOOKSTREAM_API_LISTEN']}"
    headers = {"Authorization": f"Bearer {org['api_key']}"}
    log_path = installed.work / "all.log"
    proc = installed.start("all", env=env, log_path=log_path)
    try:
        async with Receiver() as receiver, aiohttp.ClientSession() as http:
            async def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"hookstream all exited {proc.returncode}:\n{log_path.read_text()}")
                try:
                    async with http.get(f"{api}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(ready, timeout_s=60, message="hookstream all to be ready")
            async with http.get(f"{api}/") as resp:  # the console, from package data
                assert resp.status == 200 and "<html" in (await resp.text()).lower()
            async with http.get(f"{api}/static/app.js") as resp:
                assert resp.status == 200
            async with http.get(f"{api}/openapi.json") as resp:
                assert resp.status == 200 and (await resp.json())["openapi"].startswith("3.")
            async with http.post(f"{api}/v1/stores", json={"id": "s1", "name": "Main"}, headers=headers) as resp:
                assert resp.status == 201, await resp.text()
            async with http.post(f"{api}/v1/webhooks", headers=headers, json={
                    "url": receiver.url("/hook"), "event_types": ["order.created"], "store_ids": ["s1"]}) as resp:
                assert resp.status == 201, await resp.text()
                secret = (await resp.json())["secret"]

            data = orjson.dumps({"order": {"id": "ord_1", "total": "9.99", "currency": "EUR"}}).decode()
            installed.cli("publish", "--type", "order.created", "--store", "s1", "--org", org["organization_id"],
                          "--data", data, "--id", "evt_wheel_1", env=env)
            await wait_for(lambda: receiver.at("/hook"), timeout_s=60, message="the delivery")
            [got] = receiver.at("/hook")
            assert got.verify(secret)
            assert orjson.loads(got.body)["id"] == "evt_wheel_1"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, log_path.read_text()
