#!/usr/bin/env bash
# Compute shares on a real GPU (issue 3): PyTorch bf16 matmul loops under the shim, each
# figure against the same work without the shim, measured in the same run. Writes the raw
# logs (one line per synchronization, CLOCK_MONOTONIC stamps) to $OUT/shares/; the numbers
# and plots come from scripts/shares_report.py, which reads those logs.
#
# usage: OUT=/some/dir bash scripts/bench-shares.sh [DIST_DIR]
# env:   PYTHON    the Python with PyTorch (default python3)
#        SECONDS_EACH  length of each run (default 8)
#        ONLY      space-separated subset of: solo shares limit latency
set -euo pipefail
cd "$(dirname "$0")/.."

dist=$(cd "${1:-dist}" && pwd)
py=${PYTHON:-python3}
each=${SECONDS_EACH:-8}
only=${ONLY:-solo shares limit latency}
out=${OUT:?set OUT to a folder for the logs}/shares
mkdir -p "$out"
ledger=$(mktemp -d /tmp/gpuslice-shares.XXXXXX)
trap 'rm -rf "$ledger"' EXIT
load=scripts/gpu/matmul_load.py

# tenant NAME SETTINGS... -- ARGS: the load under the shim as tenant NAME.
under() {
  local name=$1
  shift
  local -a settings=()
  while [ "$1" != -- ]; do settings+=("$1"); shift; done
  shift
  env LD_PRELOAD="$dist/libgpuslice.so" GPUSLICE_DIR="$ledger" GPUSLICE_TENANT="$name" \
    ${settings[@]+"${settings[@]}"} "$py" "$load" "$@"
}
bare() { env -u LD_PRELOAD "$py" "$load" "$@"; }

# clocks NAME: samples the SM clock, power and utilization every 100 ms into
# $out/clocks_NAME.csv until stop_clocks (read-only queries; no setting is changed).
clocks() {
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,utilization.gpu --format=csv,noheader \
    -lms 100 >"$out/clocks_$1.csv" 2>/dev/null &
  clocks_pid=$!
}
stop_clocks() { kill "$clocks_pid" 2>/dev/null || true; wait "$clocks_pid" 2>/dev/null || true; }

{
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -n 1 | sed 's/^/gpu=/'
  "$py" -c 'import torch; print("torch=" + torch.__version__)'
} >"$out/info.txt"

if [[ " $only " == *" solo "* ]]; then
  echo "solo: bare, then share-only under the shim" >&2
  clocks solo
  bare load --seconds "$each" >"$out/solo_bare.log"
  stop_clocks
  under alone GPUSLICE_COMPUTE_SHARE=25 -- load --seconds "$each" >"$out/solo_share25.log"
fi
if [[ " $only " == *" limit "* ]]; then
  echo "limit: 30% alone" >&2
  clocks limit30
  under limited GPUSLICE_COMPUTE_LIMIT=30 -- load --seconds "$each" >"$out/limit30.log"
  stop_clocks
fi
if [[ " $only " == *" shares "* ]]; then
  echo "shares: bare pair, 25/75, 10/30/60, then solo again (drift)" >&2
  # (A plain `wait` would also wait for the clock sampler: wait for the loads by pid.)
  clocks pair_bare
  bare load --seconds "$each" >"$out/pair_bare_a.log" &
  first=$!
  bare load --seconds "$each" >"$out/pair_bare_b.log"
  wait "$first"
  stop_clocks
  clocks pair
  under s25 GPUSLICE_COMPUTE_SHARE=25 -- load --seconds "$each" >"$out/pair_25.log" &
  first=$!
  under s75 GPUSLICE_COMPUTE_SHARE=75 -- load --seconds "$each" >"$out/pair_75.log"
  wait "$first"
  stop_clocks
  clocks trio
  under t10 GPUSLICE_COMPUTE_SHARE=10 -- load --seconds "$each" >"$out/trio_10.log" &
  first=$!
  under t30 GPUSLICE_COMPUTE_SHARE=30 -- load --seconds "$each" >"$out/trio_30.log" &
  second=$!
  under t60 GPUSLICE_COMPUTE_SHARE=60 -- load --seconds "$each" >"$out/trio_60.log"
  wait "$first" "$second"
  stop_clocks
  clocks solo_after
  bare load --seconds "$each" >"$out/solo_bare_after.log"
  stop_clocks
fi
if [[ " $only " == *" latency "* ]]; then
  for size in ${NEIGHBOUR_SIZES:-8192 4096 2048}; do
    echo "latency: neighbour of size $size" >&2
    bare load --seconds "$each" --size "$size" >"$out/neighbour${size}_solo.log"
    bare latency --seconds "$each" --size 2048 >"$out/requests_solo_bare.log"
    under hi GPUSLICE_PRIORITY=high -- latency --seconds "$each" --size 2048 \
      >"$out/requests_solo_shim.log"
    bare load --seconds $((each + 4)) --size "$size" >"$out/neighbour${size}_bare.log" &
    sleep 2
    bare latency --seconds "$each" --size 2048 >"$out/requests_beside${size}_bare.log"
    wait
    under lo GPUSLICE_PRIORITY=low -- load --seconds $((each + 4)) --size "$size" \
      >"$out/neighbour${size}_low.log" &
    sleep 2
    under hi GPUSLICE_PRIORITY=high -- latency --seconds "$each" --size 2048 \
      >"$out/requests_beside${size}_high.log"
    wait
  done
  # A light neighbour (one 2048² matmul + sync every millisecond): what a request pays
  # for another context having run at all, with next to nothing of it left to wait for.
  echo "latency: light neighbour" >&2
  bare latency --seconds $((each + 4)) --size 2048 --interval-ms 1 >"$out/light_bare.log" &
  sleep 2
  bare latency --seconds "$each" --size 2048 >"$out/requests_besidelight_bare.log"
  wait
  under lo GPUSLICE_PRIORITY=low -- latency --seconds $((each + 4)) --size 2048 --interval-ms 1 \
    >"$out/light_low.log" &
  sleep 2
  under hi GPUSLICE_PRIORITY=high -- latency --seconds "$each" --size 2048 \
    >"$out/requests_besidelight_high.log"
  wait
fi
echo "bench-shares: logs in $out" >&2
