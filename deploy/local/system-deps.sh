#!/usr/bin/env bash
# Installs the system packages hookstream's local stack and tests need, only when missing:
# Java + Maven (Kafka), PostgreSQL server binaries, Chromium (console browser test),
# promtool from Debian's prometheus package (alert-rule tests), python3-venv (the .venv).
# Debian/Ubuntu only (apt-get); on other systems install the equivalents by hand.
set -euo pipefail
missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# `python3 -m venv` needs ensurepip, which Debian ships apart (make install creates .venv with it).
python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "[deps] missing: ${missing[*]} and no apt-get here: install them by hand" >&2
        exit 1
    fi
    echo "[deps] installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
