#!/usr/bin/env bash
# Stops the local PostgreSQL cluster started by start.sh (pg_ctl stop -m fast). Data is kept.
# Idempotent; nothing to do when no local cluster exists (e.g. DATABASE_URL was external). It does
# not look at DATABASE_URL, so it also works from a shell that sourced .local/env.
#
# Usage: deploy/local/postgres/stop.sh [ROOT]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "${1:-}"

bindir=$(pg_bindir || true)
if [[ ! -f $PG_DATA/PG_VERSION || -z $bindir ]]; then
    pg_say "no local cluster; nothing to stop"
    exit 0
fi
if ! as_owner "$bindir/pg_ctl" -D "$PG_DATA" status > /dev/null 2>&1; then
    pg_say "not running"
    exit 0
fi
as_owner "$bindir/pg_ctl" -D "$PG_DATA" stop -m fast -w -t 60 > /dev/null
pg_say "stopped"
