#!/usr/bin/env bash
# Builds the shim (and, for the tests, the simulated GPU) against an old glibc, and checks
# that what was built needs nothing newer.
#
# usage: bash scripts/glibc-baseline.sh build PACKAGE...   (e.g. build gpuslice fakecuda)
#        bash scripts/glibc-baseline.sh check FILE...
#        bash scripts/glibc-baseline.sh cc CC-ARGS...       (zig's C compiler, same baseline)
#        bash scripts/glibc-baseline.sh baseline            (prints the baseline: 2.17)
#
# Why: the shim is preloaded into whatever a container runs, with the image's own glibc. A
# shim linked on this machine (glibc 2.36) asks for symbol versions up to GLIBC_2.34, and in
# an image with an older glibc (Debian 11 and Ubuntu 20.04: 2.31; UBI 8: 2.28) the loader
# refuses it. So the shim is linked against glibc 2.17, the oldest glibc Rust's standard
# library supports (and the one zig's `-target x86_64-linux-gnu.2.17` provides stubs for),
# with cargo-zigbuild, which uses `zig cc` as the linker; no glibc of that age has to be
# installed. Every glibc from 2.17 on then loads it.
#
# build: `cargo zigbuild --release` of each package's library for
#        x86_64-unknown-linux-gnu.2.17, then `check` on each .so; prints the directory holding
#        them (the absolute path of target/x86_64-unknown-linux-gnu/release) as its last line.
# check: fails, naming each symbol and the version it needs, if a file needs a GLIBC_ symbol
#        version newer than the baseline (read from its version references: the loader
#        refuses a library if any of them is missing), or a symbol without a version, which
#        is what linking against the baseline leaves of a function glibc added later.
# cc:    compiles C against the same glibc (the tests build programs for an old image so).
#
# Needs cargo-zigbuild and zig: `pip install cargo-zigbuild ziglang` (.ci/run does), and
# objdump and readelf (binutils, which gcc brings).
set -euo pipefail
repository=$(cd "$(dirname "$0")/.." && pwd)

BASELINE=2.17
TRIPLE=x86_64-unknown-linux-gnu

die() {
  echo "glibc-baseline.sh: $*" >&2
  exit 1
}

# Prints the GLIBC_ versions FILE requires that are newer than the baseline, one a line.
versions_past_baseline() {
  local file=$1 version
  objdump -p "$file" | awk '/^Version References:/ { refs = 1; next }
                            refs && /^[^ ]/ { refs = 0 }
                            refs && $NF ~ /^GLIBC_[0-9.]+$/ { print $NF }' | sort -u |
    while read -r version; do
      # Newer than the baseline: sorts after it as a version, and is not it.
      if [ "${version#GLIBC_}" != "$BASELINE" ] &&
        [ "$(printf '%s\n%s\n' "${version#GLIBC_}" "$BASELINE" | sort -V | tail -n 1)" != "$BASELINE" ]; then
        echo "$version"
      fi
    done
}

# Prints the symbols FILE needs (undefined, not weak) that carry no version: linked
# against the baseline's glibc, those are functions that glibc did not have yet (zig's
# linker leaves them for the loader), which an old glibc cannot supply.
unversioned_needs() {
  readelf --dyn-syms -W "$1" | awk '$7 == "UND" && $5 == "GLOBAL" && NF >= 8 && $8 !~ /@/ { print $8 }' |
    sort -u
}

check() {
  command -v objdump >/dev/null && command -v readelf >/dev/null ||
    die "objdump and readelf are not installed (Debian: apt-get install binutils)"
  local file failed=0 versions version unversioned
  for file in "$@"; do
    [ -f "$file" ] || die "$file does not exist"
    objdump -p "$file" >/dev/null 2>&1 || die "$file is not an object file objdump can read"
    versions=$(versions_past_baseline "$file")
    unversioned=$(unversioned_needs "$file")
    if [ -z "$versions" ] && [ -z "$unversioned" ]; then
      echo "glibc-baseline.sh: $file needs glibc $BASELINE at most"
      continue
    fi
    failed=1
    if [ -n "$versions" ]; then
      echo "glibc-baseline.sh: $file needs glibc newer than $BASELINE (an image with an older" \
        "glibc than a version below refuses to load it); the symbols that ask for each:" >&2
      for version in $versions; do
        # objdump -T prints a reference's version as "(GLIBC_x.y)" or "GLIBC_x.y", the name last.
        echo "  $version: $(objdump -T "$file" |
          awk -v version="$version" '{ for (i = 1; i < NF; i++) { v = $i; gsub(/[()]/, "", v); if (v == version) print $NF } }' |
          sort -u | tr '\n' ' ')" >&2
      done
    fi
    if [ -n "$unversioned" ]; then
      echo "glibc-baseline.sh: $file needs symbols that glibc $BASELINE does not define (an image" \
        "with an older glibc than the one that added them refuses to load it):" \
        "$(echo "$unversioned" | tr '\n' ' ')" >&2
    fi
  done
  [ "$failed" = 0 ] || exit 1
}

build() {
  [ "$#" -gt 0 ] || die "build: name the packages whose libraries to build (e.g. gpuslice)"
  command -v cargo-zigbuild >/dev/null ||
    die "cargo-zigbuild is not installed: pip install cargo-zigbuild ziglang (see .ci/run)"
  local packages=() package
  for package in "$@"; do packages+=(-p "$package"); done
  cd "$repository"
  cargo zigbuild --release --locked --lib "${packages[@]}" --target "$TRIPLE.$BASELINE" >&2
  local dir=${CARGO_TARGET_DIR:-target}/$TRIPLE/release files=()
  for package in "$@"; do files+=("$dir/lib${package//-/_}.so"); done
  check "${files[@]}" >&2
  (cd "$dir" && pwd)
}

cc() {
  command -v cargo-zigbuild >/dev/null ||
    die "cargo-zigbuild is not installed: pip install cargo-zigbuild ziglang (see .ci/run)"
  cargo-zigbuild zig cc -- -target "x86_64-linux-gnu.$BASELINE" "$@"
}

case "${1:-}" in
  build) shift && build "$@" ;;
  check) shift && check "$@" ;;
  cc) shift && cc "$@" ;;
  baseline) echo "$BASELINE" ;;
  *) die "usage: $0 build PACKAGE... | check FILE... | cc CC-ARGS... | baseline" ;;
esac
