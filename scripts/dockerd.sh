#!/usr/bin/env bash
# A private Docker daemon for CI: its own data root, exec root, pid file and socket under one folder, no bridge and
# no iptables rules (builds and smoke runs use --network host/none), so it leaves the host as it found it.
#
#   scripts/dockerd.sh [--dry-run] start ROOT   # last line: export DOCKER_HOST=unix://ROOT/docker.sock
#   scripts/dockerd.sh [--dry-run] stop ROOT    # stops it by its pid and removes ROOT
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

START_TIMEOUT=${DOCKERD_START_TIMEOUT:-60}
# The data root lives on a sparse ext4 image mounted through a loop device when the host allows it: removing the
# daemon's data is then one unmount and one file, not minutes of deleting the images' files one by one.
DATA_IMAGE_SIZE=${DOCKERD_DATA_IMAGE_SIZE:-64G}
DATA_ON_LOOP=${DOCKERD_DATA_ON_LOOP:-auto} # auto: when a loop device is free; 0: a plain folder

# The client that was installed with the daemon (Debian's docker.io 20.10 builds with BuildKit without the buildx
# plugin). Never whatever `docker` comes first on PATH: a newer static client (e.g. /usr/local/bin/docker 28.x)
# refuses DOCKER_BUILDKIT=1 without buildx. Call it only after dockerd is installed.
docker_cli() {
  local dockerd dir candidate
  if [[ -n ${DOCKER_CLI:-} ]]; then
    printf '%s\n' "$DOCKER_CLI"
    return
  fi
  dockerd=$(command -v dockerd 2>/dev/null || true)
  if [[ -n $dockerd ]]; then
    dir=$(dirname "$dockerd")
    # Beside it, or in the sibling bin/ (Debian: /usr/sbin/dockerd, /usr/bin/docker).
    for candidate in "$dir/docker" "$(dirname "$dir")/bin/docker"; do
      if [[ -x $candidate ]]; then
        printf '%s\n' "$candidate"
        return
      fi
    done
  fi
  printf '%s\n' docker
}

# Sets DOCKERD_HOST to the daemon's socket URL.
start() {
  local root=$1 docker
  docker=$(docker_cli)
  DOCKERD_HOST="unix://$root/docker.sock"
  need dockerd "apt-get install -y docker.io (as root)"
  if [[ $DRY_RUN != 1 && $(id -u) != 0 ]]; then
    die "dockerd needs root (running as uid $(id -u))" "run the image stage as root, as CI does, or use sudo"
  fi
  run mkdir -p "$root/data"
  if [[ $DATA_ON_LOOP != 0 ]] && { [[ $DRY_RUN == 1 ]] || losetup --find >/dev/null 2>&1; }; then
    run truncate -s "$DATA_IMAGE_SIZE" "$root/data.ext4"
    run mkfs.ext4 -q -F -m 0 "$root/data.ext4"
    run mount -o loop "$root/data.ext4" "$root/data"
  elif [[ $DATA_ON_LOOP != 0 ]]; then
    log "no free loop device: the data root is a plain folder (slower to remove)"
  fi
  local cmd=(dockerd --data-root "$root/data" --exec-root "$root/exec" --pidfile "$root/dockerd.pid"
    -H "unix://$root/docker.sock" --bridge=none --iptables=false --ip-masq=false --ip-forward=false
    --log-level=warn)
  printf '+ %s > %q 2>&1 &\n' "$(show "${cmd[@]}" | cut -c3-)" "$root/dockerd.log"
  [[ $DRY_RUN != 1 ]] || return 0
  "${cmd[@]}" >"$root/dockerd.log" 2>&1 &
  local pid=$! waited=0
  until "$docker" -H "$DOCKERD_HOST" version >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      die "the Docker daemon exited at start: $(tail -n 1 "$root/dockerd.log")" \
        "read $root/dockerd.log; dockerd needs root, overlayfs and cgroups (a VM or a privileged container)"
    fi
    if ((waited >= START_TIMEOUT)); then
      kill "$pid" 2>/dev/null || true
      die "the Docker daemon did not answer within ${START_TIMEOUT}s" "read $root/dockerd.log"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  log "dockerd (pid $pid) up in ${waited}s on $DOCKERD_HOST"
}

# Wait up to $2 seconds for pid $1 to exit.
wait_gone() {
  local pid=$1 left=$2
  while kill -0 "$pid" 2>/dev/null && ((left > 0)); do
    sleep 1
    left=$((left - 1))
  done
  ! kill -0 "$pid" 2>/dev/null
}

stop() {
  local root=$1 pid pidfile
  for pidfile in "$root/dockerd.pid" "$root/exec/containerd/containerd.pid"; do
    if [[ $DRY_RUN == 1 ]]; then
      # shellcheck disable=SC2016 # the command is printed, not run
      printf '+ kill -TERM "$(cat %q)"\n' "$pidfile"
      continue
    fi
    [[ -s $pidfile ]] || continue
    pid=$(cat "$pidfile")
    run kill -TERM "$pid" || true
    if ! wait_gone "$pid" 30; then
      log "pid $pid ignored SIGTERM for 30s; killing it"
      run kill -KILL "$pid" || true
      wait_gone "$pid" 10 || true
    fi
  done
  # A daemon that was killed can leave overlay mounts behind, and rm cannot remove a mount point. The loop-mounted
  # data root (innermost last) goes the same way; its loop device is freed on unmount.
  if [[ $DRY_RUN == 1 ]]; then
    run umount "$root/data"
  else
    local mnt
    while read -r mnt; do
      run umount -l "$mnt" || true
    done < <(awk -v r="$root/" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r)
  fi
  run rm -rf "$root"
}

main() {
  while [[ ${1:-} == --* ]]; do
    case $1 in
      --dry-run) DRY_RUN=1 ;;
      *) die "unknown option $1" "use --dry-run, then start ROOT or stop ROOT" ;;
    esac
    shift
  done
  local action=${1:-} root=${2:-}
  [[ -n $root ]] || die "missing ROOT" "scripts/dockerd.sh start|stop /tmp/some-folder"
  case $action in
    start)
      start "$root"
      printf 'export DOCKER_HOST=%s\n' "$DOCKERD_HOST"
      ;;
    stop) stop "$root" ;;
    *) die "unknown action '$action'" "scripts/dockerd.sh start|stop ROOT" ;;
  esac
}

# Sourced by images-test.sh for its functions; run directly as a command.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  main "$@"
fi
