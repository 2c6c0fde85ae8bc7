# Shared by start.sh / stop.sh (sourced, not executed).
# Usage: source common.sh [ROOT]   ROOT defaults to the repository root.

PG_SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "${1:-$PG_SCRIPT_DIR/../../..}" && pwd)
# The port: the exported variable, else the one this checkout remembers in .local/env, else 54329.
source "$PG_SCRIPT_DIR/../ports.sh"
PG_PORT=$HOOKSTREAM_LOCAL_PG_PORT
PG_DB=hookstream
PG_LOCAL_URL=postgresql://postgres@127.0.0.1:$PG_PORT/$PG_DB

pg_say() { echo "[postgres] $*"; }
pg_die() { echo "[postgres] ERROR: $*" >&2; exit 1; }

# initdb refuses to run as root, so as root the cluster belongs to the `postgres` OS user; as any
# other user it belongs to that user.
if (( EUID == 0 )); then PG_OWNER=postgres; else PG_OWNER=$(id -un); fi

as_owner() {
    if (( EUID == 0 )); then
        (cd / && runuser -u "$PG_OWNER" -- "$@")
    else
        "$@"
    fi
}

# Newest server binaries from the Debian layout (/usr/lib/postgresql/<major>/bin), else PATH.
pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -n $d && -x $d/pg_ctl ]]; then echo "$d"; return; fi
    d=$(command -v pg_ctl 2>/dev/null) && dirname "$d"
}

# Where the cluster lives. Normally ROOT/.local/postgres. The cluster's owner must be able to
# traverse every parent directory; when it cannot (e.g. a checkout under /root, mode 700, while the
# server runs as `postgres`), the cluster goes to /var/tmp/hookstream-pg-<hash of ROOT> instead, and
# ROOT/.local/postgres/LOCATION says where.
pg_base() {
    local local_dir=$ROOT/.local/postgres probe=$ROOT
    if [[ -f $local_dir/LOCATION ]]; then cat "$local_dir/LOCATION"; return; fi
    [[ -d $ROOT/.local ]] && probe=$ROOT/.local
    if (( EUID != 0 )) || as_owner test -x "$probe" 2>/dev/null; then
        echo "$local_dir"
    else
        echo "/var/tmp/hookstream-pg-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
    fi
}

PG_BASE=$(pg_base)
PG_DATA=$PG_BASE/data
PG_LOG=$PG_BASE/postgres.log
PG_CONF=$PG_DATA/hookstream.conf
# Unix sockets are limited to ~107 bytes of path; fall back to /tmp for deep checkouts.
PG_SOCKDIR=$PG_BASE/run
if (( ${#PG_SOCKDIR} > 80 )); then PG_SOCKDIR=/tmp; fi
