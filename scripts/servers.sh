# Test servers for scripts/test (sourced after common.sh): SecantusDB and redis-server on free
# loopback ports with fresh storage, and a foreground command (cargo) run so that an interrupted
# run can stop it and everything it started.
#
# Servers are started by the calling shell itself (never inside `$(...)`, whose subshell would
# own them and take their pids along), so their pids are children of this shell: `servers_init`
# installs traps that, on any exit (success, a failing command under `set -e`, SIGINT, SIGTERM,
# SIGHUP), stop the foreground command's process group and then each server (TERM, then KILL
# after 10 s), and wait for them.

SERVER_PIDS=()
SERVERS_TMP=""
FOREGROUND_PID=""

# Installs the traps and makes the scratch directory (logs, storage).
servers_init() {
    SERVERS_TMP="$(mktemp -d)"
    trap servers_stop EXIT
    # Exiting from these runs the EXIT trap; the codes are the usual 128 + signal.
    trap 'exit 129' HUP
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Whether a pid is a live process (a zombie waiting to be reaped is not).
pid_alive() {
    local state
    state="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z* ]]
}

wait_port() { # $1 = port, $2 = name (its log is $SERVERS_TMP/$2.log), $3 = pid
    for _ in $(seq 1 150); do
        if python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then
            return 0
        fi
        pid_alive "$3" || break
        sleep 0.2
    done
    echo "$2 did not start; log:" >&2
    cat "$SERVERS_TMP/$2.log" >&2
    return 1
}

# Installs SecantusDB (a MongoDB-wire-compatible server) into .venv unless it is there, and
# exports SECANTUSD_BIN.
ensure_secantus() {
    if [ ! -x "$ROOT/.venv/bin/secantusd-py" ]; then
        echo "==> installing SecantusDB into .venv" >&2
        python3 -m venv "$ROOT/.venv"
        "$ROOT/.venv/bin/pip" install -q --upgrade pip >/dev/null
        "$ROOT/.venv/bin/pip" install -q --pre secantusdb
    fi
    export SECANTUSD_BIN="$ROOT/.venv/bin/secantusd-py"
}

start_secantus() { # $1 = name, $2 = variable set to its URI
    local port; port="$(free_port)"
    "$SECANTUSD_BIN" --host 127.0.0.1 --port "$port" --storage-path "$SERVERS_TMP/$1" \
        --oplog-max-entries 20000 --log-level WARNING >"$SERVERS_TMP/$1.log" 2>&1 &
    SERVER_PIDS+=("$!")
    wait_port "$port" "SecantusDB $1" "$!" || return 1
    printf -v "$2" 'mongodb://127.0.0.1:%s' "$port"
}

start_gateway() { # $1 = name, $2 = data dir, $3/$4 = variables set to its API/ops ports, then flags
    local name="$1" data="$2" api ops; shift 2
    local api_var="$1" ops_var="$2"; shift 2
    api="$(free_port)"; ops="$(free_port)"
    while [ "$ops" = "$api" ]; do ops="$(free_port)"; done
    "$GATEWAY_BIN" serve --listen "127.0.0.1:$api" --ops-listen "127.0.0.1:$ops" \
        --data-dir "$data" "$@" >"$SERVERS_TMP/$name.log" 2>&1 &
    SERVER_PIDS+=("$!")
    LAST_SERVER_PID=$!
    wait_port "$ops" "$name" "$!" || return 1
    printf -v "$api_var" '%s' "$api"
    printf -v "$ops_var" '%s' "$ops"
}

start_redis() { # $1 = variable set to its URL; no persistence, fresh directory
    local port; port="$(free_port)"
    mkdir -p "$SERVERS_TMP/redis"
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --dir "$SERVERS_TMP/redis" >"$SERVERS_TMP/redis.log" 2>&1 &
    SERVER_PIDS+=("$!")
    wait_port "$port" "redis" "$!" || return 1
    printf -v "$1" 'redis://127.0.0.1:%s' "$port"
}

# Runs a command in its own process group and waits for it; its status is returned. If the
# script is interrupted meanwhile, `servers_stop` stops the whole group: the command (cargo),
# the test binaries and whatever they started. (In a shell without job control, as scripts
# are, `setsid` runs in the background child itself, so `$!` is the group's id.)
run_foreground() {
    setsid "$@" &
    FOREGROUND_PID=$!
    local status=0
    wait "$FOREGROUND_PID" || status=$?
    FOREGROUND_PID=""
    return "$status"
}

stop_pids() { # pids...; TERM to all, KILL to those still running after 10 s, then reap
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 1 50); do
            pid_alive "$pid" || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

servers_stop() {
    local status=$?
    trap - EXIT HUP INT TERM
    if [ -n "$FOREGROUND_PID" ]; then
        kill -TERM -- "-$FOREGROUND_PID" 2>/dev/null || true
        stop_pids "$FOREGROUND_PID"
        # Anything left in its group (a test's gateway or server).
        kill -KILL -- "-$FOREGROUND_PID" 2>/dev/null || true
    fi
    [ "${#SERVER_PIDS[@]}" = 0 ] || stop_pids "${SERVER_PIDS[@]}"
    [ -z "$SERVERS_TMP" ] || rm -rf "$SERVERS_TMP"
    exit "$status"
}
