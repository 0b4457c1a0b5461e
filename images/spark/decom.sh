#!/usr/bin/env bash
# The preStop hook Spark puts on executor pods when spark.decommission.enabled is set (Spark looks for it at
# /opt/decom.sh): ask the executor JVM to decommission, i.e. take no new tasks and hand its shuffle and cached
# blocks to other executors, then wait for it to exit. The kubelet's grace period bounds the wait.
set -uo pipefail

executor_pid() {
  local dir
  for dir in /proc/[0-9]*; do
    if tr '\0' ' ' <"$dir/cmdline" 2>/dev/null | grep -q KubernetesExecutorBackend; then
      printf '%s\n' "${dir#/proc/}"
      return 0
    fi
  done
  return 1
}

# Running, not exited; a zombie has exited (tini reaps it soon).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

if ! pid=$(executor_pid); then
  echo "decom: no executor JVM in this container; nothing to decommission" >&2
  exit 0
fi
echo "decom: asking executor JVM (pid $pid) to decommission (SIGPWR)" >&2
kill -s PWR "$pid"
while alive "$pid"; do
  sleep 1
done
echo "decom: executor exited" >&2
