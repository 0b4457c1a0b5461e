#!/usr/bin/env bash
# The CI stand-in for python:3.11-slim-bookworm: Debian bookworm (minbase) with Debian's Python 3.11 and venv, as a
# root filesystem tarball for `docker import`. CI has no registry to pull the real base from. The tarball is cached
# under .cache/images/ and keyed by everything that goes into it, so reruns skip debootstrap.
#
#   scripts/standin-base.sh [--dry-run] OUT_DIR   # prints the tarball's path last
#
# The host's CA bundle is copied in (TLS is intercepted where CI runs, so pip and apt need its CA), at a path of its
# own that Debian's update-ca-certificates does not rewrite when an image installs packages.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PACKAGES=python3,python3-venv,ca-certificates
HOST_CA=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
# Where the image finds the CA bundle; images-test.sh points SSL_CERT_FILE and PIP_CERT at it.
export STANDIN_CA_PATH=/etc/ssl/cifarflow-ci/ca-bundle.crt

standin_key() {
  { printf '%s\n' "$SUITE" "$MIRROR" "$PACKAGES"; cat "$HOST_CA" "${BASH_SOURCE[0]}" 2>/dev/null; } |
    sha256sum | cut -c1-12
}

# Sets STANDIN_TARBALL, building the tarball when the cache misses.
standin_tarball() {
  local out_dir=$1 rootfs
  STANDIN_TARBALL="$out_dir/standin-$SUITE-$(standin_key).tar"
  if [[ -s $STANDIN_TARBALL ]]; then
    log "stand-in base cached: $STANDIN_TARBALL"
    return
  fi
  need debootstrap "apt-get install -y debootstrap (as root)"
  [[ -r $HOST_CA ]] || [[ $DRY_RUN == 1 ]] || die "no CA bundle at $HOST_CA" "set HOST_CA_BUNDLE to the host's CA file"
  # Beside the tarball, so a run that failed half-way is cleaned up by the next one.
  rootfs="$STANDIN_TARBALL.rootfs"
  run rm -rf "$rootfs"
  run mkdir -p "$rootfs"
  run debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR"
  run install -D -m 0644 "$HOST_CA" "$rootfs$STANDIN_CA_PATH"
  run cp "$HOST_CA" "$rootfs/etc/ssl/certs/ca-certificates.crt"
  # The same suites the official image uses, so apt installs the same security updates.
  run_sh "printf 'deb $MIRROR $SUITE main\\ndeb $MIRROR $SUITE-updates main\\ndeb ${MIRROR%/debian}/debian-security $SUITE-security main\\n' > $rootfs/etc/apt/sources.list"
  # Like the official slim images: no package cache, no package lists.
  run_sh "rm -rf $rootfs/var/cache/apt/archives/*.deb $rootfs/var/lib/apt/lists/* $rootfs/tmp/*"
  run tar --numeric-owner -C "$rootfs" -cf "$STANDIN_TARBALL.partial" .
  run mv "$STANDIN_TARBALL.partial" "$STANDIN_TARBALL"
  run rm -rf "$rootfs"
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  if [[ ${1:-} == --dry-run ]]; then
    DRY_RUN=1
    shift
  fi
  [[ -n ${1:-} ]] || die "missing OUT_DIR" "scripts/standin-base.sh .cache/images"
  standin_tarball "$1"
  printf '%s\n' "$STANDIN_TARBALL"
fi
