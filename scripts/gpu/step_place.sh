#!/usr/bin/env bash
# Whether the two speeds of the launch-bound step loop (scripts/gpu/step_cost.sh: whole
# processes run at about 31 or 40 thousand 1024² matmul + sync steps a second, bare or
# not) follow the CPU a process runs on. Prints the machine's CPU and NUMA layout and the
# GPU's CPU affinity, then runs the loop bare pinned to each CPU in turn (the loop's
# launching thread is the only busy one), then bare, as a tenant without settings and
# limited to LIMIT%, each pinned to each CPU set of SETS (default: the CPUs where the bare
# loop ran fast, those where it ran slow, and each NUMA node's CPUs), ROUNDS times.
#
# usage: OUT=/some/dir bash scripts/gpu/step_place.sh DIST_DIR     (on the GPU machine)
# env:   OUT, ROUNDS (2), SECONDS_EACH (2), LIMIT (30), PYTHON (python3),
#        CPUS (default: every CPU), SETS (space-separated taskset lists)
# Writes $OUT/step_place.log: one line per run, `cpus=<list> config=<c> round=<r> steps_per_s=<n>`.
set -uo pipefail
: "${OUT:?set OUT to a folder for the results}"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/gpu/bench_common.sh
. "$ROOT/scripts/gpu/bench_common.sh"
dist=$(require_dist "${1:?usage: step_place.sh DIST_DIR}") || exit 1
rounds=${ROUNDS:-2} each=${SECONDS_EACH:-2} limit=${LIMIT:-30} py=${PYTHON:-python3}
require_int ROUNDS "$rounds"
require_int SECONDS_EACH "$each"
require_int LIMIT "$limit"
command -v taskset >/dev/null || { echo "step_place.sh: taskset is missing" >&2; exit 1; }
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
clear_gpuslice_env
work=$(mktemp -d /tmp/step-place.XXXXXX)
trap 'rm -rf "$work"' EXIT
log=$OUT/step_place.log
: >"$log"

{
  echo "== lscpu"
  lscpu 2>&1
  echo "== lscpu -e"
  lscpu -e 2>&1
  echo "== nvidia-smi topo -m"
  nvidia-smi topo -m 2>&1
  echo "== numa nodes"
  for node in /sys/devices/system/node/node[0-9]*; do
    [ -d "$node" ] && echo "$(basename "$node") cpus=$(cat "$node/cpulist")"
  done
  echo "== the GPU's local CPUs"
  bus=$(nvidia-smi --query-gpu=pci.bus_id --format=csv,noheader 2>/dev/null | head -n 1 |
    tr 'A-F' 'a-f' | sed 's/^0000\(....\)/\1/')
  for dev in /sys/bus/pci/devices/*"${bus#*:}"; do
    [ -e "$dev/local_cpulist" ] && echo "$dev local_cpulist=$(cat "$dev/local_cpulist") numa_node=$(cat "$dev/numa_node")"
  done
} >"$OUT/topology.txt"
cat "$OUT/topology.txt" >&2

launcher() {
  case $1 in
    bare) echo "env -u LD_PRELOAD" ;;
    tenant) echo "env LD_PRELOAD=$dist/libgpuslice.so GPUSLICE_DIR=$work/ledger GPUSLICE_TENANT=steps" ;;
    limit) echo "env LD_PRELOAD=$dist/libgpuslice.so GPUSLICE_DIR=$work/ledger GPUSLICE_TENANT=steps GPUSLICE_COMPUTE_LIMIT=$limit" ;;
  esac
}

# step CPUS CONFIG ROUND: one process of the loop pinned to CPUS.
step() {
  local line count
  # shellcheck disable=SC2046
  line=$(taskset -c "$1" $(launcher "$2") "$py" "$ROOT/scripts/gpu/shapes.py" torch-loop \
    --size 1024 --sync-every 1 --seconds "$each" 2>"$work/err" | grep '^summary' | tail -n 1)
  count=$(sed -n 's/.* count=\([0-9]*\).*/\1/p' <<<"$line")
  echo "cpus=$1 config=$2 round=$3 steps_per_s=$(( ${count:-0} / each ))" | tee -a "$log"
  [ -n "$count" ] || sed 's/^/  /' "$work/err" | tail -n 5
}

mkdir -p "$work/ledger"
cpus=${CPUS:-$(seq 0 $(( $(nproc) - 1 )))}
for cpu in $cpus; do
  step "$cpu" bare 1
done
# Default sets: the CPUs where the bare loop ran above the midpoint of the fastest and the
# slowest, those below it, and each NUMA node's.
sets=${SETS:-}
if [ -z "$sets" ]; then
  sets=$(awk -F'[ =]' '$4 == "bare" { cpu[$2] = $8 } END {
      lo = -1; hi = -1
      for (c in cpu) { if (lo < 0 || cpu[c] < lo) lo = cpu[c]; if (cpu[c] > hi) hi = cpu[c] }
      mid = (lo + hi) / 2; fast = ""; slow = ""
      for (c in cpu) { if (cpu[c] > mid) fast = fast (fast == "" ? "" : ",") c; else slow = slow (slow == "" ? "" : ",") c }
      print fast, slow }' "$log")
  for node in /sys/devices/system/node/node[0-9]*; do
    [ -f "$node/cpulist" ] && sets="$sets $(cat "$node/cpulist")"
  done
  echo "sets: $sets" | tee -a "$log"
fi
for round in $(seq 1 "$rounds"); do
  for set in $sets; do
    for config in bare tenant limit; do
      step "$set" "$config" "$round"
    done
  done
done
