#!/usr/bin/env bash
# cifarflow on a local minikube, end to end (`make minikube-up`):
#   1. start minikube (CPUs, memory, disk; the GPUs when the host has NVIDIA's driver and toolkit)
#   2. install KFP standalone, the Training Operator and the Spark Operator at pinned versions
#      (k8s/install/install-operators.sh)
#   3. skaffold run -p minikube: build the three images inside minikube's Docker and deploy k8s/overlays/minikube
#   4. submit the pipeline to KFP with the images skaffold just built, and print how to open the KFP UI
#
#   scripts/minikube-up.sh [--dry-run] [--cpus N] [--memory SIZE] [--disk SIZE] [--gpus auto|all|none]
#                          [--no-submit] [--param KEY=VALUE ...]
#
# docs/minikube.md walks through it step by step, with the output each step prints.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROOT=$(repo_root)
PROFILE=minikube # skaffold's minikube profile activates on this kube-context name
CPUS=6
MEMORY=12g
DISK=40g
GPUS=auto
# >= 1.31: Kubeflow Trainer v2's runtime CRDs (--trainer v2) use CEL rules older API servers refuse.
KUBERNETES_VERSION=${KUBERNETES_VERSION:-v1.32.5}
SUBMIT=1
UI_PORT=${UI_PORT:-8080}
CIFARFLOW=${CIFARFLOW:-$ROOT/.venv/bin/cifarflow}
# Sized for one small cluster: one Spark executor, one TFJob worker, a few epochs on the CPU.
PARAMS=(epochs=3 spark_executors=1 train_workers=1)
FORWARD_PID=""

usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

gpus_wanted() {
  case $GPUS in
    all) return 0 ;;
    none) return 1 ;;
    auto) command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 ;;
  esac
}

start_cluster() {
  local args=(start --profile "$PROFILE" --cpus "$CPUS" --memory "$MEMORY" --disk-size "$DISK"
    --kubernetes-version "$KUBERNETES_VERSION")
  if gpus_wanted; then
    # minikube passes GPUs through with the docker driver and NVIDIA's container toolkit.
    args+=(--driver docker --container-runtime docker --gpus all)
    PARAMS+=(gpus_per_worker=1)
  fi
  run minikube "${args[@]}"
}

deploy() {
  local profiles=minikube
  gpus_wanted && profiles=minikube,gpu
  # No skaffold status check: the one-shot jobs are deployed suspended and would never "finish".
  run skaffold run --profile "$profiles" --kube-context "$PROFILE" --status-check=false
  run kubectl --context "$PROFILE" -n cifarflow rollout status deployment/seaweedfs --timeout=5m
  run kubectl --context "$PROFILE" -n cifarflow wait --for=condition=complete job/cifarflow-s3-bucket --timeout=10m
}

stop_forward() {
  if [[ -n $FORWARD_PID ]]; then
    kill "$FORWARD_PID" 2>/dev/null || true
  fi
}

submit() {
  local image
  # The pipeline's pods must run the image skaffold built; the deployed submit Job carries its tag.
  if [[ $DRY_RUN == 1 ]]; then
    image='<image of job/cifarflow-pipeline-submit>'
    show kubectl --context "$PROFILE" -n kubeflow get job cifarflow-pipeline-submit \
      -o 'jsonpath={.spec.template.spec.containers[0].image}'
  else
    image=$(kubectl --context "$PROFILE" -n kubeflow get job cifarflow-pipeline-submit \
      -o 'jsonpath={.spec.template.spec.containers[0].image}')
  fi
  printf '%s &\n' "$(show kubectl --context "$PROFILE" -n kubeflow port-forward svc/ml-pipeline-ui "$UI_PORT:80")"
  if [[ $DRY_RUN != 1 ]]; then
    kubectl --context "$PROFILE" -n kubeflow port-forward svc/ml-pipeline-ui "$UI_PORT:80" >/dev/null 2>&1 &
    FORWARD_PID=$!
    trap stop_forward EXIT
    sleep 3
  fi
  local args=(pipeline submit --host "http://localhost:$UI_PORT" --experiment cifarflow
    --param "pipeline_image=$image")
  local param
  for param in "${PARAMS[@]}"; do
    args+=(--param "$param")
  done
  run "$CIFARFLOW" "${args[@]}"
}

main() {
  while (($#)); do
    case $1 in
      --dry-run) DRY_RUN=1 ;;
      --cpus | --memory | --disk | --gpus | --param)
        [[ $# -ge 2 ]] || die "$1 needs a value" "see scripts/minikube-up.sh --help"
        case $1 in
          --cpus) CPUS=$2 ;;
          --memory) MEMORY=$2 ;;
          --disk) DISK=$2 ;;
          --gpus) GPUS=$2 ;;
          --param) PARAMS+=("$2") ;;
        esac
        shift
        ;;
      --no-submit) SUBMIT=0 ;;
      -h | --help)
        usage
        return
        ;;
      *) die "unknown option $1" "see scripts/minikube-up.sh --help" ;;
    esac
    shift
  done
  case $GPUS in auto | all | none) ;; *) die "--gpus must be auto, all or none (got '$GPUS')" "--gpus auto" ;; esac

  need minikube "https://minikube.sigs.k8s.io/docs/start/"
  need kubectl "https://kubernetes.io/docs/tasks/tools/ (or the kubectl in .venv/bin)"
  need skaffold "https://skaffold.dev/docs/install/ (v2.x)"
  need helm "https://helm.sh/docs/intro/install/ (the Spark Operator installs from its chart)"
  if [[ $SUBMIT == 1 && $DRY_RUN != 1 && ! -x $CIFARFLOW ]]; then
    die "no cifarflow CLI at $CIFARFLOW" "run make venv first, or pass --no-submit"
  fi

  cd "$ROOT"
  log "1/4 starting minikube ($CPUS CPUs, $MEMORY memory, GPUs: $GPUS)"
  start_cluster
  log "2/4 installing KFP, the Training Operator and the Spark Operator"
  local install=(k8s/install/install-operators.sh --context "$PROFILE")
  if [[ $DRY_RUN == 1 ]]; then
    # The installer has a dry run of its own: show its commands too.
    show "${install[@]}"
    "${install[@]}" --dry-run
  else
    run "${install[@]}"
  fi
  log "3/4 building the images in minikube and deploying cifarflow"
  deploy
  if [[ $SUBMIT == 1 ]]; then
    log "4/4 submitting the pipeline"
    submit
  fi
  cat <<EOF

The KFP UI:   kubectl --context $PROFILE -n kubeflow port-forward svc/ml-pipeline-ui $UI_PORT:80
              then open http://localhost:$UI_PORT (Runs, experiment "cifarflow")
The jobs:     kubectl --context $PROFILE -n cifarflow get sparkapplications,tfjobs,pods
Tear down:    make minikube-down
EOF
}

main "$@"
