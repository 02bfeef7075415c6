#!/usr/bin/env bash
# Builds gpuslice and shows two tenants sharing one GPU under memory quotas: each allocates
# until it is refused, and each sees its own quota as the GPU's total memory. Runs on the
# real GPU when the driver answers, otherwise on the simulated GPU (crates/fakecuda).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet --workspace --lib --examples
target=$(realpath "${CARGO_TARGET_DIR:-target}")/release
shim=$target/libgpuslice.so
example=$target/examples/alloc_until_oom
ledger=$(mktemp -d)
trap 'rm -rf "$ledger"' EXIT
# The shim never creates the ledger directory (a mistyped GPUSLICE_DIR must fail, not start a
# fresh ledger), so make it here as gpuslice run would.
mkdir -p "$ledger/ledger"

if nvidia-smi -L >/dev/null 2>&1; then
  echo "== on the real GPU: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  quotas=(4Gi 8Gi)
  chunk=256Mi
else
  echo "== no GPU answered: on the simulated GPU (80 GiB, contexts take 64 MiB)"
  libdir=$ledger/fakegpu
  mkdir -p "$libdir" "$ledger/gpu-state"
  for name in libcuda.so libcuda.so.1 libnvidia-ml.so libnvidia-ml.so.1; do
    ln -sf "$target/libfakecuda.so" "$libdir/$name"
  done
  export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export FAKECUDA_STATE_DIR=$ledger/gpu-state
  quotas=(1Gi 2Gi)
  chunk=64Mi
fi

run_tenant() {
  local tenant=$1 quota=$2
  LD_PRELOAD=$shim GPUSLICE_DIR=$ledger/ledger GPUSLICE_TENANT=$tenant GPUSLICE_MEMORY_LIMIT=$quota \
    "$example" --chunk "$chunk" | sed "s/^/[$tenant, quota $quota] /"
}

# Side by side, as two containers would.
run_tenant team-a "${quotas[0]}" &
first=$!
run_tenant team-b "${quotas[1]}" &
second=$!
wait "$first" && wait "$second"
echo "== each tenant saw its quota as the total, was refused at it (CUDA_ERROR_OUT_OF_MEMORY),"
echo "   and could allocate again after freeing; neither touched the other's memory."
