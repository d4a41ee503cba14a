#!/usr/bin/env bash
# A whole hlsfarm cluster on this machine, to try the cluster mode: Redis (with AOF), an
# S3-compatible server (moto, when `make setup` installed it; else a local store folder), a
# coordinator and N workers, each a process of its own.
#
#   deploy/local-cluster.sh up [N]    start (N workers, default 2); prints the URL, the tokens
#                                     and a line to paste for the operator commands
#   deploy/local-cluster.sh status    what runs, and `hlsfarm status`
#   deploy/local-cluster.sh down      stop everything it started (workers drain first)
#
# State (pids, logs, tokens, the store) lives in $HLSFARM_LOCAL (default ./.hlsfarm-local).
# The binary is $HLSFARM_BIN, else target/release/hlsfarm, target/debug/hlsfarm or hlsfarm on
# PATH. Tools and venvs come from the environment as for `hlsfarm worker`
# (~/.local/share/hlsfarm/env is read when present).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${HLSFARM_LOCAL:-$PWD/.hlsfarm-local}"
HOME_ENV="${HLSFARM_HOME:-$HOME/.local/share/hlsfarm}/env"
if [ -r "$HOME_ENV" ]; then
    # shellcheck source=/dev/null
    . "$HOME_ENV"
fi

die() { echo "local-cluster: error: $*" >&2; exit 1; }
say() { echo "local-cluster: $*" >&2; }

find_bin() {
    if [ -n "${HLSFARM_BIN:-}" ]; then echo "$HLSFARM_BIN"; return; fi
    for candidate in "$ROOT/target/release/hlsfarm" "$ROOT/target/debug/hlsfarm"; do
        if [ -x "$candidate" ]; then echo "$candidate"; return; fi
    done
    command -v hlsfarm || die "no hlsfarm binary: run \`make build\` (or set HLSFARM_BIN)"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$((20000 + RANDOM % 30000))
        if port_free "$port"; then echo "$port"; return; fi
    done
    die "no free port found"
}

wait_port() {
    local port="$1" what="$2"
    for _ in $(seq 1 300); do
        if ! port_free "$port"; then return 0; fi
        sleep 0.1
    done
    die "$what did not start listening on port $port; see $STATE/logs"
}

# start NAME COMMAND...: runs COMMAND in its own session, remembers its pid.
start() {
    local name="$1"; shift
    setsid "$@" >"$STATE/logs/$name.log" 2>&1 < /dev/null &
    echo $! >"$STATE/pids/$name"
}

alive() { [ -f "$STATE/pids/$1" ] && kill -0 "$(cat "$STATE/pids/$1")" 2>/dev/null; }

up() {
    local workers="${1:-2}"
    if [ -d "$STATE/pids" ] && [ -n "$(ls -A "$STATE/pids" 2>/dev/null)" ]; then
        die "a local cluster is already up in $STATE: run \`$0 down\` first"
    fi
    local bin redis_bin
    bin="$(find_bin)"
    redis_bin="${REDIS_SERVER:-$(command -v redis-server || true)}"
    [ -n "$redis_bin" ] || die "redis-server is missing: run \`make setup\` (or apt-get install redis-server)"
    mkdir -p "$STATE/pids" "$STATE/logs" "$STATE/redis"
    local redis_port coord_port operator_token worker_token store
    redis_port="$(free_port)"
    coord_port="$(free_port)"
    operator_token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    worker_token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"

    start redis "$redis_bin" --port "$redis_port" --bind 127.0.0.1 --dir "$STATE/redis" \
        --appendonly yes --appendfsync everysec --save ""
    wait_port "$redis_port" redis-server

    local store_env=()
    local moto="${HLSFARM_MOTO_SERVER:-$(command -v moto_server || true)}"
    if [ -n "$moto" ] && [ -x "$moto" ]; then
        local s3_port
        s3_port="$(free_port)"
        start s3 "$moto" -H 127.0.0.1 -p "$s3_port"
        wait_port "$s3_port" "the S3 server"
        python3 -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$s3_port/hlsfarm', method='PUT'))" \
            || die "cannot create the bucket on the S3 server"
        store="s3://hlsfarm/local"
        store_env=(HLSFARM_STORE__S3_ENDPOINT="http://127.0.0.1:$s3_port" HLSFARM_STORE__S3_ALLOW_HTTP=true
                   HLSFARM_STORE__S3_ACCESS_KEY_ID=local HLSFARM_STORE__S3_SECRET_ACCESS_KEY=local)
        say "S3 server (moto) on http://127.0.0.1:$s3_port, bucket hlsfarm"
    else
        store="$STATE/store"
        say "no S3 server found (make setup installs moto): the store is the folder $store"
    fi

    start coordinator env HLSFARM_COORDINATOR__OPERATOR_TOKEN="$operator_token" \
        HLSFARM_COORDINATOR__WORKER_TOKEN="$worker_token" "${store_env[@]}" \
        "$bin" serve --listen "127.0.0.1:$coord_port" --redis-url "redis://127.0.0.1:$redis_port/0" --store "$store"
    wait_port "$coord_port" "the coordinator"

    local path="$PATH"
    if [ "${HLSFARM_LOCAL_STANDIN:-0}" = 1 ]; then
        path="$ROOT/tests/standin/bin:$PATH"
        say "workers use the Xilinx stand-in of the tests (HLSFARM_LOCAL_STANDIN=1)"
    fi
    for i in $(seq 1 "$workers"); do
        start "worker-$i" env HLSFARM_WORKER__TOKEN="$worker_token" PATH="$path" "${store_env[@]}" \
            "$bin" worker --coordinator "http://127.0.0.1:$coord_port" --store "$store" \
            --scratch "$STATE/scratch-$i" --worker-id "local-$i" --min-free-disk-gib 1
    done

    # Sweeps name the toolchain the live workers have: wait until they have registered.
    for i in $(seq 1 "$workers"); do
        for _ in $(seq 1 1200); do
            grep -q "registered with" "$STATE/logs/worker-$i.log" 2>/dev/null && break
            alive "worker-$i" || die "worker $i stopped; see $STATE/logs/worker-$i.log"
            sleep 0.1
        done
        grep -q "registered with" "$STATE/logs/worker-$i.log" \
            || die "worker $i did not register within 2 minutes; see $STATE/logs/worker-$i.log"
    done

    {
        echo "export HLSFARM_URL=http://127.0.0.1:$coord_port"
        echo "export HLSFARM_TOKEN=$operator_token"
    } >"$STATE/operator.env"
    chmod 600 "$STATE/operator.env"
    echo "coordinator:    http://127.0.0.1:$coord_port"
    echo "redis:          redis://127.0.0.1:$redis_port/0"
    echo "store:          $store"
    echo "operator token: $operator_token"
    echo "worker token:   $worker_token"
    echo "workers:        $workers (logs in $STATE/logs)"
    echo "use it:         . $STATE/operator.env && $bin submit --input-dir examples/trials --wait"
}

status() {
    [ -d "$STATE/pids" ] || { echo "no local cluster in $STATE"; return 0; }
    local name
    for f in "$STATE"/pids/*; do
        [ -e "$f" ] || continue
        name="$(basename "$f")"
        if alive "$name"; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: stopped"; fi
    done
    if [ -r "$STATE/operator.env" ] && alive coordinator; then
        # shellcheck source=/dev/null
        . "$STATE/operator.env"
        "$(find_bin)" status
    fi
}

# stop NAME SIGNAL SECONDS: signals NAME's process group, waits, then kills it.
stop() {
    local name="$1" signal="$2" seconds="$3" pid
    [ -f "$STATE/pids/$name" ] || return 0
    pid="$(cat "$STATE/pids/$name")"
    kill "-$signal" -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 $((seconds * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$STATE/pids/$name"
}

down() {
    [ -d "$STATE/pids" ] || { say "nothing to stop in $STATE"; return 0; }
    local f
    for f in "$STATE"/pids/worker-*; do
        [ -e "$f" ] || continue
        stop "$(basename "$f")" TERM 30
    done
    stop coordinator TERM 10
    stop s3 TERM 5
    stop redis TERM 10
    say "stopped; state and logs are kept in $STATE (remove the folder to forget them)"
}

case "${1:-}" in
    up) shift; up "$@" ;;
    down) down ;;
    status) status ;;
    *) echo "usage: $0 up [WORKERS] | status | down" >&2; exit 2 ;;
esac
