#!/usr/bin/env bash
# What a synchronous loop of short work costs under the shim, and which part of the shim it
# is: each loop runs bare, under the shim with no tenant (only the interposition: every
# call passes through), as a tenant with no compute settings (the watcher, the gate, the
# stream table), as a tenant limited to LIMIT%, and limited to 100% (the limit's
# bookkeeping, but a limit that never holds anything back). The configurations alternate,
# ROUNDS times.
#
# With DIAG_DIST, a build of branch diag-step (never merged: its watcher reads GSDIAG), the
# tenant also runs under it limited to LIMIT% with one part of its watcher changed, one
# run per word of DIAG (default "nosample samplenouse sample20 sample200"): nosample (no
# launch is timed: the charge follows the polls), samplenouse (launches timed as usual,
# what they measured thrown away), sample20 / sample200 (a launch timed every 20 / 200 ms
# instead of 2), nolegacy (the legacy stream is not queried), nopoll (the watcher calls no
# CUDA function: nothing is measured, the limit does not hold).
#
# usage: OUT=/some/dir bash scripts/gpu/step_cost.sh DIST_DIR     (on the GPU machine)
# env:   OUT, ROUNDS (2), SECONDS_EACH (3), LIMIT (30), PYTHON (python3), DIAG_DIST, DIAG
# Writes $OUT/step_cost.log: one line per run, `loop=<l> config=<c> round=<r> <metrics>`,
# and prints the medians per loop and configuration.
set -uo pipefail
: "${OUT:?set OUT to a folder for the results}"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/gpu/bench_common.sh
. "$ROOT/scripts/gpu/bench_common.sh"
dist=$(require_dist "${1:?usage: step_cost.sh DIST_DIR}") || exit 1
configs="bare pass tenant limit limit100"
diag=""
if [ -n "${DIAG_DIST:-}" ]; then
  diag=$(require_dist "$DIAG_DIST") || exit 1
  for word in ${DIAG:-nosample samplenouse sample20 sample200}; do
    case $word in
      nopoll | nosample | nolegacy | sample20 | sample200 | samplenouse) configs="$configs diag-$word" ;;
      *) echo "step_cost.sh: DIAG: unknown switch '$word' (nopoll nosample nolegacy sample20 sample200 samplenouse)" >&2; exit 2 ;;
    esac
  done
fi
rounds=${ROUNDS:-2} each=${SECONDS_EACH:-3} limit=${LIMIT:-30} py=${PYTHON:-python3}
require_int ROUNDS "$rounds"
require_int SECONDS_EACH "$each"
require_int LIMIT "$limit"
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
clear_gpuslice_env
work=$(mktemp -d /tmp/step-cost.XXXXXX)
trap 'rm -rf "$work"' EXIT
log=$OUT/step_cost.log
: >"$log"
gcc -O2 -Wall -o "$work/bench_driver" "$ROOT/scripts/gpu/bench_driver.c" -ldl || exit 1

# launcher CONFIG: the environment a run of CONFIG starts with.
launcher() {
  case $1 in
    bare) echo "env -u LD_PRELOAD" ;;
    pass) echo "env LD_PRELOAD=$dist/libgpuslice.so" ;;
    tenant) echo "env LD_PRELOAD=$dist/libgpuslice.so GPUSLICE_DIR=$work/ledger GPUSLICE_TENANT=steps" ;;
    limit) echo "env LD_PRELOAD=$dist/libgpuslice.so GPUSLICE_DIR=$work/ledger GPUSLICE_TENANT=steps GPUSLICE_COMPUTE_LIMIT=$limit" ;;
    limit100) echo "env LD_PRELOAD=$dist/libgpuslice.so GPUSLICE_DIR=$work/ledger GPUSLICE_TENANT=steps GPUSLICE_COMPUTE_LIMIT=100" ;;
    diag-*) echo "env LD_PRELOAD=$diag/libgpuslice.so GPUSLICE_DIR=$work/ledger GPUSLICE_TENANT=steps GPUSLICE_COMPUTE_LIMIT=$limit GSDIAG=${1#diag-}" ;;
  esac
}

mkdir -p "$work/ledger"
for round in $(seq 1 "$rounds"); do
  for config in $configs; do
    # shellcheck disable=SC2046
    line=$($(launcher "$config") "$py" "$ROOT/scripts/gpu/shapes.py" torch-loop --size 1024 \
      --sync-every 1 --seconds "$each" 2>"$work/err" | grep '^summary' | tail -n 1)
    count=$(sed -n 's/.* count=\([0-9]*\).*/\1/p' <<<"$line")
    echo "loop=torch1024 config=$config round=$round steps_per_s=$(( ${count:-0} / each ))" | tee -a "$log"
    [ -n "$count" ] || sed 's/^/  /' "$work/err" | tail -n 5
    # shellcheck disable=SC2046
    line=$($(launcher "$config") "$work/bench_driver" "$dist/spin.ptx" --pairs 500 \
      --launches 40000 --spins 500 --batches 3 2>"$work/err" | tail -n 1)
    echo "loop=driver config=$config round=$round $line" | tee -a "$log"
  done
done
"$py" - "$log" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    f = dict(w.split("=", 1) for w in line.split() if "=" in w)
    for k, v in f.items():
        if k in ("loop", "config", "round"):
            continue
        try:
            runs.setdefault((f["loop"], k), {}).setdefault(f["config"], []).append(float(v))
        except ValueError:
            pass
for (loop, metric), by in sorted(runs.items()):
    bare = statistics.median(by.get("bare", [0])) or 1
    print(f"{loop} {metric}: " + ", ".join(
        f"{c} {statistics.median(v):.1f} ({statistics.median(v) / bare:.3f})" for c, v in by.items()))
PY
