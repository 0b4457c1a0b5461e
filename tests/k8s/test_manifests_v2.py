"""``--trainer v2``: each overlay plus the trainer-v2 component renders a TrainJob and the TensorFlow
ClusterTrainingRuntime that validate against the Trainer v2.3.0 CRDs, with restricted pods, and no TFJob."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from cifarflow.k8s import generate

from .conftest import OVERLAYS, REPO, crd_errors, kustomize

Doc = dict[str, Any]
# Trainer v2.3.0 needs Kubernetes >= 1.31 (docs/kubernetes.md); built-ins are checked on that and a current one.
K8S_VERSIONS = ("1.31.0", "1.34.0")
CUSTOM = {
    "SparkApplication": "sparkapplications",
    "TrainJob": "trainjobs",
    "ClusterTrainingRuntime": "clustertrainingruntimes",
}


@pytest.fixture(scope="session")
def rendered_v2() -> dict[str, list[Doc]]:
    return {name: kustomize(REPO / "k8s" / "trainer-v2" / name) for name in OVERLAYS}


def _runtime_pod(docs: list[Doc]) -> Doc:
    runtime = next(d for d in docs if d["kind"] == "ClusterTrainingRuntime")
    (rjob,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    return dict(rjob["template"]["spec"]["template"]["spec"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_v2_renders_a_trainjob_and_the_runtime_instead_of_the_tfjob(
    rendered_v2: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered_v2[overlay]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("TrainJob", "cifarflow-train"), ("ClusterTrainingRuntime", "cifarflow-tensorflow")} <= kinds
    assert "TFJob" not in {k for k, _ in kinds}
    defaults = next(d for d in docs if d["metadata"]["name"] == "cifarflow-defaults")["data"]
    assert defaults["CIFARFLOW_K8S_TRAINER"] == "trainjob"
    job = next(d for d in docs if d["kind"] == "TrainJob")
    assert job["spec"]["suspend"] is True and job["spec"]["runtimeRef"]["name"] == "cifarflow-tensorflow"
    assert job["spec"]["trainer"]["image"] == "cifarflow-trainer"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_v2_custom_resources_validate_against_the_v2_3_0_crds(
    rendered_v2: dict[str, list[Doc]], overlay: str
) -> None:
    found = [d for d in rendered_v2[overlay] if d["kind"] in CUSTOM]
    assert len(found) == 3
    for doc in found:
        assert crd_errors(CUSTOM[doc["kind"]], doc) == [], doc["kind"]


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_v2_built_in_objects_validate_strictly(
    rendered_v2: dict[str, list[Doc]], overlay: str, version: str
) -> None:
    for doc in rendered_v2[overlay]:
        if doc["kind"] not in CUSTOM:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_runtimes_pods_are_restricted(rendered_v2: dict[str, list[Doc]], overlay: str) -> None:
    pod = _runtime_pod(rendered_v2[overlay])
    # A valid Pod spec for the API server (kubernetes-validate knows Pod, not the runtime's embedding).
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod}, "1.31.0", strict=True
    )
    assert pod["securityContext"]["runAsNonRoot"] and pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "cifarflow-trainer"
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])


def test_minikube_v2_trains_on_one_node_and_gke_v2_on_gpus(rendered_v2: dict[str, list[Doc]]) -> None:
    mini = next(d for d in rendered_v2["minikube"] if d["kind"] == "TrainJob")["spec"]["trainer"]
    assert mini["numNodes"] == 1 and mini["env"][0] == {"name": "CIFARFLOW_TF_NUM_WORKERS", "value": "1"}
    gke = next(d for d in rendered_v2["gke"] if d["kind"] == "TrainJob")["spec"]
    assert gke["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "1"
    (patch,) = gke["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = rjob["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}


def test_the_component_is_what_the_builders_produce() -> None:
    folder = REPO / "k8s" / "components" / "trainer-v2"
    assert generate.drift(folder, generate.trainer_v2_manifests()) == [], "run `cifarflow k8s generate`"
