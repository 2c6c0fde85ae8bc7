#!/usr/bin/env bash
# Starts the local Kafka broker and PostgreSQL (real ones, state under ROOT/.local/) and writes
# ROOT/.local/env: KEY=value lines that `make`, the tests and any script can source. Idempotent.
#
# Usage: deploy/local/up.sh [ROOT]      (ROOT defaults to the repository root)
# Env:   HOOKSTREAM_LOCAL_KAFKA_PORT (19092), HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT (19093),
#        HOOKSTREAM_LOCAL_PG_PORT (54329), DATABASE_URL (use an external PostgreSQL instead)
# The three ports are written to .local/env and reused by the next run when their variable is not
# set (an exported value wins and is remembered instead): see deploy/local/ports.sh.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "${1:-$HERE/../..}" && pwd)
source "$HERE/ports.sh"
# The scripts below read the same variables; exported, they see exactly the ports written here.
export HOOKSTREAM_LOCAL_KAFKA_PORT HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT HOOKSTREAM_LOCAL_PG_PORT
KAFKA_PORT=$HOOKSTREAM_LOCAL_KAFKA_PORT
PG_PORT=$HOOKSTREAM_LOCAL_PG_PORT
LOCAL_DB_URL=postgresql://postgres@127.0.0.1:$PG_PORT/hookstream

t0=$(date +%s)
echo "[up] starting local Kafka + PostgreSQL under $ROOT/.local"
# Kafka first: the one-time jar download is the slowest step.
"$HERE/kafka/start.sh" "$ROOT"
"$HERE/postgres/start.sh" "$ROOT"

db_url=${DATABASE_URL:-$LOCAL_DB_URL}
mkdir -p "$ROOT/.local"
# The key that encrypts webhook secrets at rest, made once for this checkout (kept with the data).
if [ ! -s "$ROOT/.local/secret.key" ]; then
    (umask 077 && head -c 32 /dev/urandom | base64 > "$ROOT/.local/secret.key")
fi
secret_key=$(tr -d '\n' < "$ROOT/.local/secret.key")
tmp=$(mktemp "$ROOT/.local/env.XXXXXX")
cat > "$tmp" <<ENV
KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT
DATABASE_URL=$db_url
HOOKSTREAM_LOCAL_KAFKA_PORT=$KAFKA_PORT
HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT=$HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT
HOOKSTREAM_LOCAL_PG_PORT=$PG_PORT
HOOKSTREAM_SECRET_KEY=$secret_key
ENV
chmod 600 "$tmp"
mv "$tmp" "$ROOT/.local/env"
echo "[up] wrote $ROOT/.local/env ($(( $(date +%s) - t0 ))s total)"
