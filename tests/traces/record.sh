#!/usr/bin/env bash
# Records the traces tests/trace_replay.rs replays: the watcher's trace (GPUSLICE_TRACE) of
# workload shapes run under the shim on the simulated GPU, each for RUN_MS (250 ms unless
# set) on a simulated node of its own.
#
# usage: bash tests/traces/record.sh [TARGET_DIR]    (default: target/debug)
#
# Build first: cargo build -p gpuslice --examples && cargo build -p fakecuda
# Record again whenever the trace format changes, or when the controller's decisions change
# on purpose (the replay test then fails on the old traces: that is what it is for). The
# replay test also asks the priority traces for a held tick and a quiet tick, which depend
# on timing: if one is missing, record again until `cargo test --test trace_replay` passes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=$(cd "${1:-$here/../../target/debug}" && pwd)
shim=$target/deps/libgpuslice.so
spin=$target/examples/spin
for needed in "$shim" "$target/deps/libfakecuda.so" "$spin"; do
  [[ -e $needed ]] || { echo "record.sh: $needed is missing (build first)" >&2; exit 1; }
done
nodes=$(mktemp -d /tmp/gpuslice-traces.XXXXXX)
trap 'rm -rf "$nodes"' EXIT

# A fresh simulated node (GPU, ledger) named $1.
node() {
  local node=$nodes/$1
  mkdir -p "$node/lib" "$node/gpu" "$node/ledger"
  for name in libcuda.so libcuda.so.1 libnvidia-ml.so libnvidia-ml.so.1; do
    ln -s "$target/deps/libfakecuda.so" "$node/lib/$name"
  done
}

# spin on node $1 as a process of tenant $2 tracing to $3.trace, with the environment's
# GPUSLICE_* settings and the arguments after them.
traced() {
  local node=$nodes/$1 tenant=$2 name=$3
  shift 3
  rm -f "$here/$name.trace"
  env LD_LIBRARY_PATH="$node/lib" FAKECUDA_STATE_DIR="$node/gpu" FAKECUDA_DEVICES=80Gi \
    GPUSLICE_DIR="$node/ledger" LD_PRELOAD="$shim" GPUSLICE_TENANT="$tenant" \
    GPUSLICE_TRACE="$here/$name.trace" "$spin" "$@" >/dev/null
}

# How long each shape runs, in milliseconds: short, so that the traces stay small.
run_ms=${RUN_MS:-250}

# A saturating loop (2 ms kernels, 4 in flight) limited to 30%.
node saturating
GPUSLICE_COMPUTE_LIMIT=30 traced saturating limited limit30-saturating \
  --for "$run_ms" --ns 2000000 --depth 4
# A loop of 0.2 ms kernels with a synchronization after each, limited to 30%.
node sync
GPUSLICE_COMPUTE_LIMIT=30 traced sync synced limit30-sync-short \
  --for "$run_ms" --requests-every 0 --ns 200000
# Two saturating tenants with shares 25 and 75, side by side.
node shares
GPUSLICE_COMPUTE_SHARE=25 traced shares t25 shares-25 --for "$run_ms" --ns 2000000 --depth 4 &
first=$!
GPUSLICE_COMPUTE_SHARE=75 traced shares t75 shares-75 --for "$run_ms" --ns 2000000 --depth 4
wait "$first"
# A high-priority tenant (0.5 ms kernels, one at a time) beside a saturating neighbour of
# 0.2 ms kernels, which yields: fast and held ticks, so half as long. The high tenant pauses
# for 60 ms after 40 (its watcher goes quiet: nothing in flight for longer than a tenant
# counts as active).
node priority
GPUSLICE_PRIORITY=high traced priority high priority-high \
  --for "$((run_ms / 2))" --ns 500000 --depth 1 --idle-after 40 --idle-for 60 &
first=$!
traced priority low priority-low --for "$((run_ms / 2))" --ns 200000 --depth 8
wait "$first"
# A high-priority tenant's requests (1 ms, then a pause of 8 ms) beside a low neighbour of
# 0.5 ms kernels (traced): once the gaps between requests are regular, the neighbour holds
# its launches before each request is due (`policy::arrivals`).
node regular
rm -f "$here/priority-regular-low.trace"
env LD_LIBRARY_PATH="$nodes/regular/lib" FAKECUDA_STATE_DIR="$nodes/regular/gpu" \
  FAKECUDA_DEVICES=80Gi GPUSLICE_DIR="$nodes/regular/ledger" LD_PRELOAD="$shim" \
  GPUSLICE_TENANT=high GPUSLICE_PRIORITY=high \
  "$spin" --for 130 --requests-every 8 --ns 1000000 >/dev/null &
first=$!
GPUSLICE_PRIORITY=low traced regular low priority-regular-low --for 150 --ns 500000 --depth 8
wait "$first"
wc -lc "$here"/*.trace >&2
