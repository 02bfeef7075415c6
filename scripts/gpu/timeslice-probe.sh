#!/usr/bin/env bash
# How the GPU's time-slicing treats a request beside a neighbour, by how the neighbour
# queues its work: the question behind the high-priority tenant's median beside 8192²
# matmuls (docs/benchmarks.md). Without the shim, a neighbour that keeps several kernels
# queued is cut short by the hardware's time slice; one that runs a kernel at a time (as
# gpuslice makes a lower tenant beside a high one) may start a fresh slice at each kernel
# and never be.
#
# Requests: one spin kernel of REQUEST_NS and a synchronization, 2 ms apart. Neighbours:
# spin kernels of 1.6 ms (an 8192² bf16 matmul on an H100) at depth 4, 2 and 1, and of
# 20 ms at depth 2 (the slice itself); then PyTorch 8192² matmuls synchronizing after
# every 4 and after every one. All without the shim, then the 1.6 ms depth-4 neighbour and
# the matmul neighbour under the shim (high / low priority), as the benchmark runs them.
#
# usage: OUT=/some/dir bash scripts/gpu/timeslice-probe.sh [DIST_DIR]
# Writes $OUT/timeslice/*.log and prints one line per case: p10 / p50 / p90 / p99 in µs.
set -euo pipefail
cd "$(dirname "$0")/../.."

dist=$(cd "${1:-dist}" && pwd)
py=${PYTHON:-python3}
each=${SECONDS_EACH:-4}
request_ns=${REQUEST_NS:-100000}
out=${OUT:?set OUT to a folder for the logs}/timeslice
mkdir -p "$out"
ledger=$(mktemp -d /tmp/gpuslice-timeslice.XXXXXX)
trap 'rm -rf "$ledger"' EXIT
spin=$dist/examples/spin
matmul=scripts/gpu/matmul_load.py

bare() { env -u LD_PRELOAD "$@"; }
under() {
  local name=$1 priority=$2
  shift 2
  env LD_PRELOAD="$dist/libgpuslice.so" GPUSLICE_DIR="$ledger" GPUSLICE_TENANT="$name" \
    GPUSLICE_PRIORITY="$priority" "$@"
}

# summary LOG: quantiles of the request latencies in LOG.
summary() {
  "$py" - "$1" <<'EOF'
import sys
values = sorted(
    int(word.split("=")[1]) / 1e3
    for line in open(sys.argv[1])
    if line.startswith("request ")
    for word in line.split()
    if word.startswith("latency_ns=")
)
if not values:
    print("no requests")
else:
    q = lambda p: values[min(len(values) - 1, int(p * (len(values) - 1)))]
    print(f"n={len(values)} p10={q(.1):.0f} p50={q(.5):.0f} p90={q(.9):.0f} p99={q(.99):.0f} µs")
EOF
}

# case NAME REQUESTER... -- NEIGHBOUR...: the requests beside the neighbour (none if empty).
case_() {
  local name=$1
  shift
  local -a requester=() neighbour=()
  while [ "$1" != -- ]; do requester+=("$1"); shift; done
  shift
  neighbour=("$@")
  if [ ${#neighbour[@]} -gt 0 ]; then
    "${neighbour[@]}" >"$out/${name}_neighbour.log" 2>&1 &
    local pid=$!
    sleep 2
  fi
  "${requester[@]}" >"$out/${name}.log" 2>&1
  if [ ${#neighbour[@]} -gt 0 ]; then wait "$pid" || true; fi
  printf '%-28s %s\n' "$name" "$(summary "$out/${name}.log")"
}

requests=("$spin" --for $((each * 1000)) --requests-every 2 --ns "$request_ns")
torch_requests=("$py" "$matmul" latency --seconds "$each" --size 2048)
long=$(((each + 4) * 1000))

{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1
} | tee "$out/info.txt"

case_ alone bare "${requests[@]}" --
for depth in 4 2 1; do
  case_ "spin1.6ms_depth$depth" bare "${requests[@]}" -- \
    bare "$spin" --for "$long" --ns 1600000 --depth "$depth"
done
case_ spin20ms_depth2 bare "${requests[@]}" -- bare "$spin" --for "$long" --ns 20000000 --depth 2
case_ spin1.6ms_depth4_shim under hi high "${requests[@]}" -- \
  under lo low "$spin" --for "$long" --ns 1600000 --depth 4

case_ torch_alone bare "${torch_requests[@]}" --
for every in 4 1; do
  case_ "matmul8192_sync$every" bare "${torch_requests[@]}" -- \
    bare "$py" "$matmul" load --seconds $((each + 4)) --size 8192 --sync-every "$every"
done
case_ matmul8192_sync4_shim under hi high "${torch_requests[@]}" -- \
  under lo low "$py" "$matmul" load --seconds $((each + 4)) --size 8192
