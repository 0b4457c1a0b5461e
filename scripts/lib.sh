# shellcheck shell=bash
# Shared by cifarflow's scripts: logging, one-line errors and a --dry-run that prints every command.
# Source it after `set -euo pipefail`; scripts set DRY_RUN=1 when given --dry-run.

DRY_RUN=${DRY_RUN:-0}

# Progress goes to stderr so stdout carries only the commands (dry run) or results.
log() { printf '==> %s\n' "$*" >&2; }

# The project's error format: one line naming the problem and the fix, exit code 2.
die() {
  local problem=$1 fix=$2
  printf 'error: %s (fix: %s)\n' "$problem" "$fix" >&2
  exit 2
}

# Print a command the way a shell would read it back.
show() {
  local arg out=() quoted
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+=("$arg")
    else
      printf -v quoted '%q' "$arg"
      out+=("$quoted")
    fi
  done
  printf '+ %s\n' "${out[*]}"
}

# Run a command, printing it first; under --dry-run only print it.
run() {
  show "$@"
  [[ $DRY_RUN == 1 ]] || "$@"
}

# Same for a pipeline or redirection, given as one shell string.
run_sh() {
  printf '+ %s\n' "$1"
  [[ $DRY_RUN == 1 ]] || bash -o pipefail -c "$1"
}

# Fail early, with the install hint, when a tool is missing (a dry run only reports it).
need() {
  local tool=$1 fix=$2
  if ! command -v "$tool" >/dev/null 2>&1; then
    if [[ $DRY_RUN == 1 ]]; then
      log "note: $tool is not installed (a real run needs it: $fix)"
    else
      die "$tool is not installed" "$fix"
    fi
  fi
}

# Seconds since the epoch, for the timings the scripts report.
now() { date +%s; }

repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd; }
