#!/usr/bin/env bash
# Runs bench-isolation.sh's chosen cases once for each of several builds of the shim, on one
# GPU machine in one device call, so that two estimators or two policies are judged against
# the same bare runs' hardware. Each build's results are packed into one file.
#
# usage: OUT=/some/dir bash scripts/gpu-compare.sh 'CASES' DIST_DIR...   (on the GPU machine)
#   CASES: bench-isolation.sh's ONLY for every build, e.g. "requests llama"
# env:   OUT, and bench-isolation.sh's SECONDS_EACH, PRIORITY_SECONDS, TRACE, FLOOR
# Writes $OUT/compare.log and $OUT/<dist name>.tgz (its isolation/ folder and log).
set -uo pipefail
: "${OUT:?set OUT to a folder for the results}"
if [ $# -lt 2 ]; then
  echo "usage: OUT=dir bash scripts/gpu-compare.sh 'CASES' DIST_DIR..." >&2
  exit 2
fi
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
cd "$(dirname "$0")/.." || exit 1
cases=$1
shift
log=$OUT/compare.log
status=0
for dist in "$@"; do
  name=$(basename "$dist")
  work=$(mktemp -d /tmp/gpu-compare.XXXXXX)
  echo "gpu-compare: $name: $(tr '\n' ' ' <"$dist/BUILD-INFO" 2>/dev/null)" | tee -a "$log" >&2
  start=$SECONDS
  OUT=$work ONLY="$cases" bash scripts/bench-isolation.sh "$dist" >"$work/run.log" 2>&1 || status=1
  echo "gpu-compare: $name: $((SECONDS - start)) s" | tee -a "$log" >&2
  grep -v '^[[:space:]]*$' "$work/run.log" | tail -n 30 | tee -a "$log" >&2
  (cd "$work" && tar czf "$OUT/$name.tgz" .)
  rm -rf "$work"
done
exit "$status"
