#!/usr/bin/env bash
# A cluster worker with and without its warm interpreters, side by side: the same sweep
# through `hlsfarm submit --wait` on a local cluster of one worker (deploy/local-cluster.sh),
# once with `worker.warm_python = false` (a fresh Python per trial, as before the warm
# interpreters) and once with the default, alternating, each on a cluster of its own (its own
# Redis and store, so nothing is shared between them). Prints each wall time, the medians and
# their ratio.
#
#   tests/bench/cluster-warm.sh [RUNS] [SWEEP]
#
# RUNS (default 1) pairs; SWEEP (default examples/sweep.toml: 4 models x 2 reuse factors, every
# stage the tools have). The workers use the Xilinx stand-in (HLSFARM_LOCAL_STANDIN=1), or the
# real tools with HLSFARM_LOCAL_STANDIN=0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RUNS="${1:-1}"
SWEEP="${2:-$ROOT/examples/sweep.toml}"
export HLSFARM_LOCAL_STANDIN="${HLSFARM_LOCAL_STANDIN:-1}"

bash "$ROOT/.ci/setup" --formats keras --without-browser >&2
# shellcheck disable=SC1091
source "${HLSFARM_HOME:-$HOME/.local/share/hlsfarm}/env"
cargo build --release --locked -p hlsfarm-coordinator --manifest-path "$ROOT/Cargo.toml" >&2
export HLSFARM_BIN="$ROOT/target/release/hlsfarm"

work="$(mktemp -d)"
cleanup() {
    local state
    for state in "$work"/*/; do
        HLSFARM_LOCAL="$state" bash "$ROOT/deploy/local-cluster.sh" down >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# One sweep on a fresh one-worker cluster; prints its wall time in seconds.
one() {
    local mode="$1" run="$2" state="$work/$1-$2"
    local warm=true
    [ "$mode" = cold ] && warm=false
    HLSFARM_LOCAL="$state" HLSFARM_WORKER__WARM_PYTHON="$warm" \
        bash "$ROOT/deploy/local-cluster.sh" up 1 >"$work/$mode-$run.up" 2>&1 \
        || { cat "$work/$mode-$run.up" >&2; exit 1; }
    # shellcheck disable=SC1091
    . "$state/operator.env"
    local start end
    start=$(date +%s.%N)
    "$HLSFARM_BIN" submit --sweep "$SWEEP" --wait >"$work/$mode-$run.submit" 2>&1 \
        || { cat "$work/$mode-$run.submit" >&2; exit 1; }
    end=$(date +%s.%N)
    HLSFARM_LOCAL="$state" bash "$ROOT/deploy/local-cluster.sh" down >/dev/null 2>&1
    awk -v s="$start" -v e="$end" 'BEGIN { printf "%.2f", e - s }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
cold=()
warm=()
for run in $(seq "$RUNS"); do
    t="$(one cold "$run")"
    echo "run $run: a fresh Python per trial (warm_python = false): $t s; $(tail -n1 "$work/cold-$run.submit")"
    cold+=("$t")
    t="$(one warm "$run")"
    echo "run $run: warm interpreters (the default): $t s; $(tail -n1 "$work/warm-$run.submit")"
    warm+=("$t")
done
c="$(printf '%s\n' "${cold[@]}" | median)"
w="$(printf '%s\n' "${warm[@]}" | median)"
echo "cluster worker, submit --wait of $(basename "$SWEEP") on one worker: fresh Python $c s, warm $w s (medians of $RUNS): $(awk -v c="$c" -v w="$w" 'BEGIN { printf "%.2f", c / w }')x faster warm"
