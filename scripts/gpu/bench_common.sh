# shellcheck shell=bash
# Shared by scripts/bench-isolation.sh and scripts/bench-overhead.sh (sourced, not run).
# Expects ROOT (the repository) to be set.

# say MESSAGE: progress on stderr, with the seconds since the script started.
say() { echo "[$(printf '%4d' "$SECONDS") s] $*" >&2; }

# clear_gpuslice_env: the shim refuses unknown GPUSLICE_ variables, and one left in the
# caller's environment would change what a run measures: every run sets its own.
clear_gpuslice_env() {
  local name
  for name in $(compgen -e); do
    case $name in GPUSLICE_*) unset "$name" ;; esac
  done
}

# require_dist DIST: the shim must be there (scripts/dist.sh builds dist/ on the build
# machine); prints the folder's absolute path.
require_dist() {
  if [ ! -f "$1/libgpuslice.so" ]; then
    echo "$(basename "$0"): missing $1/libgpuslice.so (run scripts/dist.sh on the build machine and carry dist/)" >&2
    return 1
  fi
  (cd "$1" && pwd)
}

# require_int NAME VALUE: VALUE must be a positive whole number.
require_int() {
  if ! [[ $2 =~ ^[0-9]+$ ]] || [ "$2" -eq 0 ]; then
    echo "$(basename "$0"): $1=$2: expected a positive whole number" >&2
    exit 2
  fi
}

# write_info FILE DIST PYTHON [KEY=VALUE...]: what ran where, for the report's header.
write_info() {
  local file=$1 dist=$2 py=$3
  shift 3
  {
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader 2>/dev/null |
      head -n 1 | sed 's/^/gpu=/'
    echo "cpus=$(nproc 2>/dev/null || echo unknown)"
    echo "versions=$("$py" "$ROOT/scripts/gpu/versions.py" 2>/dev/null || echo unknown)"
    if [ -f "$dist/BUILD-INFO" ]; then
      sed 's/^/dist_/' "$dist/BUILD-INFO"
    fi
    local setting
    for setting in "$@"; do echo "$setting"; done
  } >"$file"
}

# warn_if_gpu_busy: other processes on the GPU would be measured too.
warn_if_gpu_busy() {
  local others
  others=$(nvidia-smi --query-compute-apps=pid,process_name --format=csv,noheader 2>/dev/null || true)
  if [ -n "$others" ]; then
    say "WARNING: the GPU already runs other processes; they will disturb every figure:"
    echo "$others" >&2
  fi
}
