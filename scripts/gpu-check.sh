#!/usr/bin/env bash
# Real-GPU validation of gpuslice's memory quota (DESIGN.md, Testing): real frameworks and the
# example programs run under the shim, and what they see and do is asserted. CI has no GPU;
# this is the only place the shim meets the real driver.
#
# usage: bash scripts/gpu-check.sh [--multi] [DIST_DIR]
#                           on the GPU machine; DIST_DIR (default dist, from scripts/dist.sh)
#                           holds the shim & co. --multi runs the checks of several GPUs
#                           instead (scripts/gpu/multi.sh: CUDA_VISIBLE_DEVICES, one process
#                           on two GPUs, IPC, torchrun DDP, NCCL bandwidth, shares per GPU);
#                           on a machine with fewer than two GPUs it refuses (exit 2).
# env:   QUOTA              the tenant's memory limit in every check, per GPU (default 4Gi)
#        GPU_CHECK_LOG      also write everything printed to this file
#        GPU_CHECK_ONLY     run only these checks (names separated by spaces)
#        GPU_CHECK_VERBOSE  1: print every program's output, not only a failed check's
#        CHECK_TIMEOUT      seconds one program may run (default 120)
#        MONITOR_INTERVAL   seconds between samples of the host-side monitor (default 0.02)
#        PYTHON             the interpreter with torch, jax, cupy, triton, pynvml (python3)
#        LIBCUDA_DIR        where libcuda.so.1 is, for linking cudaprobe (default: ldconfig)
#        OUT                a folder: every program's output is also packed into it
#        GPU_CHECK_PLAN     1: say which checks would run (after --multi's count of the GPUs)
#                           and exit 0, running nothing on a GPU
#        MULTI_ROUNDS       --multi: bare/shim rounds of the NCCL bandwidth check (default 3)
#        MULTI_SECONDS      --multi: length of each load of the shares check (default 10)
#
# Prints one `PASS name: details` or `FAIL name: details` line per check, then
# `gpu-check: N passed, M failed`; exits 1 if any check failed. Every check gets a fresh
# ledger (GPUSLICE_DIR) and its own tenant. Beside each check that takes GPU memory runs
# scripts/gpu/monitor.py, without the shim: the memory the driver really gave the check's
# processes (NVML's per-process numbers, summed) must never pass the quota either.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MULTI=0
if [ "${1:-}" = --multi ]; then
  MULTI=1
  shift
fi
DIST=${1:-$ROOT/dist}
QUOTA=${QUOTA:-4Gi}
PYTHON=${PYTHON:-python3}
CHECK_TIMEOUT=${CHECK_TIMEOUT:-120}
MONITOR_INTERVAL=${MONITOR_INTERVAL:-0.02}
MIB=$((1 << 20))
GIB=$((1 << 30))

# bytes_of QUANTITY: QUANTITY in bytes, for the whole-number forms of gpuslice's quantity
# grammar (crates/ledger/src/quantity.rs: bytes, Ki Mi Gi Ti, k M G T); any other is refused.
bytes_of() {
  local text=$1 number unit
  number=${text%%[!0-9]*}
  unit=${text#"$number"}
  [ -n "$number" ] || return 1
  case $unit in
    "") echo "$number" ;;
    Ki) echo $((number << 10)) ;;
    Mi) echo $((number << 20)) ;;
    Gi) echo $((number << 30)) ;;
    Ti) echo $((number << 40)) ;;
    k) echo $((number * 1000)) ;;
    M) echo $((number * 1000000)) ;;
    G) echo $((number * 1000000000)) ;;
    T) echo $((number * 1000000000000)) ;;
    *) return 1 ;;
  esac
}

# --- what a check records -------------------------------------------------------------

problem() { PROBLEMS+=("$*"); }
detail() { DETAILS+=("$*"); }

join() {
  local separator=$1 joined="" item
  shift
  for item in "$@"; do joined+=${joined:+$separator}$item; done
  printf '%s' "$joined"
}

is_int() { [[ ${1:-} =~ ^[0-9]+$ ]]; }

# expect WHAT A OP B: records a problem unless the integers A OP B (OP: == != <= >= < >).
expect() {
  local what=$1 a=$2 op=$3 b=$4 holds
  if ! is_int "$a" || ! is_int "$b"; then
    problem "$what: no number to compare ('$a' $op '$b')"
    return 1
  fi
  case $op in
    "==") holds=$((a == b)) ;;
    "!=") holds=$((a != b)) ;;
    "<=") holds=$((a <= b)) ;;
    ">=") holds=$((a >= b)) ;;
    "<") holds=$((a < b)) ;;
    ">") holds=$((a > b)) ;;
    *) problem "expect: unknown operator $op"; return 1 ;;
  esac
  [ "$holds" = 1 ] || { problem "$what: $a $op $b is false"; return 1; }
}

mib() { is_int "${1:-}" && echo "$(($1 / MIB)) MiB" || echo "? MiB"; }

# kv FILE KEY: the value of a `KEY=value` line (the Python checks print one per line).
kv() { sed -n "s/^$2=//p" "$1" 2>/dev/null | tail -n 1; }

# field FILE WORD KEY [N]: KEY's value on the Nth line of FILE that starts with WORD and has
# KEY=... (WORD "-": any line), for lines such as `fill chunks=55 bytes=3690987520 rc=2`.
field() {
  awk -v word="$2" -v key="$3=" -v nth="${4:-1}" '
    word == "-" || $1 == word {
      for (i = 1; i <= NF; i++)
        if (index($i, key) == 1) {
          if (++seen == nth) { print substr($i, length(key) + 1); exit }
          next
        }
    }' "$1" 2>/dev/null
}

last_line() { grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 | cut -c1-300; }

how_it_ended() {
  case $1 in
    124 | 137) echo "timed out after ${CHECK_TIMEOUT}s" ;;
    *) echo "exited $1" ;;
  esac
}

# --- running programs ----------------------------------------------------------------

# run NAME COMMAND...: COMMAND with a time limit, stdout in $CHECK_DIR/NAME.out and stderr in
# NAME.err; returns its status.
run() {
  local name=$1
  shift
  timeout -k 10 "$CHECK_TIMEOUT" "$@" <"/dev/null" >"$CHECK_DIR/$name.out" 2>"$CHECK_DIR/$name.err"
}

# background NAME COMMAND...: run's COMMAND without waiting for it; wait_background waits
# for every one, and run_check ends those still running when its check returns.
background() {
  local name=$1
  shift
  timeout -k 10 "$CHECK_TIMEOUT" "$@" <"/dev/null" >"$CHECK_DIR/$name.out" 2>"$CHECK_DIR/$name.err" &
  BACKGROUND+=($!)
}

wait_background() {
  local pid
  for pid in ${BACKGROUND[@]+"${BACKGROUND[@]}"}; do
    wait "$pid" 2>/dev/null
  done
  BACKGROUND=()
}

kill_background() {
  local pid
  for pid in ${BACKGROUND[@]+"${BACKGROUND[@]}"}; do
    kill -TERM "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  BACKGROUND=()
}

# shim_env: sets SHIM to an `env ...` prefix that runs a command under the shim as this
# check's tenant, with a ledger directory of its own.
shim_env() {
  SHIM=(env LD_PRELOAD="$DIST/libgpuslice.so" GPUSLICE_TENANT="$CHECK_NAME"
    GPUSLICE_MEMORY_LIMIT="$QUOTA" GPUSLICE_DIR="$(mktemp -d "$CHECK_DIR/ledger.XXXXXX")")
}

# python_result NAME STATUS: the Python checks say error=... when an expectation fails;
# anything else that stops them is a traceback on stderr.
python_result() {
  local name=$1 status=$2 error
  error=$(kv "$CHECK_DIR/$name.out" error)
  if [ -n "$error" ]; then
    problem "$error"
  elif [ "$status" -ne 0 ]; then
    problem "$name $(how_it_ended "$status"): $(last_line "$CHECK_DIR/$name.err")"
  fi
}

# --- the host-side monitor -------------------------------------------------------------

# monitor_start [LIMIT]: the host-side monitor, judging against LIMIT bytes (default: the
# quota every check uses).
monitor_start() {
  MONITOR_OUT=$CHECK_DIR/monitor.txt
  MONITOR_LIMIT=${1:-$QUOTA_BYTES}
  env -u LD_PRELOAD "$PYTHON" "$ROOT/scripts/gpu/monitor.py" --out "$MONITOR_OUT" \
    --ready "$CHECK_DIR/monitor.ready" --limit "$MONITOR_LIMIT" --interval "$MONITOR_INTERVAL" \
    </dev/null 2>"$CHECK_DIR/monitor.err" &
  MONITOR_PID=$!
  local _
  for _ in $(seq 150); do
    [ -e "$CHECK_DIR/monitor.ready" ] && return 0
    kill -0 "$MONITOR_PID" 2>/dev/null || break
    sleep 0.1
  done
  problem "the monitor did not start: $(last_line "$CHECK_DIR/monitor.err")"
}

monitor_stop() {
  [ -n "$MONITOR_PID" ] || return 0
  kill -TERM "$MONITOR_PID" 2>/dev/null
  wait "$MONITOR_PID" 2>/dev/null
  MONITOR_PID=""
}

# Called by run_check after a check that used the monitor.
monitor_report() {
  local error source outside
  if [ ! -s "$MONITOR_OUT" ]; then
    problem "the monitor wrote no result: $(last_line "$CHECK_DIR/monitor.err")"
    return
  fi
  error=$(kv "$MONITOR_OUT" error)
  if [ -n "$error" ]; then
    problem "monitor: $error"
    return
  fi
  source=$(kv "$MONITOR_OUT" outside_source)
  outside=$(kv "$MONITOR_OUT" outside_max_bytes)
  if [ "$source" = none ]; then
    detail "outside view: no process seen in $(kv "$MONITOR_OUT" samples) samples"
    return
  fi
  detail "outside max $(kv "$MONITOR_OUT" outside_max_mib) MiB ($source, pids $(kv "$MONITOR_OUT" pid_max_mib))"
  expect "outside view (NVML, no shim) <= quota" "$outside" "<=" "$MONITOR_LIMIT"
}

# --- the checks ------------------------------------------------------------------------

check_torch_mem_get_info() {
  shim_env
  monitor_start
  run torch "${SHIM[@]}" "$PYTHON" scripts/gpu/torch_check.py mem-get-info --quota "$QUOTA_BYTES"
  local status=$?
  monitor_stop
  python_result torch "$status"
  local out=$CHECK_DIR/torch.out
  detail "total=$(kv "$out" total) free=$(kv "$out" free) ($(mib "$(kv "$out" free)"))"
  detail "device properties total=$(kv "$out" props_total)"
}

# torch_oom [ALLOC_CONF] [CHUNK_MIB]: shared by torch-oom, torch-expandable-oom and
# torch-fine-oom.
torch_oom() {
  local -a conf=(env -u PYTORCH_CUDA_ALLOC_CONF)
  [ -z "${1:-}" ] || conf=(env PYTORCH_CUDA_ALLOC_CONF="$1")
  local chunk_mib=${2:-256}
  shim_env
  monitor_start
  run torch "${conf[@]}" "${SHIM[@]}" "$PYTHON" scripts/gpu/torch_check.py oom --quota "$QUOTA_BYTES" --chunk-mib "$chunk_mib"
  local status=$?
  monitor_stop
  python_result torch "$status"
  local out=$CHECK_DIR/torch.out
  detail "chunks=$(kv "$out" chunks) of $chunk_mib MiB, allocated $(mib "$(kv "$out" allocated)")"
  detail "realloc 1 GiB after free: $(kv "$out" realloc_after_free)"
  detail "OOM says: $(kv "$out" oom_first_line | sed 's/\(is free\.\).*/\1/')"
}

check_torch_oom() { torch_oom ""; }
check_torch_expandable_oom() { torch_oom "expandable_segments:True"; }
# Fine steps leave no slack at the limit: if memory the driver took on its own (cuBLAS
# kernels loaded at first use) were not charged, the outside view would pass the quota.
check_torch_fine_oom() { torch_oom "" 20; }

check_jax_prealloc() {
  shim_env
  monitor_start
  run jax env -u XLA_PYTHON_CLIENT_PREALLOCATE -u XLA_PYTHON_CLIENT_MEM_FRACTION \
    -u XLA_PYTHON_CLIENT_ALLOCATOR "${SHIM[@]}" "$PYTHON" scripts/gpu/jax_check.py --quota "$QUOTA_BYTES"
  local status=$?
  monitor_stop
  python_result jax "$status"
  local out=$CHECK_DIR/jax.out
  detail "bytes_limit=$(kv "$out" bytes_limit) ($(mib "$(kv "$out" bytes_limit)")), ratio to quota $(kv "$out" ratio_to_quota) (want 0.75)"
  detail "matmul sum $(kv "$out" matmul_sum)"
}

check_cupy_oom() {
  shim_env
  monitor_start
  run cupy "${SHIM[@]}" "$PYTHON" scripts/gpu/cupy_check.py --quota "$QUOTA_BYTES"
  local status=$?
  monitor_stop
  python_result cupy "$status"
  local out=$CHECK_DIR/cupy.out
  detail "memGetInfo total=$(kv "$out" total)"
  detail "chunks=$(kv "$out" chunks) of 256 MiB, allocated $(mib "$(kv "$out" allocated)")"
  detail "realloc 1 GiB after free: $(kv "$out" realloc_after_free)"
}

check_triton_kernel() {
  shim_env
  monitor_start
  # A cache of its own, so the kernel is compiled under the shim, not taken from an old run.
  run triton env TRITON_CACHE_DIR="$CHECK_DIR/triton-cache" "${SHIM[@]}" \
    "$PYTHON" scripts/gpu/triton_check.py
  local status=$?
  monitor_stop
  python_result triton "$status"
  detail "vector add of $(kv "$CHECK_DIR/triton.out" n) floats, max abs error $(kv "$CHECK_DIR/triton.out" max_abs_error)"
}

check_nvidia_smi() {
  local query=(nvidia-smi --query-gpu=memory.total "--format=csv,noheader,nounits")
  run plain env -u LD_PRELOAD "${query[@]}"
  shim_env
  run smi "${SHIM[@]}" "${query[@]}"
  local status=$? plain shimmed
  plain=$(head -n 1 "$CHECK_DIR/plain.out" | tr -d ' \r')
  shimmed=$(head -n 1 "$CHECK_DIR/smi.out" | tr -d ' \r')
  [ "$status" -eq 0 ] || problem "nvidia-smi under the shim $(how_it_ended "$status"): $(last_line "$CHECK_DIR/smi.err")"
  detail "memory.total under the shim: ${shimmed:-?} MiB, without: ${plain:-?} MiB"
  expect "memory.total under the shim == quota in MiB" "$shimmed" "==" "$((QUOTA_BYTES / MIB))"
}

check_cudarc_alloc_until_oom() {
  local program=$DIST/examples/alloc_until_oom out=$CHECK_DIR/alloc.out
  [ -x "$program" ] || { problem "missing $program"; return; }
  shim_env
  monitor_start
  run alloc "${SHIM[@]}" "$program" --chunk 64Mi
  local status=$?
  monitor_stop
  [ "$status" -eq 0 ] || problem "alloc_until_oom $(how_it_ended "$status"): $(last_line "$CHECK_DIR/alloc.err")"
  local total allocated
  total=$(field "$out" mem_get_info total)
  allocated=$(field "$out" - allocated)
  detail "total=$total allocated=$allocated ($(mib "$allocated")) chunks=$(field "$out" - chunks) error=$(field "$out" - error)"
  expect "mem_get_info total == quota" "$total" "==" "$QUOTA_BYTES"
  expect "allocated <= quota" "$allocated" "<=" "$QUOTA_BYTES"
  expect "allocated > quota - 1 GiB" "$allocated" ">" "$((QUOTA_BYTES - GIB))"
  grep -q '^realloc_after_free=ok$' "$out" || problem "no realloc_after_free=ok"
}

check_cudarc_spin() {
  local program=$DIST/examples/spin out=$CHECK_DIR/spin.out
  [ -x "$program" ] || { problem "missing $program"; return; }
  shim_env
  monitor_start
  run spin "${SHIM[@]}" "$program" --kernels 50 --ns 2000000
  local status=$?
  monitor_stop
  [ "$status" -eq 0 ] || problem "spin $(how_it_ended "$status"): $(last_line "$CHECK_DIR/spin.err")"
  local busy
  busy=$(field "$out" - busy_fraction)
  detail "$(head -n 1 "$out")"
  awk -v busy="$busy" 'BEGIN { exit !(busy != "" && busy + 0 >= 0.9) }' ||
    problem "busy_fraction '$busy' < 0.9"
}

# probe_fill LABEL COMMAND...: a cudaprobe `fill` must stop at the quota with rc=2.
probe_fill() {
  local label=$1 out=$CHECK_DIR/$1.out
  shift
  shim_env
  run "$label" "${SHIM[@]}" "$@"
  local status=$? bytes rc
  [ "$status" -eq 0 ] || problem "$label $(how_it_ended "$status"): $(last_line "$CHECK_DIR/$label.err")"
  bytes=$(field "$out" fill bytes)
  rc=$(field "$out" fill rc)
  detail "$label $(mib "$bytes") rc=${rc:-?}"
  expect "$label: init rc == 0" "$(field "$out" init rc)" "==" 0
  expect "$label: fill rc == 2 (CUDA_ERROR_OUT_OF_MEMORY)" "$rc" "==" 2
  expect "$label: filled <= quota" "$bytes" "<=" "$QUOTA_BYTES"
  expect "$label: filled > quota - 1 GiB" "$bytes" ">" "$((QUOTA_BYTES - GIB))"
}

check_cudaprobe_paths() {
  [ -z "$PROBE_ERROR" ] || { problem "$PROBE_ERROR"; return; }
  monitor_start
  # `sleep 300` holds the memory long enough for the monitor to see it.
  probe_fill direct "$PROBE_DIRECT" fill 64M sleep 300
  probe_fill dlsym "$PROBE" dlsym fill 64M sleep 300
  probe_fill procaddr "$PROBE" procaddr fill 64M sleep 300

  local out=$CHECK_DIR/views.out status first_free
  shim_env
  run views "${SHIM[@]}" "$PROBE" procaddr info vmm 64M alloc 64M info free-all info nvml sleep 300
  status=$?
  monitor_stop
  [ "$status" -eq 0 ] || problem "views $(how_it_ended "$status"): $(last_line "$CHECK_DIR/views.err")"
  first_free=$(field "$out" info free 1)
  detail "views: free $(mib "$first_free") -> $(mib "$(field "$out" info free 2)") after vmm+alloc 64M -> $(mib "$(field "$out" info free 3)") after free-all; nvml total=$(field "$out" nvml total) nvml_v2 total=$(field "$out" nvml_v2 total)"
  expect "views: info rc == 0" "$(field "$out" info rc)" "==" 0
  expect "views: cuMemGetInfo total == quota" "$(field "$out" info total)" "==" "$QUOTA_BYTES"
  expect "views: cuDeviceTotalMem == quota" "$(field "$out" info device_total)" "==" "$QUOTA_BYTES"
  expect "views: vmm 64M rc == 0" "$(field "$out" vmm rc)" "==" 0
  expect "views: alloc 64M rc == 0" "$(field "$out" alloc rc)" "==" 0
  is_int "$first_free" &&
    expect "views: free drops by 128 MiB after vmm+alloc" "$(field "$out" info free 2)" "==" "$((first_free - 128 * MIB))"
  expect "views: free after free-all == free before" "$(field "$out" info free 3)" "==" "$first_free"
  expect "views: nvml rc == 0" "$(field "$out" nvml rc)" "==" 0
  expect "views: nvml total == quota" "$(field "$out" nvml total)" "==" "$QUOTA_BYTES"
  expect "views: nvml_v2 total == quota" "$(field "$out" nvml_v2 total)" "==" "$QUOTA_BYTES"
}

check_bad_setting_fails_closed() {
  [ -z "$PROBE_ERROR" ] || { problem "$PROBE_ERROR"; return; }
  shim_env
  # A later NAME=value given to env wins: the quota becomes the invalid 4GB.
  run probe "${SHIM[@]}" GPUSLICE_MEMORY_LIMIT=4GB "$PROBE" dlsym alloc 1M
  local lines init
  init=$(field "$CHECK_DIR/probe.out" init rc)
  lines=$(grep -c 'invalid GPUSLICE_MEMORY_LIMIT' "$CHECK_DIR/probe.err")
  detail "cudaprobe: init rc=${init:-?}, $lines stderr line(s) naming the setting: $(grep -m 1 'invalid GPUSLICE_MEMORY_LIMIT' "$CHECK_DIR/probe.err")"
  expect "cudaprobe init rc == 3 (CUDA_ERROR_NOT_INITIALIZED)" "$init" "==" 3
  expect "stderr lines with 'invalid GPUSLICE_MEMORY_LIMIT' == 1" "$lines" "==" 1

  shim_env
  run torch "${SHIM[@]}" GPUSLICE_MEMORY_LIMIT=4GB "$PYTHON" -c "import torch; torch.zeros(1, device='cuda')"
  local status=$?
  detail "torch: $(how_it_ended "$status"): $(last_line "$CHECK_DIR/torch.err")"
  expect "torch.zeros on cuda fails (exit status != 0)" "$status" "!=" 0
  grep -q 'invalid GPUSLICE_MEMORY_LIMIT' "$CHECK_DIR/torch.err" ||
    problem "torch's stderr does not name the invalid GPUSLICE_MEMORY_LIMIT: it failed for another reason"
}

# no_cuda LABEL COMMAND...: same stdout as without the shim, nothing on stderr.
no_cuda() {
  local label=$1 plain
  shift
  plain=$(env -u LD_PRELOAD "$@" 2>/dev/null </dev/null)
  shim_env
  run "$label" "${SHIM[@]}" "$@"
  local status=$?
  [ "$status" -eq 0 ] || problem "$label $(how_it_ended "$status")"
  [ "$(cat "$CHECK_DIR/$label.out")" = "$plain" ] ||
    problem "$label: stdout '$(head -c 100 "$CHECK_DIR/$label.out")' differs from '$plain' without the shim"
  [ ! -s "$CHECK_DIR/$label.err" ] || problem "$label: stderr not empty: $(head -n 1 "$CHECK_DIR/$label.err")"
  detail "$label: '$(head -c 40 "$CHECK_DIR/$label.out")'"
}

check_no_cuda_programs() {
  no_cuda sh sh -c 'echo ok'
  no_cuda python "$PYTHON" -c 'print(1)'
}

check_context_footprint() {
  [ -z "$PROBE_ERROR" ] || { problem "$PROBE_ERROR"; return; }
  shim_env
  monitor_start
  run probe "${SHIM[@]}" GPUSLICE_LOG=debug "$PROBE" dlsym info sleep 300
  local status=$?
  monitor_stop
  local out=$CHECK_DIR/probe.out line free logged
  [ "$status" -eq 0 ] || problem "cudaprobe $(how_it_ended "$status"): $(last_line "$CHECK_DIR/probe.err")"
  line=$(grep -m 1 'context on .* took ' "$CHECK_DIR/probe.err" | sed 's/^gpuslice\[[0-9]*\]: //')
  free=$(field "$out" info free)
  [ -n "$line" ] || problem "no 'context on ... took' line in the shim's debug log"
  detail "shim: ${line:-?}"
  is_int "$free" && detail "quota - free = $((QUOTA_BYTES - free)) bytes ($(mib "$((QUOTA_BYTES - free))"))"
  expect "info rc == 0" "$(field "$out" info rc)" "==" 0
  expect "info total == quota" "$(field "$out" info total)" "==" "$QUOTA_BYTES"
  # The logged size (e.g. `523 MiB`, `523.4 MiB`) must be what the tenant lost.
  logged=$(sed -n 's/.* took \([0-9.]*\) \([KMGT]*i*B\).*/\1 \2/p' <<<"$line" |
    awk '{ m = 1; if ($2 == "KiB") m = 2^10; if ($2 == "MiB") m = 2^20; if ($2 == "GiB") m = 2^30; printf "%.0f", $1 * m }')
  if is_int "$logged" && is_int "$free"; then
    awk -v a="$logged" -v b="$((QUOTA_BYTES - free))" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 2^20 / 10) }' ||
      problem "the logged footprint ($logged bytes) is not quota - free ($((QUOTA_BYTES - free)))"
  fi
}

# gpu_used_mib: the GPU's used memory in MiB, as NVML (nvidia-smi, no shim) reports it.
gpu_used_mib() {
  env -u LD_PRELOAD nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null |
    head -n 1 | tr -dc '0-9'
}

# wait_for_line FILE TEXT: waits (up to 60 s) until FILE has a line containing TEXT.
wait_for_line() {
  local _
  for _ in $(seq 600); do
    grep -q -- "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# A child forked after its parent allocated keeps the parent's descriptors of the driver;
# does the device keep the parent's memory while the child lives, after the parent is
# killed? If it does, the tenant's charge must stay until the child is gone too (issue 15
# item 3): the tenant's next process is refused what the quota no longer has room for, and
# gets it once the child dies. Also records whether the driver's descriptors are
# close-on-exec (the shim's slot lock is, to match).
check_fork_child_keeps_memory() {
  [ -z "$PROBE_ERROR" ] || { problem "$PROBE_ERROR"; return; }
  shim_env
  local out=$CHECK_DIR/parent.out baseline held after_kill after_child child parent fd flags cloexec=""
  baseline=$(gpu_used_mib)
  "${SHIM[@]}" "$PROBE" dlsym alloc 2048M fork-hold hold </dev/null >"$out" 2>"$CHECK_DIR/parent.err" &
  parent=$!
  if ! wait_for_line "$out" holding; then
    problem "the parent never held its memory: $(last_line "$CHECK_DIR/parent.err")"
    kill -9 "$parent" 2>/dev/null
    return
  fi
  child=$(field "$out" fork-hold child_pid)
  held=$(gpu_used_mib)
  for fd in /proc/"$child"/fd/*; do
    case $(readlink "$fd") in
      /dev/nvidia*)
        flags=$(awk '/^flags:/ { print $2 }' "/proc/$child/fdinfo/${fd##*/}")
        cloexec+="$(readlink "$fd")=$(( (8#$flags & 8#2000000) != 0 )) "
        ;;
    esac
  done
  detail "driver descriptors close-on-exec: ${cloexec:-none seen}"
  kill -9 "$parent" 2>/dev/null
  wait "$parent" 2>/dev/null
  sleep 2
  after_kill=$(gpu_used_mib)
  detail "GPU used: baseline $baseline MiB, with the parent $held MiB, parent killed and child alive $after_kill MiB"
  run next "${SHIM[@]}" "$PROBE" dlsym alloc 3072M
  local next_rc
  next_rc=$(field "$CHECK_DIR/next.out" alloc rc)
  if is_int "$after_kill" && is_int "$baseline" && [ $((after_kill - baseline)) -ge 2048 ]; then
    detail "the device kept the killed parent's memory while its child lived"
    expect "next process's 3 GiB refused while the child holds the parent's 2 GiB" "$next_rc" "==" 2
  else
    detail "the device let the killed parent's memory go although its child lived (the ledger then over-counts until the child exits)"
  fi
  kill -9 "$child" 2>/dev/null
  sleep 2
  after_child=$(gpu_used_mib)
  detail "child killed: $after_child MiB"
  run after "${SHIM[@]}" "$PROBE" dlsym alloc 3072M
  expect "3 GiB granted once the child is gone" "$(field "$CHECK_DIR/after.out" alloc rc)" "==" 0
}

# Issue 15, item 1, against the real driver: under a 2 GiB quota, fill it with stream-ordered
# allocations on one stream, queue their frees behind a 3 s kernel and keep allocating on
# another stream. The driver's pool still holds the freed memory until the stream reaches
# the frees, so the second fill must get (almost) nothing: together the two fills stay under
# the quota, and NVML without the shim never sees the process above it. Once the stream has
# reached the frees (a synchronization), the memory is the tenant's again.
check_stream_ordered_frees() {
  [ -z "$PROBE_ERROR" ] || { problem "$PROBE_ERROR"; return; }
  local quota=$((2 * GIB)) out=$CHECK_DIR/probe.out
  shim_env
  monitor_start "$quota"
  # `sleep 500` holds the peak for the monitor while the frees are still queued.
  run probe "${SHIM[@]}" GPUSLICE_MEMORY_LIMIT=$quota "$PROBE" dlsym module "$DIST/spin.ptx" \
    async-fill-on 1 64M spin-on 1 3000000000 free-async-on 1 async-fill-on 2 64M sleep 500 \
    sync 1 async-fill-on 2 64M sleep 300
  local status=$?
  monitor_stop
  [ "$status" -eq 0 ] || problem "cudaprobe $(how_it_ended "$status"): $(last_line "$CHECK_DIR/probe.err")"
  local first queued after
  first=$(field "$out" async-fill bytes 1)
  queued=$(field "$out" async-fill bytes 2)
  after=$(field "$out" async-fill bytes 3)
  detail "filled $(mib "$first"), then behind the queued frees $(mib "$queued"), after the stream reached them $(mib "$after")"
  expect "module rc == 0" "$(field "$out" module rc)" "==" 0
  expect "spin-on rc == 0" "$(field "$out" spin-on rc)" "==" 0
  expect "free-async-on failures == 0" "$(field "$out" free-async-on failed)" "==" 0
  expect "first fill > 1 GiB" "$first" ">" "$GIB"
  expect "first fill rc == 2" "$(field "$out" async-fill rc 1)" "==" 2
  is_int "$first" && is_int "$queued" &&
    expect "both fills together <= quota" "$((first + queued))" "<=" "$quota"
  is_int "$first" && expect "after the stream reached the frees: refilled >= half the first" \
    "$after" ">=" "$((first / 2))"
}

# A pool whose release threshold is above what it holds keeps freed memory after a
# synchronization: it stays charged (cuMemGetInfo shows it gone from free), and a tenant at
# its quota is still not refused (the shim trims the idle pool to make room).
check_pool_release_threshold() {
  [ -z "$PROBE_ERROR" ] || { problem "$PROBE_ERROR"; return; }
  local quota=$((2 * GIB)) out=$CHECK_DIR/probe.out
  shim_env
  monitor_start "$quota"
  run probe "${SHIM[@]}" GPUSLICE_MEMORY_LIMIT=$quota "$PROBE" dlsym info pool-threshold 64G \
    async-on 0 1G free-async-on 0 sync 0 pool-reserved info alloc 1G info sleep 300
  local status=$?
  monitor_stop
  [ "$status" -eq 0 ] || problem "cudaprobe $(how_it_ended "$status"): $(last_line "$CHECK_DIR/probe.err")"
  local before kept reserved
  before=$(field "$out" info free 1)
  kept=$(field "$out" info free 2)
  reserved=$(field "$out" pool-reserved reserved)
  detail "free $(mib "$before") -> $(mib "$kept") with 1 GiB freed into the pool (pool holds $(mib "$reserved")) -> $(mib "$(field "$out" info free 3)") after cuMemAlloc 1G"
  expect "pool-threshold rc == 0" "$(field "$out" pool-threshold rc)" "==" 0
  expect "async-on 1G rc == 0" "$(field "$out" async-on rc)" "==" 0
  expect "the pool keeps the freed GiB" "$reserved" ">=" "$GIB"
  is_int "$before" && expect "free memory still excludes what the pool keeps" "$kept" "<=" "$((before - GIB))"
  expect "cuMemAlloc 1G at the quota rc == 0 (the idle pool is trimmed)" "$(field "$out" alloc rc)" "==" 0
}

# The red-team's VMM loop against the real driver: under a 2 GiB quota, create 512 MiB, map
# it and release the handle at once, ten times. The mapping keeps the memory, so the rounds
# must be refused at the quota and NVML without the shim never sees the process above it;
# unmapping gives it all back. Then NCCL's free pattern: a handle retained from a mapped
# address keeps the memory charged after the unmap until it is released too.
check_vmm_release_while_mapped() {
  [ -z "$PROBE_ERROR" ] || { problem "$PROBE_ERROR"; return; }
  local quota=$((2 * GIB)) out=$CHECK_DIR/probe.out chunk=$((512 * MIB))
  shim_env
  monitor_start "$quota"
  # `sleep 500` holds the peak for the monitor.
  run probe "${SHIM[@]}" GPUSLICE_MEMORY_LIMIT=$quota "$PROBE" dlsym vmm-loop 10 512M info \
    sleep 500 vmm-unmap-loop info
  local status=$?
  monitor_stop
  [ "$status" -eq 0 ] || problem "cudaprobe $(how_it_ended "$status"): $(last_line "$CHECK_DIR/probe.err")"
  local mapped refused before after
  mapped=$(field "$out" vmm-loop mapped)
  refused=$(field "$out" vmm-loop refused)
  before=$(field "$out" info free 1)
  after=$(field "$out" info free 2)
  detail "$mapped of 10 rounds of 512 MiB mapped with their handles released, $refused refused; free $(mib "$before") -> $(mib "$after") after the unmaps"
  expect "vmm-loop other == 0" "$(field "$out" vmm-loop other)" "==" 0
  expect "at least one round mapped" "$mapped" ">=" 1
  is_int "$mapped" && expect "mapped rounds <= quota" "$((mapped * chunk))" "<=" "$quota"
  is_int "$mapped" && expect "every other round refused" "$refused" "==" "$((10 - mapped))"
  expect "vmm-unmap-loop failures == 0" "$(field "$out" vmm-unmap-loop failed)" "==" 0
  is_int "$mapped" && is_int "$before" &&
    expect "the unmaps give back every round" "$after" ">=" "$((before + mapped * chunk))"

  out=$CHECK_DIR/retain.out
  run retain "${SHIM[@]}" GPUSLICE_MEMORY_LIMIT=$quota "$PROBE" dlsym info vmm 64M va-reserve 64M \
    vmm-map 0 0 vmm-retain 4096 vmm-release 0 vmm-unmap 0 64M info vmm-release 0 info
  status=$?
  [ "$status" -eq 0 ] || problem "cudaprobe $(how_it_ended "$status"): $(last_line "$CHECK_DIR/retain.err")"
  local start retained released
  start=$(field "$out" info free 1)
  retained=$(field "$out" info free 2)
  released=$(field "$out" info free 3)
  detail "retain/release/unmap/release: free $(mib "$start") -> $(mib "$retained") -> $(mib "$released")"
  expect "vmm-map rc == 0" "$(field "$out" vmm-map rc)" "==" 0
  expect "vmm-retain returns the handle that maps it" "$(field "$out" vmm-retain index)" "==" 0
  is_int "$start" && expect "unmapped but retained: still charged" "$retained" "<=" "$((start - 64 * MIB))"
  is_int "$start" && expect "released: given back" "$released" ">=" "$((start - 16 * MIB))"
}

# --- driver ----------------------------------------------------------------------------

# run_check NAME FUNCTION: one PASS or FAIL line; a failed check shows its programs' output.
run_check() {
  local name=$1 check=$2
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]]; then
    return
  fi
  PROBLEMS=()
  DETAILS=()
  CHECK_NAME=$name
  CHECK_DIR=$WORK/$name
  MONITOR_OUT=""
  MONITOR_PID=""
  BACKGROUND=()
  mkdir -p "$CHECK_DIR"
  "$check"
  kill_background
  monitor_stop
  [ -z "$MONITOR_OUT" ] || monitor_report
  if [ ${#PROBLEMS[@]} -eq 0 ]; then
    PASSED=$((PASSED + 1))
    echo "PASS $name: $(join ', ' "${DETAILS[@]}")"
  else
    FAILED=$((FAILED + 1))
    echo "FAIL $name: $(join '; ' "${PROBLEMS[@]}") | $(join ', ' "${DETAILS[@]}")"
  fi
  if [ ${#PROBLEMS[@]} -gt 0 ] || [ "${GPU_CHECK_VERBOSE:-0}" = 1 ]; then
    local file
    for file in "$CHECK_DIR"/*.out "$CHECK_DIR"/*.err "$CHECK_DIR"/monitor.txt; do
      [ -s "$file" ] || continue
      echo "    --- ${file#"$WORK"/} (last 25 lines)"
      tail -n 25 "$file" | sed 's/^/    /'
    done
  fi
}

# Compiles cudaprobe both ways; a failure fails the checks that need it, not the others.
build_probes() {
  PROBE=$WORK/cudaprobe
  PROBE_DIRECT=$WORK/cudaprobe-direct
  PROBE_ERROR=""
  local libcuda_dir=${LIBCUDA_DIR:-}
  if [ -z "$libcuda_dir" ]; then
    libcuda_dir=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 .*x86-64/ { print $NF; exit }')
    libcuda_dir=$(dirname "${libcuda_dir:-/usr/local/nvidia/lib64/libcuda.so.1}")
  fi
  if ! gcc -O1 -o "$PROBE" "$DIST/cudaprobe.c" -lpthread -ldl 2>"$WORK/cudaprobe-build.err"; then
    PROBE_ERROR="cudaprobe did not compile: $(head -n 1 "$WORK/cudaprobe-build.err")"
  elif ! gcc -O1 -DDIRECT -o "$PROBE_DIRECT" "$DIST/cudaprobe.c" -L"$libcuda_dir" -l:libcuda.so.1 \
    -lpthread -ldl 2>"$WORK/cudaprobe-build.err"; then
    PROBE_ERROR="cudaprobe -DDIRECT did not link against $libcuda_dir/libcuda.so.1: $(head -n 1 "$WORK/cudaprobe-build.err")"
  fi
  echo "cudaprobe: built against $libcuda_dir/libcuda.so.1${PROBE_ERROR:+ ($PROBE_ERROR)}"
}

header() {
  echo "gpu-check: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  if [ "$MULTI" = 1 ]; then
    nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total --format=csv,noheader 2>&1 |
      sed 's/^/gpu: /'
    echo "topology: $(nvidia-smi topo -m 2>/dev/null | sed -n 2p | tr -s ' \t' ' ')"
  else
    echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -n 1)"
  fi
  echo "cuda: $(nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | head -n 1)"
  echo "python: $(command -v "$PYTHON"); $(env -u LD_PRELOAD "$PYTHON" "$ROOT/scripts/gpu/versions.py" 2>/dev/null)"
  echo "dist: $DIST ($(tr '\n' ' ' <"$DIST/BUILD-INFO" 2>/dev/null))"
  echo "quota: $QUOTA = $QUOTA_BYTES bytes; outputs in $WORK"
}

CHECKS=(torch-mem-get-info torch-oom torch-expandable-oom torch-fine-oom jax-prealloc cupy-oom triton-kernel
  nvidia-smi cudarc-alloc-until-oom cudarc-spin cudaprobe-paths bad-setting-fails-closed
  no-cuda-programs context-footprint fork-child-keeps-memory stream-ordered-frees
  pool-release-threshold vmm-release-while-mapped)

# gpu_count: how many GPUs nvidia-smi lists (without the shim); 0 without nvidia-smi.
gpu_count() {
  env -u LD_PRELOAD nvidia-smi -L 2>/dev/null | grep -c '^GPU '
}

main() {
  local name
  if [ "$MULTI" = 1 ]; then
    # shellcheck source=gpu/multi.sh
    source "$ROOT/scripts/gpu/multi.sh" || return 2
    CHECKS=("${MULTI_CHECKS[@]}")
    local gpus
    if ! command -v nvidia-smi >/dev/null 2>&1; then
      echo "gpu-check --multi: needs two or more GPUs, and there is no nvidia-smi to list them on this machine" >&2
      return 2
    fi
    gpus=$(gpu_count)
    if [ "${gpus:-0}" -lt 2 ]; then
      echo "gpu-check --multi: needs two or more GPUs; nvidia-smi -L lists ${gpus:-0} on this machine (run it where a kind with several GPUs is lent, or run gpu-check.sh without --multi)" >&2
      return 2
    fi
  fi
  for name in ${GPU_CHECK_ONLY:-}; do
    if [[ " ${CHECKS[*]} " != *" $name "* ]]; then
      echo "gpu-check: GPU_CHECK_ONLY names an unknown check '$name'; the checks: ${CHECKS[*]}" >&2
      return 2
    fi
  done
  if ! QUOTA_BYTES=$(bytes_of "$QUOTA"); then
    echo "gpu-check: QUOTA=$QUOTA is not a quantity such as 4Gi" >&2
    return 2
  fi
  if [ -n "${GPU_CHECK_PLAN:-}" ]; then
    local planned=() check
    for check in "${CHECKS[@]}"; do
      [ -z "${GPU_CHECK_ONLY:-}" ] || [[ " $GPU_CHECK_ONLY " == *" $check "* ]] && planned+=("$check")
    done
    local mode=""
    [ "$MULTI" = 0 ] || mode=" --multi"
    echo "gpu-check$mode: ${gpus:+$gpus GPUs, }quota $QUOTA per GPU; would run: ${planned[*]}"
    return 0
  fi
  if [ ! -f "$DIST/libgpuslice.so" ]; then
    echo "gpu-check: no $DIST/libgpuslice.so (run scripts/dist.sh on the build machine and carry dist/)" >&2
    return 2
  fi
  DIST=$(cd "$DIST" && pwd)
  cd "$ROOT" || return 2
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpuslice-check.XXXXXX")
  PASSED=0
  FAILED=0

  header
  build_probes
  echo
  local check
  for check in "${CHECKS[@]}"; do
    run_check "$check" "check_${check//-/_}"
  done

  if [ -n "${OUT:-}" ]; then
    tar -C "$WORK" -czf "$OUT/gpu-check-outputs.tgz" --exclude='ledger.*' --exclude=triton-cache . 2>/dev/null
  fi
  echo "gpu-check: $PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

if [ -n "${GPU_CHECK_LOG:-}" ]; then
  main 2>&1 | tee "$GPU_CHECK_LOG"
  exit "${PIPESTATUS[0]}"
fi
main
