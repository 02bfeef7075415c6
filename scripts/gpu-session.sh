#!/usr/bin/env bash
# One device call that checks everything the GPU must show after a change to the shim:
# scripts/gpu-check.sh (behaviour: every framework and path under the quota), then
# bench-isolation.sh on the shapes where the limit or priority was last off (with the
# watcher's traces), then bench-overhead.sh (what the shim costs a separate process). Each
# part runs under its own time limit, so that a slow part leaves time for the rest, and
# whatever ran comes back packed: $OUT holds at most a few files (the device tool brings
# back at most 8).
#
# usage: OUT=/some/dir bash scripts/gpu-session.sh [DIST_DIR]   (on the GPU machine)
# env:   OUT            where the packed results go (required)
#        CHECK_S        seconds for gpu-check.sh (default 150)
#        ISOLATION_S    seconds for bench-isolation.sh (default 200)
#        OVERHEAD_S     seconds for bench-overhead.sh (default 180)
#        ISOLATION_ONLY its ONLY (default "step1024 step2048 mix8192 streams4096 requests")
#        OVERHEAD_ONLY  its ONLY (default "runtime driver")
# Prints each part's last lines; writes $OUT/session.log, $OUT/check.tgz, $OUT/isolation.tgz
# (the traces apart in $OUT/traces.tar.xz) and $OUT/overhead.tgz.
set -uo pipefail
: "${OUT:?set OUT to a folder for the results}"
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
cd "$(dirname "$0")/.." || exit 1
dist=${1:-dist}
work=$(mktemp -d /tmp/gpu-session.XXXXXX)
log=$OUT/session.log
say() { echo "gpu-session: $*" | tee -a "$log" >&2; }

say "dist: $(tr '\n' ' ' <"$dist/BUILD-INFO" 2>/dev/null)"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv,noheader \
  2>&1 | tee -a "$log" >&2

part() { # NAME SECONDS COMMAND...
  local name=$1 seconds=$2
  shift 2
  say "$name: up to $seconds s"
  local start=$SECONDS
  timeout --kill-after=10 "$seconds" "$@" >"$work/$name.out" 2>&1
  local rc=$?
  say "$name: rc=$rc after $((SECONDS - start)) s"
  tail -n 25 "$work/$name.out" | tee -a "$log" >&2
}

part check "${CHECK_S:-150}" env OUT="$work/check" GPU_CHECK_LOG="$work/check.log" \
  bash scripts/gpu-check.sh "$dist"
part isolation "${ISOLATION_S:-200}" env OUT="$work/isolation" TRACE=1 \
  ONLY="${ISOLATION_ONLY:-step1024 step2048 mix8192 streams4096 requests}" SECONDS_EACH=5 PRIORITY_SECONDS=8 \
  bash scripts/bench-isolation.sh "$dist"
part overhead "${OVERHEAD_S:-180}" env OUT="$work/overhead" ONLY="${OVERHEAD_ONLY:-runtime driver}" \
  PAIRS=10 TIME_BUDGET=$((${OVERHEAD_S:-180} - 20)) bash scripts/bench-overhead.sh "$dist"

(cd "$work" && find isolation -name '*.trace' -print0 2>/dev/null |
  tar --null -cJf "$OUT/traces.tar.xz" -T - 2>/dev/null)
find "$work/isolation" -name '*.trace' -delete 2>/dev/null
for name in check isolation overhead; do
  (cd "$work" && tar czf "$OUT/$name.tgz" "$name" "$name.out" "$name.log" 2>/dev/null)
done
say "results in $OUT"
rm -rf "$work"
