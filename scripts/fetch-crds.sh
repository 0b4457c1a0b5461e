#!/usr/bin/env bash
# Fetch the pinned upstream CRDs (requirements/crds.lock: file, sha256, release URL) into a cache folder, for a
# checkout without ../shared/crds beside it. A file whose checksum differs is refused and removed.
#
#   scripts/fetch-crds.sh [--dry-run] [OUT_DIR]   # default .cache/crds
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$(repo_root)
if [[ ${1:-} == --dry-run ]]; then
  DRY_RUN=1
  shift
fi
OUT=${1:-$ROOT/.cache/crds}
run mkdir -p "$OUT"
while read -r file sum url; do
  [[ -n $file && $file != \#* ]] || continue
  if [[ -f $OUT/$file ]] && sha256sum --status -c <<<"$sum  $OUT/$file"; then
    log "cached: $file"
    continue
  fi
  run curl -fsSL --retry 2 -o "$OUT/$file.partial" "$url" || die "cannot download $url" "check the network, or copy the CRDs into $OUT"
  if [[ $DRY_RUN != 1 ]]; then
    sha256sum --status -c <<<"$sum  $OUT/$file.partial" || {
      rm -f "$OUT/$file.partial"
      die "$file from $url does not match its pinned sha256" "check requirements/crds.lock against the release"
    }
  fi
  run mv "$OUT/$file.partial" "$OUT/$file"
done <"$ROOT/requirements/crds.lock"
