#!/usr/bin/env bash
# Builds, on this machine, what the GPU machine needs to run scripts/gpu-check.sh and
# scripts/bench-gpu.sh: the GPU machine has no cargo and no network, so it gets dist/ whole.
#
# usage: bash scripts/dist.sh
#
# dist/ (git-ignored) is rebuilt from scratch on every run:
#   libgpuslice.so             the shim, built against glibc 2.17 (scripts/glibc-baseline.sh),
#                              as it ships to images, and checked to need nothing newer
#   examples/alloc_until_oom   cudarc examples (they dlopen libcuda.so.1 at run time)
#   examples/spin
#   cudaprobe.c                tests/programs/cudaprobe.c, compiled on the GPU machine
#   spin.ptx                   examples/ptx/spin.ptx, for scripts/gpu/bench_driver.c
#   BUILD-INFO                 the commit and build time, printed by gpu-check.sh
#
# The binaries link only glibc (this machine's 2.36 is older than the GPU machine's 2.39);
# the shim is preloaded into images of any age, so it is linked against the oldest glibc
# it supports, which needs cargo-zigbuild and zig (pip install cargo-zigbuild ziglang).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --workspace --bins --examples
# Fails, naming the symbols, if the shim needs a newer glibc than the baseline.
shim_dir=$(bash scripts/glibc-baseline.sh build gpuslice)

target=${CARGO_TARGET_DIR:-target}/release
# source -> name in dist/
artifacts=(
  "$shim_dir/libgpuslice.so:libgpuslice.so"
  "$target/gpuslice:gpuslice"
  "$target/examples/alloc_until_oom:examples/alloc_until_oom"
  "$target/examples/spin:examples/spin"
  "tests/programs/cudaprobe.c:cudaprobe.c"
  "examples/ptx/spin.ptx:spin.ptx"
)

missing=()
for artifact in "${artifacts[@]}"; do
  from=${artifact%%:*}
  [ -f "$from" ] || missing+=("$from")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "dist.sh: the build did not produce: ${missing[*]}" >&2
  echo "dist.sh: (the examples live in examples/*.rs; is one of them still being written?)" >&2
  exit 1
fi

rm -rf dist
mkdir -p dist/examples
for artifact in "${artifacts[@]}"; do
  cp "${artifact%%:*}" "dist/${artifact#*:}"
done
# The command and the examples without their debug info: the device plugin's gRPC stack
# makes the command's alone larger than what the GPU machine takes. The shim keeps its own
# (backtraces from inside a user's process are worth the size).
strip --strip-debug dist/gpuslice dist/examples/*

{
  echo "commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "uncommitted_files=$(git status --porcelain 2>/dev/null | wc -l)"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "rustc=$(rustc --version)"
  echo "shim_glibc_baseline=$(bash scripts/glibc-baseline.sh baseline) ($(cargo-zigbuild --version))"
} >dist/BUILD-INFO

echo "dist.sh: dist/ is ready ($(du -sh dist | cut -f1); the GPU machine takes 64 MiB of carried files in all):"
(cd dist && find . -type f | sort | xargs ls -l)
