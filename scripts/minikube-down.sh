#!/usr/bin/env bash
# Take down what `make minikube-up` made (`make minikube-down`):
#   default          delete the minikube cluster: cifarflow, KFP, the operators, the bucket and the built images
#   --keep-cluster   remove only cifarflow's objects (skaffold delete); KFP and the operators stay for the next run
#   --stop           stop the cluster's VM/container; `make minikube-up` resumes it with everything in place
#
#   scripts/minikube-down.sh [--dry-run] [--keep-cluster | --stop]
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROFILE=minikube
MODE=delete

while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --keep-cluster) MODE=keep ;;
    --stop) MODE=stop ;;
    -h | --help)
      sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *) die "unknown option $1" "see scripts/minikube-down.sh --help" ;;
  esac
  shift
done

need minikube "https://minikube.sigs.k8s.io/docs/start/"
cd "$(repo_root)"
case $MODE in
  keep)
    need skaffold "https://skaffold.dev/docs/install/ (v2.x)"
    run skaffold delete --profile minikube --kube-context "$PROFILE"
    ;;
  stop) run minikube stop --profile "$PROFILE" ;;
  delete) run minikube delete --profile "$PROFILE" ;;
esac
