#!/usr/bin/env bash
# Builds what an installation of hookstream is made from, into OUTDIR:
#   hookstream-<version>.tar.gz          the sdist (python -m build)
#   hookstream-<version>-py3-none-any.whl  the wheel, built from that sdist
#   requirements.txt                      the runtime dependencies with hashes, exported from uv.lock
# The Dockerfile's build stage and tests/integration/test_wheel.py both run this script, and both
# install the result with deploy/install-wheel.sh: the image and the test take the same path.
#
# Usage: deploy/build-dist.sh OUTDIR
# PYTHON (default .venv/bin/python) must have the `build` dependency group of uv.lock installed;
# UV (default .venv/bin/uv) exports the requirements.
set -euo pipefail
root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." >/dev/null && pwd)
out=${1:?usage: deploy/build-dist.sh OUTDIR}
python=${PYTHON:-$root/.venv/bin/python}
uv=${UV:-$root/.venv/bin/uv}
mkdir -p "$out"
out=$(cd -- "$out" >/dev/null && pwd)
rm -f "$out"/hookstream-*.whl "$out"/hookstream-*.tar.gz "$out/requirements.txt"
# Build from a copy holding only what the image's build context holds (.dockerignore): in a
# checkout, a stale *.egg-info/SOURCES.txt would add files to the sdist that package-data misses,
# and only files git tracks are taken (no editor backups or local leftovers). Without git (the
# image's build context) the tree is taken as it is, minus caches.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$root/pyproject.toml" "$root/uv.lock" "$root/README.md" "$root/LICENSE" "$stage/"
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$root" ls-files -z -- hookstream | tar -C "$root" --null -T - -cf - | tar -C "$stage" -xf -
else
    tar -C "$root" --exclude=__pycache__ --exclude='*.pyc' --exclude='*.egg-info' -cf - hookstream | tar -C "$stage" -xf -
fi
# No isolation: the build backend is the locked one installed beside `build`, and nothing is
# downloaded at build time.
"$python" -m build --no-isolation --outdir "$out" "$stage"
"$uv" export --project "$stage" --locked --no-default-groups --no-emit-project --format requirements-txt \
    --no-header --quiet --output-file "$out/requirements.txt"
