# The checks of `scripts/gpu-check.sh --multi` (issue 18): several GPUs of one machine.
# Sourced by gpu-check.sh, whose helpers (run, problem, detail, expect, field, kv, mib,
# wait_for_line, background, PROBE, DIST, QUOTA_BYTES, CHECK_DIR, CHECK_NAME) they use; not
# a program of its own.
#
# Every check runs with NCCL's NVLink multicast off (NCCL_NVLS_ENABLE=0), as the machines
# that lend several GPUs require. GPU 0 and GPU 1 are NVML's indices 0 and 1 (nvidia-smi's),
# read without the shim; "the outside view" is NVML read by cudaprobe without the shim and
# without a CUDA context of its own.
#
#   multi-visible-devices  CUDA_VISIBLE_DEVICES=1,0: ordinal 0 is GPU 1, charged there by UUID
#                          in the ledger and in the outside view; the shim's NVML answers for
#                          GPU 1 (by UUID and by NVML index 1) agree with its cuMemGetInfo;
#                          CUDA_VISIBLE_DEVICES=1 alone is held to GPU 1's quota
#   multi-two-gpus         one process fills GPU 0 then GPU 1: refused at each GPU's quota;
#                          a peer-to-peer copy between them arrives
#   multi-ipc              another tenant opens a cuMemAlloc export on GPU 1: charged to the
#                          owner only (the opener still fills its own quota); records whether
#                          NVML counts opened memory in the opener's per-process figure
#   multi-torchrun-ddp     torchrun, two processes, one GPU each, QUOTA per GPU: all-reduce
#                          right, a DDP step, each rank refused at its own quota, NCCL still
#                          working after the refusals
#   multi-nccl-bandwidth   all-reduce of 1 GiB over the two GPUs, bus bandwidth under the shim
#                          within 2% of bare (median of MULTI_ROUNDS alternating rounds)
#   multi-shares           shares 25/75 on GPU 1 while a 50/50 pair runs on GPU 0: each GPU's
#                          split within 3 points (matmul loads, MULTI_SECONDS each)

MULTI_CHECKS=(multi-visible-devices multi-two-gpus multi-ipc multi-torchrun-ddp
  multi-nccl-bandwidth multi-shares)

export NCCL_NVLS_ENABLE=0

# multi_ledger: a ledger directory of this check's own, shared by its tenants.
multi_ledger() {
  mktemp -d "$CHECK_DIR/ledger.XXXXXX"
}

# tenant_env LEDGER TENANT [NAME=VALUE...]: sets TENANT_ENV to an `env ...` prefix running a
# command under the shim as TENANT of LEDGER, QUOTA per GPU, NAME=VALUE added.
tenant_env() {
  local ledger=$1 tenant=$2
  shift 2
  TENANT_ENV=(env LD_PRELOAD="$DIST/libgpuslice.so" GPUSLICE_TENANT="$tenant"
    GPUSLICE_MEMORY_LIMIT="$QUOTA" GPUSLICE_DIR="$ledger" "$@")
}

# outside NAME COMMAND...: cudaprobe without the shim and without a context (NVML only).
outside() {
  local name=$1
  shift
  run "$name" env -u LD_PRELOAD -u CUDA_VISIBLE_DEVICES PROBE_NO_CONTEXT=1 "$PROBE" dlsym "$@"
}

# gpu_uuids: UUID0 and UUID1, NVML's first two GPUs, read without the shim.
gpu_uuids() {
  outside uuids nvml-index 0 nvml-index 1
  UUID0=$(field "$CHECK_DIR/uuids.out" nvml-index uuid 1)
  UUID1=$(field "$CHECK_DIR/uuids.out" nvml-index uuid 2)
  if [ -z "$UUID0" ] || [ -z "$UUID1" ] || [ "$UUID0" = "$UUID1" ]; then
    problem "NVML did not name two GPUs: $(last_line "$CHECK_DIR/uuids.err")"
    return 1
  fi
}

# outside_used NAME: USED0 and USED1, the memory NVML says is in use on GPU 0 and GPU 1.
outside_used() {
  outside "$1" nvml-index 0 nvml-index 1
  USED0=$(field "$CHECK_DIR/$1.out" nvml-index used 1)
  USED1=$(field "$CHECK_DIR/$1.out" nvml-index used 2)
}

# ledger_used LEDGER TENANT UUID: what the ledger charges TENANT on GPU UUID (gpuslice status).
ledger_used() {
  env -u LD_PRELOAD GPUSLICE_DIR="$1" "$DIST/gpuslice" status --json 2>/dev/null |
    "$PYTHON" -c '
import json, sys
report = json.load(sys.stdin)
print(sum(g["memory_used_bytes"] for t in report["tenants"] if t["name"] == sys.argv[1]
          for g in t["gpus"] if g["uuid"].lower() == sys.argv[2].lower()))' "$2" "$3" 2>/dev/null
}

# same_text WHAT A B: records a problem unless the strings A and B are equal and not empty.
same_text() {
  [ -n "$2" ] && [ "$2" = "$3" ] || problem "$1: '$2' is not '$3'"
}

# value_in TEXT KEY: KEY's value in a line of `KEY=value` words.
value_in() {
  tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p" | head -n 1
}

# line_with FILE WORD TEXT: the first line of FILE that starts with WORD and contains TEXT.
line_with() {
  grep -m 1 "^$2 .*$3" "$1" 2>/dev/null
}

check_multi_visible_devices() {
  [ -z "$PROBE_ERROR" ] || { problem "$PROBE_ERROR"; return; }
  gpu_uuids || return
  local ledger half out=$CHECK_DIR/swapped.out measured=$CHECK_DIR/measured
  ledger=$(multi_ledger)
  half=$((QUOTA_BYTES / 2))
  outside_used before
  local before0=$USED0 before1=$USED1
  tenant_env "$ledger" "$CHECK_NAME" CUDA_VISIBLE_DEVICES=1,0
  background swapped "${TENANT_ENV[@]}" "$PROBE" dlsym devices where alloc "$half" info \
    nvml-same nvml-index 0 nvml-index 1 wait-file "$measured"
  if ! wait_for_line "$out" waiting; then
    problem "the reordered process never got going: $(last_line "$CHECK_DIR/swapped.err")"
    return
  fi
  outside_used during
  local charged0 charged1
  charged0=$(ledger_used "$ledger" "$CHECK_NAME" "$UUID0")
  charged1=$(ledger_used "$ledger" "$CHECK_NAME" "$UUID1")
  touch "$measured"
  wait_background

  local info_total info_free same second first
  info_total=$(field "$out" info total)
  info_free=$(field "$out" info free)
  same=$(line_with "$out" nvml-same "")
  second=$(line_with "$out" nvml-index "$UUID1")
  first=$(line_with "$out" nvml-index "$UUID0")
  detail "ordinal 0 is $(field "$out" where uuid) (GPU 1 is $UUID1)"
  detail "ledger: GPU 1 $(mib "$charged1"), GPU 0 $(mib "$charged0"); outside: GPU 1 +$(mib "$((USED1 - before1))"), GPU 0 +$(mib "$((USED0 - before0))")"
  same_text "CUDA_VISIBLE_DEVICES=1,0: ordinal 0's UUID is GPU 1's" "$(field "$out" where uuid)" "$UUID1"
  same_text "CUDA_VISIBLE_DEVICES=1,0: ordinal 1's UUID is GPU 0's" "$(field "$out" devices 1)" "$UUID0"
  expect "alloc rc == 0" "$(field "$out" alloc rc)" "==" 0
  expect "cuMemGetInfo total == quota" "$info_total" "==" "$QUOTA_BYTES"
  expect "the shim's NVML finds ordinal 0 at NVML index 1" "$(value_in "$same" index)" "==" 1
  expect "NVML (by UUID) total == cuMemGetInfo total" "$(value_in "$same" total)" "==" "$info_total"
  expect "NVML (by UUID) free == cuMemGetInfo free" "$(value_in "$same" free)" "==" "$info_free"
  expect "NVML index 1 free == cuMemGetInfo free" "$(value_in "$second" free)" "==" "$info_free"
  expect "NVML index 0 (untouched GPU 0) used == 0" "$(value_in "$first" used)" "==" 0
  expect "ledger charges GPU 1 >= the allocation" "$charged1" ">=" "$half"
  expect "ledger charges GPU 1 <= quota" "$charged1" "<=" "$QUOTA_BYTES"
  expect "ledger charges GPU 0 nothing" "$charged0" "==" 0
  is_int "$USED1" && is_int "$before1" &&
    expect "outside: GPU 1 grew by >= the allocation" "$((USED1 - before1))" ">=" "$half"
  is_int "$USED0" && is_int "$before0" &&
    expect "outside: GPU 0 grew by < 256 MiB" "$((USED0 - before0))" "<" "$((256 * MIB))"

  out=$CHECK_DIR/subset.out
  tenant_env "$(multi_ledger)" "$CHECK_NAME" CUDA_VISIBLE_DEVICES=1
  run subset "${TENANT_ENV[@]}" "$PROBE" dlsym devices fill 256M
  local filled
  filled=$(field "$out" fill bytes)
  detail "CUDA_VISIBLE_DEVICES=1: $(field "$out" devices count) device(s), filled $(mib "$filled")"
  expect "CUDA_VISIBLE_DEVICES=1: one device" "$(field "$out" devices count)" "==" 1
  same_text "CUDA_VISIBLE_DEVICES=1: it is GPU 1" "$(field "$out" devices 0)" "$UUID1"
  expect "CUDA_VISIBLE_DEVICES=1: fill rc == 2" "$(field "$out" fill rc)" "==" 2
  expect "CUDA_VISIBLE_DEVICES=1: filled <= quota" "$filled" "<=" "$QUOTA_BYTES"
  expect "CUDA_VISIBLE_DEVICES=1: filled > quota - 1 GiB" "$filled" ">" "$((QUOTA_BYTES - GIB))"
}

check_multi_two_gpus() {
  [ -z "$PROBE_ERROR" ] || { problem "$PROBE_ERROR"; return; }
  gpu_uuids || return
  local ledger out=$CHECK_DIR/both.out measured=$CHECK_DIR/measured
  ledger=$(multi_ledger)
  outside_used before
  local before0=$USED0 before1=$USED1
  tenant_env "$ledger" "$CHECK_NAME"
  background both "${TENANT_ENV[@]}" "$PROBE" dlsym fill 256M use-device 1 fill 256M where \
    wait-file "$measured"
  if ! wait_for_line "$out" waiting; then
    problem "the process never got going: $(last_line "$CHECK_DIR/both.err")"
    return
  fi
  outside_used during
  local charged0 charged1 fill0 fill1
  charged0=$(ledger_used "$ledger" "$CHECK_NAME" "$UUID0")
  charged1=$(ledger_used "$ledger" "$CHECK_NAME" "$UUID1")
  touch "$measured"
  wait_background
  fill0=$(field "$out" fill bytes 1)
  fill1=$(field "$out" fill bytes 2)
  detail "filled GPU 0 $(mib "$fill0"), GPU 1 $(mib "$fill1"); ledger $(mib "$charged0") / $(mib "$charged1"); outside +$(mib "$((USED0 - before0))") / +$(mib "$((USED1 - before1))")"
  expect "use-device 1 rc == 0" "$(field "$out" use-device rc)" "==" 0
  same_text "the second fill is on GPU 1" "$(field "$out" where uuid)" "$UUID1"
  local gpu fill charged grew
  for gpu in 0 1; do
    fill=$([ "$gpu" = 0 ] && echo "$fill0" || echo "$fill1")
    charged=$([ "$gpu" = 0 ] && echo "$charged0" || echo "$charged1")
    grew=$([ "$gpu" = 0 ] && echo "$((USED0 - before0))" || echo "$((USED1 - before1))")
    expect "GPU $gpu: fill rc == 2" "$(field "$out" fill rc "$((gpu + 1))")" "==" 2
    expect "GPU $gpu: filled <= quota" "$fill" "<=" "$QUOTA_BYTES"
    expect "GPU $gpu: filled > quota - 1 GiB" "$fill" ">" "$((QUOTA_BYTES - GIB))"
    expect "GPU $gpu: ledger <= quota" "$charged" "<=" "$QUOTA_BYTES"
    expect "GPU $gpu: ledger >= filled" "$charged" ">=" "$fill"
    expect "GPU $gpu: outside growth <= quota" "$grew" "<=" "$QUOTA_BYTES"
  done

  out=$CHECK_DIR/peer.out
  tenant_env "$(multi_ledger)" "$CHECK_NAME"
  run peer "${TENANT_ENV[@]}" "$PROBE" dlsym peer-copy 1 256M
  detail "peer: $(grep -m 1 '^peer-copy' "$out")"
  expect "peer-copy rc == 0" "$(field "$out" peer-copy rc)" "==" 0
  expect "peer-copy: cuMemcpyPeer rc == 0" "$(field "$out" peer-copy copy)" "==" 0
  expect "peer-copy: the data arrived" "$(field "$out" peer-copy match)" "==" 1
  if [ "$(field "$out" peer-copy can)" = 1 ]; then
    expect "peer access enabled (rc 0)" "$(field "$out" peer-copy enable)" "==" 0
    expect "enabled again: CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED" "$(field "$out" peer-copy again)" "==" 704
  fi
}

check_multi_ipc() {
  [ -z "$PROBE_ERROR" ] || { problem "$PROBE_ERROR"; return; }
  gpu_uuids || return
  local ledger half handle=$CHECK_DIR/handle measured=$CHECK_DIR/measured
  local owner_out=$CHECK_DIR/owner.out opener_out=$CHECK_DIR/opener.out
  ledger=$(multi_ledger)
  half=$((QUOTA_BYTES / 2))
  tenant_env "$ledger" "$CHECK_NAME-owner" PROBE_DEVICE=1
  background owner "${TENANT_ENV[@]}" "$PROBE" dlsym alloc "$half" ipc-export "$handle" \
    wait-file "$measured"
  if ! wait_for_line "$owner_out" waiting; then
    problem "the owner never exported: $(last_line "$CHECK_DIR/owner.err")"
    return
  fi
  tenant_env "$ledger" "$CHECK_NAME-opener" PROBE_DEVICE=1
  background opener "${TENANT_ENV[@]}" "$PROBE" dlsym pid ipc-open "$handle" info fill 256M \
    wait-file "$measured"
  if ! wait_for_line "$opener_out" waiting; then
    problem "the opener never filled: $(last_line "$CHECK_DIR/opener.err")"
    touch "$measured"
    wait_background
    return
  fi
  outside procs nvml-procs 1
  local owner_charged opener_charged opener_pid opener_nvml
  owner_charged=$(ledger_used "$ledger" "$CHECK_NAME-owner" "$UUID1")
  opener_charged=$(ledger_used "$ledger" "$CHECK_NAME-opener" "$UUID1")
  opener_pid=$(field "$opener_out" pid pid)
  touch "$measured"
  wait_background
  local filled
  filled=$(field "$opener_out" fill bytes)
  opener_nvml=$(field "$CHECK_DIR/procs.out" nvml-procs pids | tr ',' '\n' |
    awk -F: -v pid="$opener_pid" '$1 == pid { print $2 }')
  detail "owner charged $(mib "$owner_charged"), opener $(mib "$opener_charged") after opening $(mib "$half") and filling $(mib "$filled")"
  detail "NVML's per-process figure of the opener: $(mib "$opener_nvml") (with the opened memory: $( [ -n "$opener_nvml" ] && [ "$opener_nvml" -ge "$((filled + half))" ] && echo yes || echo no))"
  expect "ipc-export rc == 0" "$(field "$owner_out" ipc-export rc)" "==" 0
  expect "ipc-open rc == 0" "$(field "$opener_out" ipc-open rc)" "==" 0
  expect "the opener reads the owner's data" "$(field "$opener_out" ipc-open pattern)" "==" 1
  expect "owner charged >= the exported allocation" "$owner_charged" ">=" "$half"
  expect "owner charged <= quota" "$owner_charged" "<=" "$QUOTA_BYTES"
  expect "opener's fill rc == 2" "$(field "$opener_out" fill rc)" "==" 2
  expect "opener filled <= quota" "$filled" "<=" "$QUOTA_BYTES"
  expect "opener not charged the opened memory (filled > quota - it)" "$filled" ">" "$((QUOTA_BYTES - half))"
  expect "opener's ledger charge <= quota" "$opener_charged" "<=" "$QUOTA_BYTES"
}

# torchrun_env: sets TORCHRUN to the launcher of two processes on this machine.
torchrun_env() {
  TORCHRUN=("$PYTHON" -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=2)
}

check_multi_torchrun_ddp() {
  torchrun_env
  tenant_env "$(multi_ledger)" "$CHECK_NAME"
  run ddp "${TENANT_ENV[@]}" "${TORCHRUN[@]}" scripts/gpu/ddp_check.py --quota "$QUOTA_BYTES" \
    --out-dir "$CHECK_DIR"
  local status=$? rank file
  [ "$status" -eq 0 ] || problem "torchrun $(how_it_ended "$status"): $(last_line "$CHECK_DIR/ddp.err")"
  for rank in 0 1; do
    file=$CHECK_DIR/rank-$rank.txt
    [ -s "$file" ] || { problem "rank $rank wrote nothing"; continue; }
    [ -z "$(kv "$file" error)" ] || problem "rank $rank: $(kv "$file" error)"
    detail "rank $rank on $(kv "$file" uuid): total $(mib "$(kv "$file" total)"), allocated $(mib "$(kv "$file" allocated)") until refused"
    expect "rank $rank: mem_get_info total == quota" "$(kv "$file" total)" "==" "$QUOTA_BYTES"
    expect "rank $rank: all-reduce right" "$(kv "$file" allreduce_ok)" "==" 1
    expect "rank $rank: DDP step, parameters equal on both ranks" "$(kv "$file" ddp_ok)" "==" 1
    expect "rank $rank: refused with torch.OutOfMemoryError" "$(kv "$file" oom)" "==" 1
    expect "rank $rank: allocated <= quota" "$(kv "$file" allocated)" "<=" "$QUOTA_BYTES"
    expect "rank $rank: allocated > quota - 2 GiB" "$(kv "$file" allocated)" ">" "$((QUOTA_BYTES - 2 * GIB))"
    expect "rank $rank: all-reduce after the refusal" "$(kv "$file" after_oom_ok)" "==" 1
  done
  local u0 u1
  u0=$(kv "$CHECK_DIR/rank-0.txt" uuid)
  u1=$(kv "$CHECK_DIR/rank-1.txt" uuid)
  [ -z "$u0" ] || [ "$u0" != "$u1" ] || problem "both ranks ran on one GPU ($u0)"
}

check_multi_nccl_bandwidth() {
  torchrun_env
  local rounds=${MULTI_ROUNDS:-3} round kind status
  local -a bare=() shim=()
  for round in $(seq "$rounds"); do
    for kind in bare shim; do
      if [ "$kind" = bare ]; then
        run "$kind-$round" env -u LD_PRELOAD "${TORCHRUN[@]}" scripts/gpu/nccl_allreduce.py --bytes "$GIB"
      else
        tenant_env "$(multi_ledger)" "$CHECK_NAME"
        run "$kind-$round" "${TENANT_ENV[@]}" "${TORCHRUN[@]}" scripts/gpu/nccl_allreduce.py --bytes "$GIB"
      fi
      status=$?
      [ "$status" -eq 0 ] || problem "$kind round $round $(how_it_ended "$status"): $(last_line "$CHECK_DIR/$kind-$round.err")"
      local busbw
      busbw=$(kv "$CHECK_DIR/$kind-$round.out" busbw_gbps)
      if [ "$kind" = bare ]; then bare+=("$busbw"); else shim+=("$busbw"); fi
    done
  done
  local verdict
  verdict=$("$PYTHON" - "${#bare[@]}" "${bare[@]}" "${shim[@]}" <<'EOF'
import statistics, sys
n = int(sys.argv[1])
try:
    bare = [float(v) for v in sys.argv[2:2 + n]]
    shim = [float(v) for v in sys.argv[2 + n:]]
    b, s = statistics.median(bare), statistics.median(shim)
    print(f"bare={b:.1f} shim={s:.1f} ratio_permille={round(1000 * s / b)}")
except (ValueError, ZeroDivisionError, statistics.StatisticsError):
    print("ratio_permille=none")
EOF
)
  detail "bus bandwidth GB/s, 1 GiB all-reduce: bare ${bare[*]}, shim ${shim[*]}; median $verdict"
  expect "shim bus bandwidth >= 98% of bare (permille)" "$(value_in "$verdict" ratio_permille)" ">=" 980
}

check_multi_shares() {
  local seconds=${MULTI_SECONDS:-10} ledger load=scripts/gpu/matmul_load.py
  ledger=$(multi_ledger)
  local name share gpu spec
  for spec in a:25:1 b:75:1 c:50:0 d:50:0; do
    IFS=: read -r name share gpu <<<"$spec"
    tenant_env "$ledger" "$CHECK_NAME-$name" CUDA_VISIBLE_DEVICES="$gpu" \
      GPUSLICE_COMPUTE_SHARE="$share"
    background "$name" "${TENANT_ENV[@]}" "$PYTHON" "$load" load --seconds "$seconds"
  done
  wait_background
  local split1 split0
  split1=$("$PYTHON" scripts/gpu/share_split.py "$CHECK_DIR/a.out" "$CHECK_DIR/b.out")
  split0=$("$PYTHON" scripts/gpu/share_split.py "$CHECK_DIR/c.out" "$CHECK_DIR/d.out")
  detail "GPU 1 (25/75): $split1"
  detail "GPU 0 (50/50): $split0"
  local first1 first0
  first1=$(value_in "$split1" first_permille)
  first0=$(value_in "$split0" first_permille)
  expect "GPU 1: the 25% tenant gets >= 22%" "$first1" ">=" 220
  expect "GPU 1: the 25% tenant gets <= 28%" "$first1" "<=" 280
  expect "GPU 0: the pair splits 50/50 +- 3" "$first0" ">=" 470
  expect "GPU 0: the pair splits 50/50 +- 3 " "$first0" "<=" 530
}
