#!/usr/bin/env bash
# CI's image stage (`make images-test`): build the three images on a stand-in base with a private Docker daemon,
# smoke-run each (tests/images, marker `docker`), then stop the daemon and remove its data.
#
#   scripts/images-test.sh [--dry-run] [--images spark,trainer,pipeline] [--build-only]
#
# Caches under .cache/images/ (gitignored): the stand-in base tarball and a wheelhouse of every pinned dependency,
# which the builds read from a local HTTP server instead of PyPI. A daemon that cannot start fails the stage.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/dockerd.sh
source "$(dirname "${BASH_SOURCE[0]}")/dockerd.sh"
# shellcheck source=scripts/standin-base.sh
source "$(dirname "${BASH_SOURCE[0]}")/standin-base.sh"

ROOT=$(repo_root)
CACHE_DIR=${CACHE_DIR:-$ROOT/.cache/images}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
IMAGE_TAG=${IMAGE_TAG:-ci}
BASE_TAG=cifarflow-standin:bookworm
IMAGES=(spark trainer pipeline)
BUILD_ONLY=0

DOCKERD_ROOT=""
WHEEL_SERVER_PID=""
TIMINGS=()

# Record how long the step that just ended took, for the summary the stage prints at the end.
mark() {
  local t
  t=$(now)
  TIMINGS+=("$(printf '%-30s %4ss' "$1" $((t - PHASE_START)))")
  PHASE_START=$t
}

usage() {
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# CI starts from a fresh machine: install the daemon and debootstrap when they are missing.
ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  ((${#missing[@]})) || return 0
  if [[ $DRY_RUN != 1 && $(id -u) != 0 ]]; then
    die "${missing[*]} not installed and not running as root" "sudo apt-get install -y ${missing[*]}"
  fi
  run apt-get update -q
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# Every pinned dependency of the three images (and hatchling, to build the cifarflow wheel) as wheels, built once
# from pip's cache on this machine; keyed by pyproject.toml and the constraints.
build_wheelhouse() {
  local dir=$CACHE_DIR/wheelhouse key
  key=$(cat "$ROOT/pyproject.toml" "$ROOT/requirements/constraints.txt" | sha256sum | cut -c1-12)
  if [[ -f $dir/.stamp && $(<"$dir/.stamp") == "$key" ]]; then
    log "wheelhouse cached: $dir"
    return
  fi
  [[ -x $PYTHON || $DRY_RUN == 1 ]] || die "no Python at $PYTHON" "run make venv first, or set PYTHON"
  run rm -rf "$dir"
  run "$PYTHON" -m pip wheel --quiet --wheel-dir "$dir" -c "$ROOT/requirements/constraints.txt" hatchling \
    "${ROOT}[spark,train,pipeline,serve]"
  # The images build cifarflow from the source tree; a copy here could only be stale.
  run_sh "rm -f $dir/cifarflow-*.whl && echo $key > $dir/.stamp"
}

serve_wheelhouse() {
  local port
  port=$("${PYTHON}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
    2>/dev/null || echo 8765)
  WHEEL_URL="http://127.0.0.1:$port/"
  printf '%s &\n' "$(show "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$CACHE_DIR/wheelhouse" "$port")"
  [[ $DRY_RUN != 1 ]] || return 0
  "$PYTHON" -m http.server --bind 127.0.0.1 --directory "$CACHE_DIR/wheelhouse" "$port" >/dev/null 2>&1 &
  WHEEL_SERVER_PID=$!
  local tries=0
  until "$PYTHON" -c "import urllib.request as u; u.urlopen('$WHEEL_URL', timeout=1)" 2>/dev/null; do
    ((++tries < 50)) || die "the wheelhouse server did not start on $WHEEL_URL" "check that port $port is free"
    sleep 0.2
  done
}

build_image() {
  local name=$1 start log_file
  local args=(build --progress=plain --network host -f images/Dockerfile --target "$name" -t "cifarflow-$name:$IMAGE_TAG"
    --build-arg "BASE_IMAGE=$BASE_TAG" --build-arg PIP_NO_INDEX=1 --build-arg "PIP_FIND_LINKS=$WHEEL_URL")
  # The stand-in has no GPU: the plain TensorFlow wheel, without NVIDIA's CUDA wheels.
  [[ $name != trainer ]] || args+=(--build-arg TF_EXTRAS=)
  log_file=$CACHE_DIR/logs/build-$name.log
  start=$(now)
  if ! run_sh "cd $(printf '%q' "$ROOT") && DOCKER_BUILDKIT=1 $(show "$DOCKER" "${args[@]}" . | cut -c3-) > $log_file 2>&1"; then
    tail -n 60 "$log_file" >&2
    die "building cifarflow-$name failed" "read $log_file (the last lines are above)"
  fi
  [[ $DRY_RUN == 1 ]] || log "cifarflow-$name:$IMAGE_TAG built in $(($(now) - start))s"
  mark "build cifarflow-$name"
}

cleanup() {
  local rc=$?
  if [[ -n $WHEEL_SERVER_PID ]]; then
    run kill "$WHEEL_SERVER_PID" || true
  fi
  if [[ -n $DOCKERD_ROOT ]]; then
    stop "$DOCKERD_ROOT"
  fi
  mark "stop dockerd, remove its data"
  if [[ $DRY_RUN != 1 ]]; then
    printf '  %s\n' "${TIMINGS[@]}" >&2
  fi
  log "image stage finished in $(($(now) - STAGE_START))s (exit $rc)"
  exit "$rc"
}

main() {
  while (($#)); do
    case $1 in
      --dry-run) DRY_RUN=1 ;;
      --images)
        IFS=, read -r -a IMAGES <<<"${2:?--images needs a list such as spark,trainer}"
        shift
        ;;
      --build-only) BUILD_ONLY=1 ;;
      -h | --help)
        usage
        return
        ;;
      *) die "unknown option $1" "see scripts/images-test.sh --help" ;;
    esac
    shift
  done
  local name
  for name in "${IMAGES[@]}"; do
    grep -q "^FROM runtime AS $name\$" "$ROOT/images/Dockerfile" || die "no image named '$name'" "choose from spark, trainer, pipeline"
  done
  STAGE_START=$(now)
  PHASE_START=$STAGE_START
  run mkdir -p "$CACHE_DIR/logs"

  ensure_packages
  # Only now: the client must be the one installed with dockerd, never one the machine happens to carry.
  DOCKER=$(docker_cli)
  mark "apt packages"
  build_wheelhouse
  mark "wheelhouse"
  standin_tarball "$CACHE_DIR"
  mark "stand-in base tarball"

  if [[ $DRY_RUN == 1 ]]; then
    DOCKERD_ROOT=/tmp/cifarflow-dockerd.XXXXXX
  else
    DOCKERD_ROOT=$(mktemp -d "${TMPDIR:-/tmp}/cifarflow-dockerd.XXXXXX")
  fi
  trap cleanup EXIT
  start "$DOCKERD_ROOT"
  export DOCKER_HOST=$DOCKERD_HOST

  run_sh "$DOCKER import --change 'ENV LANG=C.UTF-8' --change 'ENV SSL_CERT_FILE=$STANDIN_CA_PATH' \
--change 'ENV PIP_CERT=$STANDIN_CA_PATH' --change 'ENV REQUESTS_CA_BUNDLE=$STANDIN_CA_PATH' \
--change 'CMD [\"/bin/bash\"]' $STANDIN_TARBALL $BASE_TAG > /dev/null"
  serve_wheelhouse
  mark "start dockerd, import base"
  for name in "${IMAGES[@]}"; do
    build_image "$name"
  done
  if [[ $DRY_RUN != 1 ]]; then
    for name in "${IMAGES[@]}"; do
      printf '%-22s %s\n' "cifarflow-$name" \
        "$("$DOCKER" image inspect -f '{{.Size}}' "cifarflow-$name:$IMAGE_TAG" | awk '{printf "%.2f GB", $1/1e9}')"
    done
  fi

  if [[ $BUILD_ONLY != 1 ]]; then
    # The smoke runs are pytest tests, so failures read like every other test's; they need these images.
    local built
    built=$(IFS=, && echo "${IMAGES[*]}")
    run env DOCKER_HOST="$DOCKER_HOST" CIFARFLOW_DOCKER="$DOCKER" CIFARFLOW_IMAGE_TAG="$IMAGE_TAG" \
      CIFARFLOW_IMAGES="$built" CIFARFLOW_IMAGES_REQUIRED=1 \
      "$PYTHON" -m pytest -m docker -q -p no:cacheprovider --durations=5 "$ROOT/tests/images"
    mark "smoke runs (pytest -m docker)"
  fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
