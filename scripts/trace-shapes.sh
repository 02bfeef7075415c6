#!/usr/bin/env bash
# Records the compute watcher's trace (GPUSLICE_TRACE) for workload shapes that no
# saturating loop covers, each beside the real timeline: the workload's own timed events
# per step, and NVML sampled without the shim (device utilization, SM clock, per-process
# samples). Each shape runs bare, then limited to 30% alone under the shim.
#
# usage: OUT=/some/dir bash scripts/trace-shapes.sh [DIST_DIR]
# env:   PYTHON        the Python with PyTorch, JAX and pynvml (default python3)
#        SECONDS_EACH  length of each run (default 3)
#        SHAPES        subset of: sync8 sync1-2048 sync1-1024 graph jax
set -euo pipefail
cd "$(dirname "$0")/.."

dist=$(cd "${1:-dist}" && pwd)
py=${PYTHON:-python3}
each=${SECONDS_EACH:-3}
shapes=${SHAPES:-sync8 sync1-2048 sync1-1024 graph jax}
out=${OUT:?set OUT to a folder for the logs}/traces
mkdir -p "$out"
work=$(mktemp -d /tmp/gpuslice-trace.XXXXXX)
trap 'rm -rf "$work"' EXIT

sample() { env -u LD_PRELOAD "$py" scripts/gpu/nvml_sampler.py --out "$1" & sampler=$!; sleep 0.3; }
unsample() { kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; }

for shape in $shapes; do
  t0=$SECONDS
  sample "$out/$shape.bare.nvml"
  env -u LD_PRELOAD "$py" scripts/gpu/trace_workload.py "$shape" --seconds "$each" \
    >"$out/$shape.bare.log" 2>"$out/$shape.bare.err" || echo "$shape bare failed" >&2
  unsample
  ledger=$(mktemp -d "$work/ledger.XXXXXX")
  sample "$out/$shape.limit30.nvml"
  env LD_PRELOAD="$dist/libgpuslice.so" GPUSLICE_TENANT=traced GPUSLICE_DIR="$ledger" \
    GPUSLICE_COMPUTE_LIMIT=30 GPUSLICE_TRACE="$out/$shape.limit30.trace" \
    "$py" scripts/gpu/trace_workload.py "$shape" --seconds "$each" \
    >"$out/$shape.limit30.log" 2>"$out/$shape.limit30.err" || echo "$shape limited failed" >&2
  unsample
  echo "trace-shapes: $shape in $((SECONDS - t0)) s" >&2
done
echo "trace-shapes: logs in $out" >&2
