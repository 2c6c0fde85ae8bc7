#!/usr/bin/env bash
# `make run`: creates (once) a demo organization with two stores, prints the console URL and its
# API key, then runs every hookstream service in the foreground. Ctrl-C stops it cleanly.
# Expects KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL in the environment (make sources .local/env).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN="$ROOT/.venv/bin"
DEMO="$ROOT/.local/demo.env"

# Local development defaults: plain http:// receivers on this machine are allowed.
export HOOKSTREAM_ALLOW_HTTP=${HOOKSTREAM_ALLOW_HTTP:-true}
export HOOKSTREAM_ALLOW_PRIVATE_NETWORKS=${HOOKSTREAM_ALLOW_PRIVATE_NETWORKS:-true}
export HOOKSTREAM_API_LISTEN=${HOOKSTREAM_API_LISTEN:-127.0.0.1:8080}
export HOOKSTREAM_RETRY_DELAYS=${HOOKSTREAM_RETRY_DELAYS:-5s,30s,2m}

# The demo organization lives in the local database; recreate it if that database was reset.
if [ -f "$DEMO" ]; then
    source "$DEMO"
    exists=$(psql "$DATABASE_URL" -tAc "SELECT 1 FROM organizations WHERE id = '${DEMO_ORG_ID:-}'" 2>/dev/null || true)
    [ "$exists" = "1" ] || rm -f "$DEMO"
fi
if [ ! -f "$DEMO" ]; then
    json=$("$BIN/hookstream" org create "Demo Retail" --json)
    org=$("$BIN/python" -c 'import json,sys; print(json.loads(sys.argv[1])["organization_id"])' "$json")
    key=$("$BIN/python" -c 'import json,sys; print(json.loads(sys.argv[1])["api_key"])' "$json")
    psql "$DATABASE_URL" -q -c "INSERT INTO stores (organization_id, id, name) VALUES
        ('$org', 'store_001', 'Downtown flagship'), ('$org', 'store_002', 'Online shop')"
    umask 077
    printf 'DEMO_ORG_ID=%s\nDEMO_API_KEY=%s\n' "$org" "$key" > "$DEMO"
    source "$DEMO"
fi

cat <<MSG

  hookstream console:  http://$HOOKSTREAM_API_LISTEN/
  API key (demo org):  $DEMO_API_KEY
  organization:        $DEMO_ORG_ID (stores store_001, store_002)

  Publish a test event from another terminal:
    set -a; source .local/env; set +a
    .venv/bin/hookstream publish --type order.created --org $DEMO_ORG_ID --store store_001 \\
        --data '{"order": {"id": "ord_1", "total": "42.10", "currency": "USD"}}'

MSG
exec "$BIN/hookstream" all
