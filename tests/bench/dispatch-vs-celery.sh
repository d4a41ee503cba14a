#!/usr/bin/env bash
# No-op dispatch, hlsfarm against Celery (acks_late), in one go on this machine, and the ratio.
#
#   tests/bench/dispatch-vs-celery.sh [RUNS]
#
# Celery runs through the peer benchmark beside this repository
# (../shared/bench/peers/run.sh: its own Redis on 127.0.0.1:6390, 2 prefork children, each job
# one Redis INCR); hlsfarm runs `hlsfarm bench dispatch` (its own Redis and coordinator, 2
# `hlsfarm worker` processes in their no-op mode, each trial one marker object in the store
# (its side effect, as the INCR is Celery's job's) plus its usual result.json upload,
# completion and commit; workers hold no Redis credentials). Both with N=20000 per phase (PEERBENCH_N).
# RUNS (default 3) pairs are run back to back; the medians and their ratio are printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PEERS="${HLSFARM_PEERS:-$ROOT/../shared/bench/peers}"
RUNS="${1:-3}"
N="${PEERBENCH_N:-20000}"
BIN="$ROOT/target/release/hlsfarm"

[ -x "$PEERS/run.sh" ] || { echo "no peer benchmark at $PEERS (set HLSFARM_PEERS)" >&2; exit 1; }
bash "$ROOT/.ci/setup" --without-browser >&2
# shellcheck disable=SC1091
source "${HLSFARM_HOME:-$HOME/.local/share/hlsfarm}/env"
cargo build --release --locked -p hlsfarm-coordinator --manifest-path "$ROOT/Cargo.toml" >&2

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ours=()
celery=()
for run in $(seq "$RUNS"); do
    out="$(PEERBENCH_ONLY=celery-acks_late PEERBENCH_N="$N" bash "$PEERS/run.sh" 2>/dev/null)"
    line="$(grep -m1 'noop jobs/s:' <<<"$out")"
    echo "run $run celery: $line"
    celery+=("$(echo "$line" | sed -E 's/.*noop jobs\/s: ([0-9.]+).*/\1/')")
    out="$("$BIN" bench dispatch --trials "$N")"
    echo "$out" >&2
    line="$(grep -m1 '^dispatch noop trials/s:' <<<"$out")"
    echo "run $run hlsfarm: $line"
    ours+=("$(echo "$line" | sed -E 's/.*trials\/s: ([0-9.]+).*/\1/')")
done
c="$(printf '%s\n' "${celery[@]}" | median)"
o="$(printf '%s\n' "${ours[@]}" | median)"
echo "dispatch: hlsfarm $o no-op trials/s, Celery acks_late $c jobs/s (medians of $RUNS, N=$N): ratio $(awk -v o="$o" -v c="$c" 'BEGIN { printf "%.2f", o / c }') (target >= 10)"
