#!/usr/bin/env bash
# Stops the local Kafka broker started by start.sh: SIGTERM (controlled shutdown), up to 30 s, then
# SIGKILL. Data is kept, so start.sh resumes with the same topics and committed offsets (used by
# fault-injection tests that restart the broker mid-stream). Idempotent.
#
# Usage: deploy/local/kafka/stop.sh [ROOT]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh" "${1:-}"

STOP_TIMEOUT_S=30
t0=$(now_ms)

pid=$(kafka_pid)
if [[ -z $pid ]]; then
    rm -f "$KAFKA_PIDFILE"
    kafka_say "not running"
    exit 0
fi

kafka_say "stopping broker (pid $pid)"
kill -TERM "$pid" 2>/dev/null || true
deadline=$(( $(now_ms) + STOP_TIMEOUT_S * 1000 ))
while kill -0 "$pid" 2>/dev/null && (( $(now_ms) < deadline )); do
    sleep 0.2
done
if kill -0 "$pid" 2>/dev/null; then
    kafka_say "no clean exit after ${STOP_TIMEOUT_S}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
fi
rm -f "$KAFKA_PIDFILE"
kafka_say "stopped in $(elapsed "$t0")s"
