"""The repository is self-contained and its install paths agree: documentation links resolve inside
the checkout, one uv version everywhere, and the image installs the wheel exactly as
deploy/build-dist.sh and deploy/install-wheel.sh (which tests/integration/test_wheel.py runs) do."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
MARKDOWN_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def tracked(pattern: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", pattern], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if (ROOT / line).is_file()]


def markdown_files() -> list[Path]:
    files = tracked("*.md")
    assert ROOT / "README.md" in files and ROOT / "docs" / "CONTRACT.md" in files
    return files


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of ``path``: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^#{1,6}\s+(.*?)\s*#*$", line):
            text = re.sub(r"[`*_]", "", match.group(1)).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves_inside_the_repository(doc: Path) -> None:
    broken = []
    for target in MARKDOWN_LINK.findall(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (doc.parent / path_part).resolve() if path_part else doc
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
        elif not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in heading_anchors(resolved):
            broken.append(f"{target} (no such heading)")
    assert broken == [], f"{doc.relative_to(ROOT)}: {broken}"


def test_readme_links_the_contract_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/CONTRACT.md)" in readme
    assert "../shared" not in readme


def locked_version(name: str) -> str:
    lock = tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))
    [version] = [p["version"] for p in lock["package"] if p["name"] == name]
    return version


def test_one_uv_version_in_the_makefile_the_dockerfile_and_the_lock() -> None:
    makefile = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
    dockerfile = re.search(r"^ARG UV_VERSION=(\S+)$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert makefile and dockerfile
    assert makefile.group(1) == dockerfile.group(1) == locked_version("uv")


def test_the_lock_covers_every_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    lock = tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))
    locked = {p["name"] for p in lock["package"]}
    declared = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["dev"],
                *project["dependency-groups"]["build"]]
    names = {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in declared}
    assert names - locked == set()
    # Every locked distribution from the index carries hashes.
    for package in lock["package"]:
        if "registry" in package.get("source", {}):
            files = [package.get("sdist"), *package.get("wheels", [])]
            assert all(f and f.get("hash", "").startswith("sha256:") for f in files if f is not None), package["name"]


def test_the_image_installs_the_wheel_the_way_the_wheel_test_does() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^RUN .*deploy/build-dist\.sh /dist$", text, re.M)
    assert re.search(r"^RUN /tmp/install-wheel\.sh python /tmp/dist", text, re.M)
    assert " -e " not in text and "--editable" not in text
    assert not re.search(r"^COPY (--from=\w+ )?\S*hookstream\S* /app", text, re.M)
    test = (ROOT / "tests" / "integration" / "test_wheel.py").read_text(encoding="utf-8")
    assert '"build-dist.sh"' in test and '"install-wheel.sh"' in test
    # The build context is what build-dist.sh stages (plus the two scripts).
    build_dist = (ROOT / "deploy" / "build-dist.sh").read_text(encoding="utf-8")
    allowed = {line[1:] for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if line.startswith("!")}
    assert allowed == {"pyproject.toml", "uv.lock", "README.md", "hookstream/**", "deploy/build-dist.sh",
                       "deploy/install-wheel.sh"}
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        assert f'"$root/{name}"' in build_dist
