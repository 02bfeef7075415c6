#!/usr/bin/env bash
# Compute isolation on every workload shape (issue 13): each workload runs without the shim
# and under it in the same run, while scripts/gpu/nvml_sampler.py (without the shim) samples
# NVML every 50 ms into SECTION/nvml.log: device utilization, SM clock, power, per-process
# utilization, stamped with CLOCK_MONOTONIC as the workloads' logs are. The
# workloads are scripts/gpu/shapes.py, one Python process per run.
#
# usage: OUT=/some/dir bash scripts/bench-isolation.sh [DIST_DIR]
# env:   OUT               folder for the logs (required); each section writes
#                          $OUT/isolation/SECTION/, replacing what an earlier run left there
#        ONLY              sections or cases to run, space-separated (default: all sections):
#                            limit     torch4096 jax4096 graph4096 step2048 step1024
#                                      streams4096 procs4096 light2048 mix8192
#                            shares    (25/75, a bare pair, the solo loop)
#                            priority  requests llama
#        SECONDS_EACH      length of each run of limit and shares (default 4)
#        PRIORITY_SECONDS  length of each priority run (default twice SECONDS_EACH)
#        LIMIT             the compute limit of the limit section, percent (default 30)
#        PYTHON            the Python with torch, jax, transformers, pynvml (default python3)
#        RUN_TIMEOUT       seconds a process may take beyond its run: start-up, warm-up
#                          (default 90); one that takes longer is killed and reported
#        SHAPES_DEVICE     cuda (default); cpu only for a dry run of this script without a GPU
#        TRACE             1: every process under the shim also writes the watcher's trace
#                          (GPUSLICE_TRACE) beside its log, as LOG.trace (a diagnostic; off
#                          by default, since writing it is work the watcher does)
#
# Then scripts/isolation_report.py reads $OUT and writes $OUT/isolation.md and plots in
# $OUT/img (without matplotlib, the tables alone; run it again elsewhere for the plots).
# Prints each run's and section's elapsed seconds on stderr. Exits 1 if any run failed
# (the others still ran; the report says which are missing).
set -uo pipefail # not -e: a failed run is recorded and the others still run

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
py=${PYTHON:-python3}
each=${SECONDS_EACH:-4}
require_int SECONDS_EACH "$each"
pseconds=${PRIORITY_SECONDS:-$((2 * each))}
require_int PRIORITY_SECONDS "$pseconds"
limit=${LIMIT:-30}
require_int LIMIT "$limit"
extra=${RUN_TIMEOUT:-90}
require_int RUN_TIMEOUT "$extra"
device=${SHAPES_DEVICE:-cuda}
only=${ONLY:-limit shares priority}
# A misspelt ONLY would run nothing of what was meant: refuse it before anything runs.
known="limit shares priority torch4096 jax4096 graph4096 step2048 step1024 streams4096 procs4096 light2048 mix8192 requests llama"
for word in $only; do
  if [[ " $known " != *" $word "* ]]; then
    echo "bench-isolation: ONLY: unknown section or case '$word' (known: $known)" >&2
    exit 2
  fi
done
top=$OUT/isolation
trace=${TRACE:-0}
shapes=$ROOT/scripts/gpu/shapes.py
longest=$((each > pseconds ? each : pseconds))
run_timeout=$((longest + extra))

mkdir -p "$top"
work=$(mktemp -d /tmp/gpuslice-isolation.XXXXXX)
sampler_pid=""
failures=()

cleanup() {
  sampler_stop
  rm -rf "$work"
}
trap cleanup EXIT

# wants SECTION [CASE]: whether ONLY asks for this section, or for this case of it.
wants() {
  [[ " $only " == *" $1 "* ]] || { [ -n "${2:-}" ] && [[ " $only " == *" $2 "* ]]; }
}

# --- the NVML sampler, one per section ------------------------------------------------

sampler_start() {
  local dir=$1 ready=$work/sampler.ready
  rm -f "$ready"
  env -u LD_PRELOAD "$py" scripts/gpu/nvml_sampler.py --out "$dir/nvml.log" --period-ms 50 \
    --ready "$ready" </dev/null 2>"$dir/nvml_sampler.err" &
  sampler_pid=$!
  local _
  for _ in $(seq 150); do
    [ -e "$ready" ] && break
    kill -0 "$sampler_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ ! -e "$ready" ] || [ -s "$dir/nvml_sampler.err" ]; then
    say "WARNING: the NVML sampler did not start cleanly; throughput only: $(tail -n 1 "$dir/nvml_sampler.err" 2>/dev/null)"
  elif grep -q '^error' "$dir/nvml.log" 2>/dev/null; then
    say "WARNING: NVML refuses a query (the report will say what is missing): $(grep -m 1 '^error' "$dir/nvml.log")"
  fi
}

sampler_stop() {
  [ -n "$sampler_pid" ] || return 0
  kill -TERM "$sampler_pid" 2>/dev/null
  wait "$sampler_pid" 2>/dev/null
  sampler_pid=""
}

# --- groups: the processes of one measurement, started together -----------------------

group_name=""
group_dir=""
group_ledger=""
group_go=""
group_started=0
group_pids=()
group_ready=()
group_logs=()

# group DIR NAME: the next members make up measurement NAME, logs in DIR. Every group has
# a fresh ledger: tenants of an earlier measurement (a high-priority one) cannot linger.
group() {
  group_dir=$1
  group_name=$2
  group_pids=()
  group_ready=()
  group_logs=()
  group_ledger=$(mktemp -d "$work/ledger.XXXXXX")
  group_go=$work/$2.go
  rm -f "$group_go"
  group_started=$SECONDS
}

# member LOG bare|TENANT [GPUSLICE_SETTING=VALUE...] -- SHAPES_ARGS...: starts one
# process of the group, without the shim (bare) or under it as TENANT. It warms up, says
# it is ready, and waits for the group's go.
member() {
  local log=$1 who=$2
  shift 2
  local -a settings=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do
    settings+=("$1")
    shift
  done
  [ $# -gt 0 ] && shift
  local -a launcher=(env -u LD_PRELOAD)
  local expect=0
  if [ "$who" != bare ]; then
    launcher=(env LD_PRELOAD="$shim" GPUSLICE_DIR="$group_ledger" GPUSLICE_TENANT="$who"
      ${settings[@]+"${settings[@]}"})
    [ "$trace" = 1 ] && launcher+=(GPUSLICE_TRACE="$group_dir/${log%.log}.trace")
    expect=1
  fi
  local ready=$work/${group_name}.${#group_pids[@]}.ready
  rm -f "$ready"
  timeout -k 5 "$run_timeout" "${launcher[@]}" "$py" "$shapes" "$@" --device "$device" \
    --expect-shim "$expect" --ready-file "$ready" --go-file "$group_go" \
    </dev/null >"$group_dir/$log" 2>"$group_dir/${log%.log}.err" &
  group_pids+=("$!")
  group_ready+=("$ready")
  group_logs+=("$log")
}

# group_run: once every member is ready, starts them together and waits for them all. A
# member that dies or hangs before it is ready stops the group.
group_run() {
  local i all missing="" deadline=$((SECONDS + extra))
  while :; do
    all=1
    for i in "${!group_pids[@]}"; do
      [ -e "${group_ready[$i]}" ] && continue
      all=0
      if ! kill -0 "${group_pids[$i]}" 2>/dev/null; then
        missing="${group_logs[$i]} ended before it was ready"
        break 2
      fi
    done
    [ "$all" = 1 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      missing="not every member was ready after ${extra} s"
      break
    fi
    sleep 0.05
  done
  if [ -n "$missing" ]; then
    say "$group_name: $missing; stopping the group"
    for i in "${!group_pids[@]}"; do kill -TERM "${group_pids[$i]}" 2>/dev/null; done
  else
    touch "$group_go"
  fi
  local rc err
  for i in "${!group_pids[@]}"; do
    wait "${group_pids[$i]}"
    rc=$?
    if [ "$rc" -ne 0 ]; then
      err=$group_dir/${group_logs[$i]%.log}.err
      failures+=("$group_name: ${group_logs[$i]} exited $rc: $(grep -v '^[[:space:]]*$' "$err" 2>/dev/null | tail -n 1 | cut -c1-200)")
      say "$group_name: ${group_logs[$i]} exited $rc; the end of its stderr:"
      tail -n 5 "$err" >&2 2>/dev/null
    fi
  done
  say "$group_name: $((SECONDS - group_started)) s"
}

# section NAME: a fresh folder and NVML sampler for the section's runs.
section_dir=""
section_started=0
section() {
  section_dir=$top/$1
  rm -rf "$section_dir"
  mkdir -p "$section_dir"
  section_started=$SECONDS
  say "section $1"
  sampler_start "$section_dir"
}
section_end() {
  sampler_stop
  say "section $(basename "$section_dir") took $((SECONDS - section_started)) s"
}

# --- the runs --------------------------------------------------------------------------

say "bench-isolation: dist $dist, runs of $each s (priority $pseconds s), limit $limit%, ONLY='$only'"
warn_if_gpu_busy
write_info "$top/info.txt" "$dist" "$py" "seconds_each=$each" "priority_seconds=$pseconds" \
  "limit=$limit" "only=$only" "device=$device"
say "info written"

loop4096=(torch-loop --size 4096 --sync-every 8)

# limit_case NAME SHAPES_ARGS...: the workload alone without the shim, then alone under
# the limit, back to back.
limit_case() {
  local name=$1
  shift
  group "$section_dir" "${name}_bare"
  member "${name}_bare.log" bare -- "$@" --seconds "$each"
  group_run
  group "$section_dir" "${name}_limit"
  member "${name}_limit.log" "limited-$name" GPUSLICE_COMPUTE_LIMIT="$limit" -- "$@" --seconds "$each"
  group_run
}

limit_cases=(torch4096 jax4096 graph4096 step2048 step1024 streams4096 procs4096 light2048 mix8192)
run_limit=0
for name in "${limit_cases[@]}"; do wants limit "$name" && run_limit=1; done
if [ "$run_limit" = 1 ]; then
  section limit
  wants limit torch4096 && limit_case torch4096 "${loop4096[@]}"
  wants limit jax4096 && limit_case jax4096 jax-chain --size 4096 --chain 8
  wants limit graph4096 && limit_case graph4096 torch-graph --size 4096 --per-graph 16
  wants limit step2048 && limit_case step2048 torch-loop --size 2048 --sync-every 1
  wants limit step1024 && limit_case step1024 torch-loop --size 1024 --sync-every 1
  wants limit streams4096 && limit_case streams4096 torch-streams --size 4096 --streams 2 --sync-every 8
  if wants limit procs4096; then
    # One tenant of two processes: the limit is the tenant's, both share it.
    group "$section_dir" procs4096_bare
    member procs4096_bare_a.log bare -- "${loop4096[@]}" --seconds "$each"
    member procs4096_bare_b.log bare -- "${loop4096[@]}" --seconds "$each"
    group_run
    group "$section_dir" procs4096_limit
    member procs4096_limit_a.log limited-procs GPUSLICE_COMPUTE_LIMIT="$limit" -- "${loop4096[@]}" --seconds "$each"
    member procs4096_limit_b.log limited-procs GPUSLICE_COMPUTE_LIMIT="$limit" -- "${loop4096[@]}" --seconds "$each"
    group_run
  fi
  # Uses less than the limit (about 15% of the GPU without the shim): must not be slowed.
  wants limit light2048 && limit_case light2048 light --size 2048 --burst 8 --sleep-ms 1
  # Kernels of widely mixed lengths, two in flight (a long one counted as an average one
  # went uncharged in part: 39-43% under 30% on the simulated GPU before 402dcce).
  wants limit mix8192 && limit_case mix8192 torch-mix --size 8192 --small 256 --mix-every 20 --depth 2
  section_end
fi

if wants shares; then
  section shares
  group "$section_dir" shares_solo
  member solo.log bare -- "${loop4096[@]}" --seconds "$each"
  group_run
  group "$section_dir" shares_25_75
  member s25.log s25 GPUSLICE_COMPUTE_SHARE=25 -- "${loop4096[@]}" --seconds "$each"
  member s75.log s75 GPUSLICE_COMPUTE_SHARE=75 -- "${loop4096[@]}" --seconds "$each"
  group_run
  group "$section_dir" shares_bare_pair
  member bare_a.log bare -- "${loop4096[@]}" --seconds "$each"
  member bare_b.log bare -- "${loop4096[@]}" --seconds "$each"
  group_run
  section_end
fi

# priority_case NAME SHAPES_ARGS...: the high tenant's workload alone without the shim,
# then beside the 4096² loop without the shim, then as `high` beside it as `low`. With
# FLOOR=1 also beside the least neighbour there is (a 256² matmul and a synchronization,
# over and over, without the shim): what sharing the GPU with another process costs at all,
# however little that process runs, which no bound on its queue can take away.
priority_case() {
  local name=$1
  shift
  group "$section_dir" "${name}_solo"
  member "${name}_solo.log" bare -- "$@" --seconds "$pseconds"
  group_run
  if [ "${FLOOR:-0}" = 1 ]; then
    group "$section_dir" "${name}_floor"
    member "${name}_floor.log" bare -- "$@" --seconds "$pseconds"
    member "${name}_floor_neighbour.log" bare -- light --size 256 --burst 1 --sleep-ms 0 --seconds "$pseconds"
    group_run
  fi
  group "$section_dir" "${name}_bare"
  member "${name}_bare.log" bare -- "$@" --seconds "$pseconds"
  member "${name}_bare_neighbour.log" bare -- "${loop4096[@]}" --seconds "$pseconds"
  group_run
  group "$section_dir" "${name}_shim"
  member "${name}_high.log" high GPUSLICE_PRIORITY=high -- "$@" --seconds "$pseconds"
  member "${name}_low_neighbour.log" low GPUSLICE_PRIORITY=low -- "${loop4096[@]}" --seconds "$pseconds"
  group_run
}

if wants priority requests || wants priority llama; then
  section priority
  group "$section_dir" neighbour_solo
  member neighbour_solo.log bare -- "${loop4096[@]}" --seconds "$each"
  group_run
  wants priority requests && FLOOR=1 priority_case requests requests --size 2048 --interval-ms 2
  wants priority llama && priority_case llama llama --interval-ms 2
  section_end
fi

say "bench-isolation: logs in $top"
if ! "$py" scripts/isolation_report.py "$OUT" --md "$OUT/isolation.md" --img-dir "$OUT/img" >&2; then
  say "WARNING: the report failed; the logs are complete, run scripts/isolation_report.py on them"
fi
if [ ${#failures[@]} -gt 0 ]; then
  say "bench-isolation: ${#failures[@]} run(s) failed:"
  printf '  %s\n' "${failures[@]}" >&2
  exit 1
fi
say "bench-isolation: done"
