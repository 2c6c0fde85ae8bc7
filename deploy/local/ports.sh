# The local ports of one checkout, and who holds a port (sourced by kafka/common.sh and
# postgres/common.sh after they set ROOT; not executed).
#
# A port moved through HOOKSTREAM_LOCAL_KAFKA_PORT, HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT or
# HOOKSTREAM_LOCAL_PG_PORT is written to ROOT/.local/env by up.sh; a later `make up` / `make run` /
# `make test` in that checkout, run without the variable, takes it from there. A variable that is
# set (exported) wins, and up.sh then remembers it instead.

# The value of KEY in ROOT/.local/env, or nothing.
local_env_value() {
    [[ -r $ROOT/.local/env ]] || return 0
    sed -n "s/^$1=//p" "$ROOT/.local/env" | tail -n 1
}

: "${HOOKSTREAM_LOCAL_KAFKA_PORT:=$(local_env_value HOOKSTREAM_LOCAL_KAFKA_PORT)}"
: "${HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT:=$(local_env_value HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT)}"
: "${HOOKSTREAM_LOCAL_PG_PORT:=$(local_env_value HOOKSTREAM_LOCAL_PG_PORT)}"
HOOKSTREAM_LOCAL_KAFKA_PORT=${HOOKSTREAM_LOCAL_KAFKA_PORT:-19092}
HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT=${HOOKSTREAM_LOCAL_KAFKA_CONTROLLER_PORT:-19093}
HOOKSTREAM_LOCAL_PG_PORT=${HOOKSTREAM_LOCAL_PG_PORT:-54329}

# The pids of the processes listening on TCP port $1 (any address), one a line; nothing when none
# does or when their sockets cannot be seen (another user's processes, without root).
port_listener_pids() {
    local hex inodes inode
    hex=$(printf '%04X' "$1")
    # /proc/net/tcp{,6}: "sl local_address rem_address st ... inode"; st 0A is LISTEN.
    inodes=$(awk -v port=":$hex" 'NR > 1 && $4 == "0A" && substr($2, length($2) - 4) == port { print $10 }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null | sort -u)
    [[ -n $inodes ]] || return 0
    for inode in $inodes; do
        find /proc/[0-9]*/fd -maxdepth 1 -lname "socket:\[$inode\]" 2>/dev/null | cut -d/ -f3
    done | sort -un
}

# The checkout whose .local holds path $1 (/x/.local/kafka/... -> /x), or nothing.
checkout_of() {
    [[ $1 == */.local/* ]] && echo "${1%%/.local/*}"
}

# One line naming whatever holds port $1: the Kafka broker or PostgreSQL of which checkout (or data
# directory), with its pid; another program with its pid and command; or "an unknown process".
describe_port_owner() {
    local pid cmd target
    pid=$(port_listener_pids "$1" | head -n 1)
    if [[ -z $pid ]]; then
        echo "a process this user cannot see (not started by this user?)"
        return
    fi
    cmd=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
    if [[ $cmd == *kafka.Kafka* ]]; then
        target=${cmd##*kafka.Kafka }
        target=${target%% *}
        if [[ -n $(checkout_of "$target") ]]; then
            echo "the Kafka broker of the checkout $(checkout_of "$target") (pid $pid, $target)"
        else
            echo "a Kafka broker (pid $pid, $target)"
        fi
        return
    fi
    target=$(readlink "/proc/$pid/cwd" 2>/dev/null || true)
    if [[ $cmd == *postgres* && $cmd == *" -D "* ]]; then
        target=${cmd##* -D }
        target=${target%% *}
    fi
    if [[ $cmd == *postgres* && -n $target ]]; then
        if [[ -n $(checkout_of "$target") ]]; then
            echo "the PostgreSQL of the checkout $(checkout_of "$target") (pid $pid, data $target)"
        elif [[ -f $target/hookstream.conf ]]; then
            echo "a hookstream PostgreSQL (pid $pid, data $target; its checkout's .local/postgres/LOCATION names it)"
        else
            echo "a PostgreSQL server (pid $pid, data $target)"
        fi
        return
    fi
    echo "pid $pid (${cmd:0:120})"
}
