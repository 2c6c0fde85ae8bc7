#!/usr/bin/env bash
# Stops the local Kafka broker and PostgreSQL started by up.sh. Data under ROOT/.local/ is kept
# (delete ROOT/.local/kafka/data and ROOT/.local/postgres to start from scratch). Idempotent.
#
# Usage: deploy/local/down.sh [ROOT]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "${1:-$HERE/../..}" && pwd)
rc=0
"$HERE/kafka/stop.sh" "$ROOT" || rc=1
"$HERE/postgres/stop.sh" "$ROOT" || rc=1
echo "[up] down$( (( rc == 0 )) || echo ' (with errors)')"
exit $rc
