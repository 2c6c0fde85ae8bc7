#!/usr/bin/env bash
# Installs hookstream from DISTDIR (made by deploy/build-dist.sh) into PYTHON's environment: first
# the locked runtime dependencies, each checked against its hash, then the wheel without resolving
# anything. Used by the Dockerfile and by tests/integration/test_wheel.py.
#
# Usage: deploy/install-wheel.sh PYTHON DISTDIR
set -euo pipefail
python=${1:?usage: deploy/install-wheel.sh PYTHON DISTDIR}
dist=${2:?usage: deploy/install-wheel.sh PYTHON DISTDIR}
wheels=("$dist"/hookstream-*-py3-none-any.whl)
if [[ ${#wheels[@]} -ne 1 || ! -f ${wheels[0]} ]]; then
    echo "install-wheel.sh: expected exactly one hookstream wheel in $dist, found: ${wheels[*]}" >&2
    exit 2
fi
# Wheels only: every locked dependency has them for Linux x86_64 and aarch64, and a source build
# would fetch unlocked build tools (and need a compiler the slim image lacks).
"$python" -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps --only-binary=:all: \
    -r "$dist/requirements.txt"
"$python" -m pip install --quiet --disable-pip-version-check --no-deps "${wheels[0]}"
"$python" -m pip check
