#!/usr/bin/env bash
# Makes the base of the gpuslice image from Debian's packages, for machines that cannot pull
# docker.io/library/debian:bookworm-slim (deploy/Dockerfile's default base): CI, air-gapped
# build hosts. The result is a local image that deploy/Dockerfile takes as its base:
#
#   bash scripts/image-base.sh                       # makes localhost/gpuslice-base:bookworm
#   podman build -f deploy/Dockerfile --build-arg BASE=localhost/gpuslice-base:bookworm \
#     -t gpuslice:0.1.0 .
#
# usage: bash scripts/image-base.sh [--tarball FILE] [TAG]
#
#   TAG        the image to make (default localhost/gpuslice-base:bookworm)
#   --tarball  keeps the root filesystem as FILE (a tar archive): made there the first time,
#              imported from it afterwards without asking the mirror again (the image test
#              keeps it under target/ so that a machine whose image store is fresh each run
#              does not bootstrap Debian each time)
#
# What it does: debootstrap --variant=minbase of Debian 12 (bookworm, glibc 2.36) from
# $DEBIAN_MIRROR (default http://deb.debian.org/debian), what debian:bookworm-slim also
# leaves out removed (documentation, man pages, translations, apt's package lists), then
# `podman import` (or `docker import` where there is no podman). Needs root (debootstrap
# does), debootstrap and podman or docker. Takes about two minutes, most of it downloading
# and unpacking the packages; the image is about 80 MB. Prints the image's name last.
set -euo pipefail

RELEASE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
tag=localhost/gpuslice-base:$RELEASE
tarball=

die() {
  echo "image-base.sh: $*" >&2
  exit 1
}

while [ "$#" -gt 0 ]; do
  case "$1" in
    --tarball)
      [ "$#" -ge 2 ] || die "--tarball needs a file name"
      tarball=$2
      shift 2
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    -*) die "unknown option $1 (usage: $0 [--tarball FILE] [TAG])" ;;
    *)
      tag=$1
      shift
      ;;
  esac
done

if command -v podman >/dev/null 2>&1; then
  engine=podman
elif command -v docker >/dev/null 2>&1; then
  engine=docker
else
  die "neither podman nor docker is installed (Debian: apt-get install podman)"
fi

# Removed on exit, whatever happens: the bootstrap's directory and a temporary tarball.
work=
temp_tar=
trap 'rm -rf "$work" "$temp_tar"' EXIT

# Makes the root filesystem and writes it to $1 as a tar archive.
make_tarball() {
  local out=$1 debootstrap
  # Debian puts it in /usr/sbin, which a non-login shell's PATH may lack.
  debootstrap=$(PATH=$PATH:/usr/sbin:/sbin command -v debootstrap) ||
    die "debootstrap is not installed (Debian: apt-get install debootstrap)"
  [ "$(id -u)" = 0 ] || die "debootstrap needs root"
  work=$(mktemp -d)
  echo "image-base.sh: debootstrap $RELEASE from $MIRROR" >&2
  if ! "$debootstrap" --variant=minbase "$RELEASE" "$work/rootfs" "$MIRROR" >"$work/log" 2>&1; then
    cat "$work/log" >&2
    die "debootstrap $RELEASE failed (is $MIRROR reachable? DEBIAN_MIRROR names another)"
  fi
  # What a container image does without (debian:bookworm-slim drops the same): the
  # packages' documentation and translations, and apt's lists and caches (an `apt-get
  # update` remakes them).
  find "$work/rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias \
    -exec rm -rf {} +
  rm -rf "$work/rootfs"/usr/share/doc/* "$work/rootfs"/usr/share/man/* \
    "$work/rootfs"/usr/share/info/* "$work/rootfs"/var/lib/apt/lists/* \
    "$work/rootfs"/var/cache/apt/*.bin "$work/rootfs"/var/cache/apt/archives/*.deb \
    "$work/rootfs"/var/log/*.log "$work/rootfs"/var/log/apt/* "$work/rootfs"/debootstrap
  # Written aside and renamed, so an interrupted run never leaves a tarball that looks whole.
  mkdir -p "$(dirname "$out")"
  tar --numeric-owner --xattrs -C "$work/rootfs" -cf "$out.partial.$$" .
  mv "$out.partial.$$" "$out"
}

if [ -n "$tarball" ]; then
  [ -s "$tarball" ] || make_tarball "$tarball"
  source_tar=$tarball
else
  temp_tar=$(mktemp)
  make_tarball "$temp_tar"
  source_tar=$temp_tar
fi

# podman prints its progress on stderr unless asked not to; docker has no such flag.
quiet=()
[ "$engine" = podman ] && quiet=(--quiet)
"$engine" import "${quiet[@]}" --change 'CMD ["/bin/bash"]' \
  --message "Debian $RELEASE minbase, made by scripts/image-base.sh" \
  "$source_tar" "$tag" >/dev/null
echo "image-base.sh: made $tag ($engine); build the image on it with" \
  "--build-arg BASE=$tag" >&2
echo "$tag"
