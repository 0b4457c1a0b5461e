#!/usr/bin/env bash
# Spark's Kubernetes container contract, as the Spark Operator's spark-submit starts this image:
#   driver ARGS...  the driver pod: spark-submit in client mode (the pod *is* the cluster-mode driver), bound to the
#                   pod IP that Kubernetes puts in SPARK_DRIVER_BIND_ADDRESS.
#   executor        an executor pod: the JVM backend, configured entirely by SPARK_* variables the driver sets.
#   anything else   run as given (`cifarflow ...`, `spark-submit --version`, a shell).
# tini (the image's ENTRYPOINT) runs this as its child, so Python workers are reaped and SIGTERM reaches the JVM.
set -euo pipefail

: "${SPARK_HOME:?SPARK_HOME must be set (the image sets /opt/spark)}"

fail() {
  printf 'error: %s (fix: %s)\n' "$1" "$2" >&2
  exit 2
}

# The JVM classpath as Spark's own images build it: configuration folders first, then Spark's jars.
classpath() {
  local cp="${SPARK_CONF_DIR:-$SPARK_HOME/conf}"
  [[ -z ${HADOOP_CONF_DIR:-} ]] || cp="$HADOOP_CONF_DIR:$cp"
  [[ -z ${SPARK_CLASSPATH:-} ]] || cp+=":$SPARK_CLASSPATH"
  cp+=":$SPARK_HOME/jars/*"
  [[ -z ${SPARK_EXTRA_CLASSPATH:-} ]] || cp+=":$SPARK_EXTRA_CLASSPATH"
  [[ -z ${SPARK_DIST_CLASSPATH:-} ]] || cp+=":$SPARK_DIST_CLASSPATH"
  printf '%s' "$cp"
}

driver() {
  local cmd=("$SPARK_HOME/bin/spark-submit" --deploy-mode client)
  if [[ -n ${SPARK_DRIVER_BIND_ADDRESS:-} ]]; then
    cmd+=(--conf "spark.driver.bindAddress=$SPARK_DRIVER_BIND_ADDRESS")
  fi
  cmd+=("$@")
  printf 'cifarflow-spark: driver: %s\n' "${cmd[*]}" >&2
  exec "${cmd[@]}"
}

executor() {
  local required=(SPARK_DRIVER_URL SPARK_EXECUTOR_ID SPARK_EXECUTOR_CORES SPARK_EXECUTOR_MEMORY SPARK_APPLICATION_ID
    SPARK_EXECUTOR_POD_IP SPARK_EXECUTOR_POD_NAME SPARK_RESOURCE_PROFILE_ID)
  local missing=() name
  for name in "${required[@]}"; do
    [[ -n ${!name:-} ]] || missing+=("$name")
  done
  if ((${#missing[@]})); then
    fail "executor mode is missing ${missing[*]}" \
      "start executors through spark-submit on Kubernetes (the driver sets these), not by hand"
  fi
  # The driver passes JVM options as SPARK_JAVA_OPT_0, _1, ... ; their order matters (later ones win).
  local java_opts=() var
  while read -r var; do
    java_opts+=("${!var}")
  done < <(compgen -v SPARK_JAVA_OPT_ | sort -t_ -k4 -n)
  local cmd=("${JAVA_HOME:?JAVA_HOME must be set}/bin/java" "${java_opts[@]}"
    "-Xms$SPARK_EXECUTOR_MEMORY" "-Xmx$SPARK_EXECUTOR_MEMORY"
    -cp "$(classpath)"
    org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend
    --driver-url "$SPARK_DRIVER_URL"
    --executor-id "$SPARK_EXECUTOR_ID"
    --cores "$SPARK_EXECUTOR_CORES"
    --app-id "$SPARK_APPLICATION_ID"
    --hostname "$SPARK_EXECUTOR_POD_IP"
    --resourceProfileId "$SPARK_RESOURCE_PROFILE_ID"
    --podName "$SPARK_EXECUTOR_POD_NAME")
  printf 'cifarflow-spark: executor %s: %s\n' "$SPARK_EXECUTOR_ID" "${cmd[*]}" >&2
  exec "${cmd[@]}"
}

case "${1:-}" in
  driver)
    shift
    driver "$@"
    ;;
  executor)
    shift
    executor
    ;;
  "")
    fail "no command given" "pass driver ARGS, executor, or a command such as cifarflow --help"
    ;;
  *)
    exec "$@"
    ;;
esac
