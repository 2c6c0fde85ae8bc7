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
    """Files matching ``pattern`` that git tracks or would (not ignored); the tree itself when there is no git."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", pattern], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return [p for p in ROOT.rglob(pattern) if not {".venv", ".local", "node_modules"} & set(p.parts)]
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


def test_uv_is_bootstrapped_from_the_locks_own_hashed_pin() -> None:
    """deploy/uv-bootstrap.txt is the `bootstrap` group of uv.lock exported with hashes (`make lock`
    writes it); the Makefile and the Dockerfile install uv from it and from nowhere else."""
    exported = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "uv"), "export", "--frozen", "--only-group", "bootstrap", "--no-emit-project",
         "--no-header", "--format", "requirements-txt", "--project", str(ROOT)],
        capture_output=True, text=True, check=True).stdout
    bootstrap = (ROOT / "deploy" / "uv-bootstrap.txt").read_text(encoding="utf-8")
    assert bootstrap == exported
    assert f"uv=={locked_version('uv')} " in bootstrap and "--hash=sha256:" in bootstrap
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["dependency-groups"]["bootstrap"] == [f"uv=={locked_version('uv')}"]  # exact: upgrades keep it
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert "UV_BOOTSTRAP := deploy/uv-bootstrap.txt" in makefile and "--require-hashes --no-deps -r $(UV_BOOTSTRAP)" in makefile
    assert re.search(r"^RUN pip install --require-hashes --no-deps -r deploy/uv-bootstrap\.txt$", dockerfile, re.M)
    assert not re.search(r"install[^\n]*\buv==", makefile + dockerfile)  # no unhashed install of uv


def test_the_lock_covers_every_declared_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    lock = tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))
    locked = {p["name"] for p in lock["package"]}
    assert "optional-dependencies" not in project["project"], "tools belong in dependency groups (unpublished)"
    groups = project["dependency-groups"]
    declared = [d for d in [*project["project"]["dependencies"], *groups["dev"], *groups["build"], *groups["bootstrap"]]
                if isinstance(d, str)]
    names = {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower().replace("_", "-") for d in declared}
    assert names - locked == set()
    # Every locked distribution from the index carries hashes.
    for package in lock["package"]:
        if "registry" in package.get("source", {}):
            files = [package.get("sdist"), *package.get("wheels", [])]
            assert all(f and f.get("hash", "").startswith("sha256:") for f in files if f is not None), package["name"]


def test_the_image_installs_the_wheel_the_way_the_wheel_test_does() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^RUN .*bash deploy/build-dist\.sh /dist$", text, re.M)
    assert re.search(r"^RUN bash /tmp/install-wheel\.sh python /tmp/dist", text, re.M)
    assert " -e " not in text and "--editable" not in text
    assert not re.search(r"^COPY (--from=\w+ )?\S*hookstream\S* /app", text, re.M)
    test = (ROOT / "tests" / "integration" / "test_wheel.py").read_text(encoding="utf-8")
    assert '"build-dist.sh"' in test and '"install-wheel.sh"' in test
    # The build context is what build-dist.sh stages (plus the two scripts).
    build_dist = (ROOT / "deploy" / "build-dist.sh").read_text(encoding="utf-8")
    allowed = {line[1:] for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if line.startswith("!")}
    assert allowed == {"pyproject.toml", "uv.lock", "README.md", "LICENSE", "hookstream/**", "deploy/uv-bootstrap.txt",
                       "deploy/build-dist.sh", "deploy/install-wheel.sh"}
    for name in ("pyproject.toml", "uv.lock", "README.md", "LICENSE"):
        assert f'"$root/{name}"' in build_dist
