# Shared by start.sh / stop.sh / tool.sh (sourced, not executed).
# Usage: source common.sh [ROOT]   ROOT defaults to the repository root.

KAFKA_SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "${1:-$KAFKA_SCRIPT_DIR/../../..}" && pwd)

# The ports: exported variables, else the ones this checkout remembers in .local/env, else defaults.
source "$KAFKA_SCRIPT_DIR/../ports.sh"
KAFKA_PORT=$HOOKSTREAM_LOCAL_KAFKA_PORT
KAFKA_CONTROLLER_PORT=$HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT

KAFKA_BASE=$ROOT/.local/kafka
KAFKA_LIBS=$KAFKA_BASE/libs              # jars from pom.xml; .stamp written after a complete copy
KAFKA_DATA=$KAFKA_BASE/data              # log.dirs (KRaft metadata + topic data); kept by stop.sh
KAFKA_LOG=$KAFKA_BASE/logs/broker.log    # broker stdout/stderr + log4j2 (WARN and start/stop lines)
KAFKA_PROPS=$KAFKA_BASE/server.properties
KAFKA_LOG4J=$KAFKA_BASE/log4j2.properties
KAFKA_PIDFILE=$KAFKA_BASE/kafka.pid
# The controller port KAFKA_DATA was formatted with (the metadata log keeps the controller's address).
KAFKA_FORMATTED_PORT=$KAFKA_BASE/data.controller-port

kafka_say() { echo "[kafka] $*"; }
kafka_die() { echo "[kafka] ERROR: $*" >&2; exit 1; }

# True when $1 is a live broker process of *this* checkout (guards against pid reuse and
# against other checkouts' brokers).
kafka_is_ours() {
    local pid=$1
    [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
    local cmd
    cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmd == *kafka.Kafka*"$KAFKA_PROPS"* ]]
}

# Prints the broker pid (from the pid file, else by scanning /proc), or nothing.
kafka_pid() {
    local pid=""
    [[ -f $KAFKA_PIDFILE ]] && pid=$(cat "$KAFKA_PIDFILE" 2>/dev/null || true)
    if kafka_is_ours "$pid"; then echo "$pid"; return; fi
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        if kafka_is_ours "$pid"; then echo "$pid"; return; fi
    done
}

kafka_port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# True when process $1 listens on port $2.
kafka_listens_on() {
    local pids
    pids=$(port_listener_pids "$2")
    [[ $'\n'$pids$'\n' == *$'\n'"$1"$'\n'* ]]
}

# Runs a Java main class from the Kafka jars (TopicCommand, ConsoleProducer, ...).
kafka_java() {
    local log=()
    [[ -f $KAFKA_LOG4J ]] && log=(-Dlog4j2.configurationFile="$KAFKA_LOG4J")
    java -Xms64m -Xmx512m "${log[@]}" -cp "$KAFKA_LIBS/*" "$@"
}

now_ms() { date +%s%3N; }
# Seconds since $1 (from now_ms), one decimal.
elapsed() { local d=$(( $(now_ms) - $1 )); printf '%d.%d' $((d / 1000)) $((d % 1000 / 100)); }
