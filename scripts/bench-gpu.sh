#!/usr/bin/env bash
# What the gpuslice shim adds to driver calls on a real GPU (DESIGN.md, Known anchors: the
# alloc+free pair may cost at most 2% more). Runs scripts/gpu/bench_driver.c bare and under
# the shim, alternating, so that drift of the GPU (clocks, temperature) falls on both alike,
# then prints the medians and the ratio shim/bare of each metric.
#
# usage: bash scripts/bench-gpu.sh [DIST_DIR]    on the GPU machine; DIST_DIR (default dist)
#                                                comes from scripts/dist.sh
# env:   ROUNDS       runs of each mode (default 3)
#        BENCH_ARGS   extra bench_driver options, e.g. "--pairs 5000 --launches 20000"
#        OUT          a folder: the report with the raw numbers is also written to $OUT/bench.txt
set -euo pipefail
cd "$(dirname "$0")/.."

dist=${1:-dist}
rounds=${ROUNDS:-3}
read -r -a bench_args <<<"${BENCH_ARGS:-}"
shim_limit=8Gi
shim_limit_bytes=$((8 << 30))

for file in "$dist/libgpuslice.so" "$dist/spin.ptx"; do
  if [ ! -f "$file" ]; then
    echo "bench-gpu: missing $file (run scripts/dist.sh on the build machine and carry dist/)" >&2
    exit 1
  fi
done
dist=$(cd "$dist" && pwd)

work=$(mktemp -d /tmp/gpuslice-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
gcc -O2 -Wall -o "$work/bench_driver" scripts/gpu/bench_driver.c -ldl

# run_once MODE ROUND: one bench_driver run; appends `mode= round= total= <summary>` to raw.txt.
run_once() {
  local mode=$1 round=$2
  local out=$work/$mode-$round.out err=$work/$mode-$round.err
  local -a launcher=(env -u LD_PRELOAD)
  if [ "$mode" = shim ]; then
    launcher=(env LD_PRELOAD="$dist/libgpuslice.so" GPUSLICE_TENANT=bench
      GPUSLICE_MEMORY_LIMIT="$shim_limit" GPUSLICE_DIR="$(mktemp -d "$work/ledger.XXXXXX")")
  fi
  if ! "${launcher[@]}" "$work/bench_driver" "$dist/spin.ptx" ${bench_args[@]+"${bench_args[@]}"} \
    >"$out" 2>"$err"; then
    echo "bench-gpu: the $mode run of round $round failed:" >&2
    cat "$out" "$err" >&2
    exit 1
  fi
  local total summary
  total=$(sed -n 's/^mem_get_info .*total=\([0-9]*\).*/\1/p' "$out")
  summary=$(grep '^alloc_free_pair_ns=' "$out" || true)
  if [ -z "$summary" ]; then
    echo "bench-gpu: the $mode run of round $round printed no summary line:" >&2
    cat "$out" "$err" >&2
    exit 1
  fi
  # A shim that does not enforce would measure nothing worth comparing.
  if [ "$mode" = shim ] && [ "$total" != "$shim_limit_bytes" ]; then
    echo "bench-gpu: under the shim cuMemGetInfo said total=$total, not $shim_limit_bytes" >&2
    cat "$out" "$err" >&2
    exit 1
  fi
  echo "mode=$mode round=$round total=$total $summary" >>"$work/raw.txt"
  echo "  $mode round $round: $summary" >&2
}

gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
cuda=$(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | head -n 1 || true)
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)

for round in $(seq 1 "$rounds"); do
  run_once bare "$round"
  run_once shim "$round"
done

# The headline figures: hooked and real driver calls interleaved inside one process (see
# scripts/gpu/bench_paired.c), so that run-to-run drift, which is larger than the shim's
# cost, falls on both alike.
gcc -O2 -Wall -o "$work/bench_paired" scripts/gpu/bench_paired.c -ldl
paired_dir=$(mktemp -d)
if ! env LD_PRELOAD="$dist/libgpuslice.so" GPUSLICE_TENANT=bench GPUSLICE_MEMORY_LIMIT="$shim_limit" \
  GPUSLICE_COMPUTE_SHARE=50 GPUSLICE_DIR="$paired_dir" PAIRED_ROUNDS_FILE="$work/paired_rounds.txt" \
  "$work/bench_paired" "$dist/spin.ptx" "${PAIRED_ROUNDS:-60}" >"$work/paired.out" 2>&1; then
  echo "bench-gpu: bench_paired failed:" >&2
  cat "$work/paired.out" >&2
  exit 1
fi
rm -rf "$paired_dir"

{
  echo "bench-gpu: $started"
  echo "gpu: ${gpu:-unknown} (name, driver); ${cuda:-CUDA Version: unknown}"
  echo "bench_driver options: ${BENCH_ARGS:-none} (defaults: 20000 pairs of 2 MiB, 100000 noop launches, 2000 x 10 us spins; median of 5 batches)"
  echo "shim: GPUSLICE_MEMORY_LIMIT=$shim_limit (in-process pairs also GPUSLICE_COMPUTE_SHARE=50: launches pass the gate); $rounds rounds of each mode, alternating"
  echo
  echo "In one process, hooked and real calls interleaved (the shim's own cost):"
  cat "$work/paired.out"
  python3 scripts/gpu/paired_ci.py "$work/paired_rounds.txt"
  echo
  echo "Separate processes, bare and under the shim, alternating:"
  python3 scripts/gpu/bench_table.py "$work/raw.txt"
  echo
  echo "raw (one line a run):"
  cat "$work/raw.txt"
  echo
  echo "batches of each run:"
  for round in $(seq 1 "$rounds"); do
    for mode in bare shim; do
      sed -n "s/^\(.*_batches=.*\)/$mode round $round: \1/p" "$work/$mode-$round.out"
    done
  done
} >"$work/report.txt"
cat "$work/report.txt"
if [ -n "${OUT:-}" ]; then
  cp "$work/report.txt" "$OUT/bench.txt"
fi
