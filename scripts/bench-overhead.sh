#!/usr/bin/env bash
# What the shim costs a process, against the same process without it (issue 13, item 6):
# whole processes, bare and under the shim, alternating, PAIRS pairs of each case. Each
# process times its own loops (process start, CUDA initialization and warm-up excluded)
# and prints them; scripts/isolation_report.py gives the median ratio shim/bare of the
# pairs with a 95% bootstrap interval.
#
# Cases (a pair: one process bare, one under the shim, the order flipping every pair):
#   runtime-none, runtime-share50   scripts/gpu/launch_runtime.cu (built here with nvcc):
#                                   empty-kernel launches through the CUDA runtime
#   driver-none, driver-share50     scripts/gpu/bench_driver.c: driver-API launches,
#                                   alloc+free pairs, 10 µs spin kernels
#   hf-share50                      scripts/gpu/shapes.py llama: 32-token greedy generate
#                                   requests of a small Llama-style model, back to back
# "none": under the shim as a tenant with no setting (GPUSLICE_TENANT and GPUSLICE_DIR
# only); "share50": GPUSLICE_COMPUTE_SHARE=50 as well, so that every launch passes the gate.
#
# usage: OUT=/some/dir bash scripts/bench-overhead.sh [DIST_DIR]
# env:   OUT          folder for the logs (required): $OUT/overhead/, replaced on each run
#        PAIRS        pairs of each C case (default 10)
#        HF_PAIRS     pairs of the inference case, the first pairs (default 4; a process
#                     takes about 10 s: Python, torch, transformers, the model, warm-up)
#        TIME_BUDGET  seconds: no pair starts that would end after this, going by the
#                     last pair's length (default 0: no budget); the report says how many
#                     pairs ran
#        ONLY         cases or families to run, space-separated: runtime driver hf, or case
#                     names (default: all)
#        BENCH_ARGS   bench_driver options (default "--pairs 2000 --launches 20000
#                     --spins 200 --batches 3")
#        LAUNCHES     runtime launches per batch (default 20000)
#        HF_REQUESTS  inference requests per process (default 20)
#        PYTHON       the Python with torch and transformers (default python3)
#        NVCC         the CUDA compiler (default nvcc)
#        SHAPES_DEVICE  cuda (default); cpu only for a dry run without a GPU
#        PIN          a CPU list (taskset -c) every process runs on, bare or not: whole
#                     processes of launch-bound loops run at one of two speeds on some
#                     machines depending on where they are placed (docs/benchmarks.md), which
#                     widens the intervals; default: not pinned
#        BASELINE_DIST  another build's dist/ (only libgpuslice.so and spin.ptx are needed):
#                     the "bare" process of each pair runs under that build instead, with
#                     the same settings, so the ratio is this build's cost against that
#                     one's (is a change no worse?) rather than against no shim
set -uo pipefail

: "${OUT:?set OUT to a folder for the logs}"
# Relative to where the script was started (GPUSLICE_TRACE takes only an absolute path).
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
# shellcheck source=scripts/gpu/bench_common.sh
. scripts/gpu/bench_common.sh
clear_gpuslice_env

dist=$(require_dist "${1:-dist}") || exit 1
shim=$dist/libgpuslice.so
baseline=""
if [ -n "${BASELINE_DIST:-}" ]; then
  baseline=$(require_dist "$BASELINE_DIST") || exit 1
fi
py=${PYTHON:-python3}
pairs=${PAIRS:-10}
require_int PAIRS "$pairs"
hf_pairs=${HF_PAIRS:-4}
require_int HF_PAIRS "$hf_pairs"
launches=${LAUNCHES:-20000}
require_int LAUNCHES "$launches"
hf_requests=${HF_REQUESTS:-20}
budget=${TIME_BUDGET:-0}
[ "$budget" = 0 ] || require_int TIME_BUDGET "$budget"
require_int HF_REQUESTS "$hf_requests"
read -r -a bench_args <<<"${BENCH_ARGS:---pairs 2000 --launches 20000 --spins 200 --batches 3}"
device=${SHAPES_DEVICE:-cuda}
only=${ONLY:-runtime driver hf}
known="runtime driver hf runtime-none runtime-share50 driver-none driver-share50 hf-share50"
for word in $only; do
  if [[ " $known " != *" $word "* ]]; then
    echo "bench-overhead: ONLY: unknown case '$word' (known: $known)" >&2
    exit 2
  fi
done
pin=${PIN:-}
if [ -n "$pin" ] && ! taskset -c "$pin" true 2>/dev/null; then
  echo "bench-overhead: PIN=$pin: not a CPU list this machine can run on (taskset -c)" >&2
  exit 2
fi
out=${OUT:?set OUT to a folder for the logs}/overhead
nvcc=${NVCC:-nvcc}
# Any one process: start-up and the timed loops take a few seconds; a hang must not eat the
# device time.
process_timeout=${PROCESS_TIMEOUT:-120}

rm -rf "$out"
mkdir -p "$out/runs"
work=$(mktemp -d /tmp/gpuslice-overhead.XXXXXX)
trap 'rm -rf "$work"' EXIT
failures=()

wants() { [[ " $only " == *" $1 "* || " $only " == *" $2 "* ]]; }

say "bench-overhead: dist $dist, $pairs pairs ($hf_pairs of hf), ONLY='$only'${baseline:+, against $baseline instead of bare}"
warn_if_gpu_busy

# --- the programs ----------------------------------------------------------------------

cases=()
if wants runtime runtime-none || wants runtime runtime-share50; then
  if ! command -v "$nvcc" >/dev/null 2>&1; then
    failures+=("runtime: no $nvcc on PATH (set NVCC)")
    say "no $nvcc: the runtime-API cases are left out"
  elif "$nvcc" -O2 -arch=native -o "$work/launch_runtime" scripts/gpu/launch_runtime.cu 2>"$out/nvcc.err" ||
    "$nvcc" -O2 -o "$work/launch_runtime" scripts/gpu/launch_runtime.cu 2>>"$out/nvcc.err"; then
    wants runtime runtime-none && cases+=(runtime-none)
    wants runtime runtime-share50 && cases+=(runtime-share50)
  else
    failures+=("runtime: nvcc failed: $(tail -n 1 "$out/nvcc.err")")
    say "nvcc failed: the runtime-API cases are left out"
    tail -n 5 "$out/nvcc.err" >&2
  fi
fi
if wants driver driver-none || wants driver driver-share50; then
  if [ ! -f "$dist/spin.ptx" ]; then
    failures+=("driver: missing $dist/spin.ptx")
    say "no $dist/spin.ptx: the driver-API cases are left out"
  elif gcc -O2 -Wall -o "$work/bench_driver" scripts/gpu/bench_driver.c -ldl 2>"$out/gcc.err"; then
    wants driver driver-none && cases+=(driver-none)
    wants driver driver-share50 && cases+=(driver-share50)
  else
    failures+=("driver: gcc failed: $(tail -n 1 "$out/gcc.err")")
  fi
fi
wants hf hf-share50 && cases+=(hf-share50)
if [ ${#cases[@]} -eq 0 ]; then
  say "bench-overhead: nothing to run"
  printf '  %s\n' ${failures[@]+"${failures[@]}"} >&2
  exit 1
fi
say "programs built; cases: ${cases[*]}"

write_info "$out/info.txt" "$dist" "$py" "pairs=$pairs" "hf_pairs=$hf_pairs" \
  "bench_args=${bench_args[*]}" "launches=$launches" "hf_requests=$hf_requests" "device=$device" \
  "pin=${pin:-none}" \
  ${baseline:+"baseline=$(tr '\n' ' ' <"$baseline/BUILD-INFO" 2>/dev/null | sed 's/commit=\([0-9a-f]*\).*/\1/')"}

# command_of CASE: the program and its arguments.
command_of() {
  case $1 in
    runtime-*) echo "$work/launch_runtime $launches 3" ;;
    driver-*) echo "$work/bench_driver $dist/spin.ptx ${bench_args[*]}" ;;
    hf-*) echo "$py scripts/gpu/shapes.py llama --count $hf_requests --seconds 100 --interval-ms 0 --device $device" ;;
  esac
}

# metrics_of CASE FILE: the key=value figures of the process's output, on one line.
metrics_of() {
  case $1 in
    runtime-*) grep '^launch_ns=' "$2" | tail -n 1 ;;
    driver-*) grep '^alloc_free_pair_ns=' "$2" | tail -n 1 ;;
    hf-*) grep '^summary ' "$2" | tail -n 1 | tr ' ' '\n' | grep -E '^(request_ns|p50_ns|loop_ns|count)=' | tr '\n' ' ' ;;
  esac
}

# run_one CASE MODE PAIR: one process; appends its figures to raw.txt.
run_one() {
  local case=$1 mode=$2 pair=$3
  local name=$case-$mode-$pair
  local -a launcher=(env -u LD_PRELOAD)
  local preload=$shim
  [ "$mode" = bare ] && preload=${baseline:+$baseline/libgpuslice.so}
  if [ -n "$preload" ]; then
    local ledger
    ledger=$(mktemp -d "$work/ledger.XXXXXX")
    launcher=(env LD_PRELOAD="$preload" GPUSLICE_DIR="$ledger" GPUSLICE_TENANT=overhead)
    case $case in *-share50) launcher+=(GPUSLICE_COMPUTE_SHARE=50) ;; esac
  fi
  local -a command
  read -r -a command <<<"$(command_of "$case")"
  [ -n "$pin" ] && launcher=(taskset -c "$pin" "${launcher[@]}")
  timeout -k 5 "$process_timeout" "${launcher[@]}" "${command[@]}" </dev/null \
    >"$out/runs/$name.out" 2>"$out/runs/$name.err"
  local rc=$? metrics
  metrics=$(metrics_of "$case" "$out/runs/$name.out")
  # ld.so only warns when a preload cannot be loaded; the run would then measure nothing.
  if [ -n "$preload" ] && grep -q 'cannot be preloaded' "$out/runs/$name.err"; then
    rc=99
  fi
  if [ "$rc" -ne 0 ] || [ -z "$metrics" ]; then
    failures+=("$name: exited $rc: $(grep -v '^[[:space:]]*$' "$out/runs/$name.err" | tail -n 1 | cut -c1-200)")
    say "$name failed (exit $rc)"
    tail -n 3 "$out/runs/$name.err" >&2
    echo "pair=$pair case=$case mode=$mode rc=$rc" >>"$out/raw.txt"
    return
  fi
  echo "pair=$pair case=$case mode=$mode rc=0 $metrics" >>"$out/raw.txt"
}

started=$SECONDS
last_pair=0
for pair in $(seq 1 "$pairs"); do
  if [ "$budget" != 0 ] && [ $((SECONDS - started + last_pair)) -gt "$budget" ]; then
    say "TIME_BUDGET=$budget s: stopping after $((pair - 1)) pairs"
    break
  fi
  pair_started=$SECONDS
  for case in "${cases[@]}"; do
    case $case in hf-*) [ "$pair" -le "$hf_pairs" ] || continue ;; esac
    if [ $((pair % 2)) = 1 ]; then
      run_one "$case" bare "$pair"
      run_one "$case" shim "$pair"
    else
      run_one "$case" shim "$pair"
      run_one "$case" bare "$pair"
    fi
  done
  last_pair=$((SECONDS - pair_started))
  say "pair $pair of $pairs done in $last_pair s ($((SECONDS - started)) s in all)"
done

say "bench-overhead: logs in $out ($((SECONDS - started)) s of runs)"
if ! "$py" scripts/isolation_report.py "$OUT" --md "$OUT/overhead.md" --img-dir "$OUT/img" --only overhead >&2; then
  say "WARNING: the report failed; run scripts/isolation_report.py on $OUT"
fi
if [ ${#failures[@]} -gt 0 ]; then
  say "bench-overhead: ${#failures[@]} failure(s):"
  printf '  %s\n' "${failures[@]}" >&2
  exit 1
fi
say "bench-overhead: done"
