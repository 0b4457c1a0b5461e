"""The kustomize tree: every overlay renders and validates (built-ins strictly, custom resources against
the CRDs), keeps every pod hardened, carries the image names skaffold rewrites, matches the builders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from cifarflow.k8s import generate

from .conftest import OVERLAYS, REPO
from .test_builders import crd_validator

Doc = dict[str, Any]
# The oldest Kubernetes the operators support and a current one.
K8S_VERSIONS = ("1.30.0", "1.34.0")
CUSTOM = {
    "SparkApplication": "sparkoperator.k8s.io_sparkapplications.yaml",
    "TFJob": "kubeflow.org_tfjobs.yaml",
}


def pod_specs(doc: Doc) -> list[tuple[str, Doc]]:
    """(where, pod spec) for every workload kind in a manifest."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [(f"{kind}/{doc['metadata']['name']}", spec["template"]["spec"])]
    if kind == "TFJob":
        return [(f"TFJob/{r}", v["template"]["spec"]) for r, v in spec["tfReplicaSpecs"].items()]
    return []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_deployment(rendered: dict[str, list[Doc]], overlay: str) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered[overlay]}
    expected = {
        ("Namespace", "cifarflow"),
        ("ServiceAccount", "cifarflow-pipeline-runner"),
        ("ServiceAccount", "cifarflow-spark-driver"),
        ("ServiceAccount", "cifarflow-spark-executor"),
        ("ServiceAccount", "cifarflow-trainer"),
        ("Role", "cifarflow-launcher"),
        ("Role", "cifarflow-spark-driver"),
        ("NetworkPolicy", "default-deny"),
        ("ConfigMap", "cifarflow-defaults"),
        ("SparkApplication", "cifarflow-preprocess"),
        ("TFJob", "cifarflow-train"),
        ("Job", "cifarflow-pipeline-submit"),
    }
    assert expected <= kinds
    assert not {k for k, _ in kinds} & {"ClusterRole", "ClusterRoleBinding", "Secret"}
    # kustomize's local-only config (gke-settings) never reaches the cluster.
    assert ("ConfigMap", "gke-settings") not in kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_built_in_objects_validate_strictly(
    rendered: dict[str, list[Doc]], overlay: str, version: str
) -> None:
    for doc in rendered[overlay]:
        if doc["kind"] in CUSTOM:
            continue
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_against_the_crds(rendered: dict[str, list[Doc]], overlay: str) -> None:
    found = [d for d in rendered[overlay] if d["kind"] in CUSTOM]
    assert len(found) == 2
    for doc in found:
        crd_validator(CUSTOM[doc["kind"]]).validate(doc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_non_root_read_only_and_bounded(rendered: dict[str, list[Doc]], overlay: str) -> None:
    checked = 0
    for doc in rendered[overlay]:
        for where, pod in pod_specs(doc):
            assert pod["securityContext"]["runAsNonRoot"], where
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False, where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
                assert {"cpu", "memory"} <= set(c["resources"]["limits"]), where
                assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), where
            checked += 1
        if doc["kind"] == "SparkApplication":
            for role in ("driver", "executor"):
                assert doc["spec"][role]["securityContext"]["readOnlyRootFilesystem"]
                assert doc["spec"][role]["podSecurityContext"]["runAsNonRoot"]
    assert checked >= 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_skaffold_builds_is_referenced(rendered: dict[str, list[Doc]], overlay: str) -> None:
    by_kind = {d["kind"]: d for d in rendered[overlay] if d["kind"] in CUSTOM}
    assert by_kind["SparkApplication"]["spec"]["image"] == "cifarflow-spark"
    worker = by_kind["TFJob"]["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert worker["image"] == "cifarflow-trainer"
    jobs = [c["image"] for d in rendered[overlay] for _, p in pod_specs(d) for c in p["containers"]]
    assert "cifarflow-pipeline" in jobs


def test_the_one_shot_jobs_are_what_the_builders_produce() -> None:
    folder = REPO / "k8s" / "base" / "jobs"
    assert generate.drift(folder) == [], "run `cifarflow k8s generate` and commit k8s/base/jobs"


def test_drift_is_detected(tmp_path: Path) -> None:
    generate.write(tmp_path)
    assert generate.drift(tmp_path) == []
    (tmp_path / "train.yaml").write_text((tmp_path / "train.yaml").read_text().replace("ExitCode", "Never"))
    assert generate.drift(tmp_path) == ["train.yaml"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_denies_by_default(rendered: dict[str, list[Doc]], overlay: str) -> None:
    deny = next(
        d
        for d in rendered[overlay]
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "default-deny"
    )
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    ns = next(d for d in rendered[overlay] if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_minikube_keeps_credentials_out_of_the_manifests(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["minikube"]
    text = repr(docs)
    assert "AWS_SECRET_ACCESS_KEY" not in text  # the Secret is made in the cluster, by the bootstrap Job
    creds = next(
        d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "cifarflow-s3-credentials"
    )
    assert creds["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["k8s", "ensure-credentials"]
    store = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "seaweedfs")
    assert store["spec"]["template"]["spec"]["containers"][0]["image"] == "chrislusf/seaweedfs:3.85"


def test_gke_uses_workload_identity_and_gpu_nodes(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["gke"]
    for sa in (d for d in docs if d["kind"] == "ServiceAccount"):
        assert sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
            ".iam.gserviceaccount.com"
        )
    defaults = next(d for d in docs if d["metadata"]["name"] == "cifarflow-defaults")["data"]
    assert defaults["CIFARFLOW_WORKDIR"].startswith("gs://")
    assert (
        defaults["CIFARFLOW_K8S_STORAGE__CREDENTIALS_SECRET"] == "null" and "AWS_ENDPOINT_URL" not in defaults
    )
    oneshot = next(d for d in docs if d["metadata"]["name"] == "cifarflow-oneshot")["data"]
    assert all(v.startswith("gs://my-cifarflow-bucket/") for v in oneshot.values())
    tf = next(d for d in docs if d["kind"] == "TFJob")["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    assert tf["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert tf["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "cloud.google.com/gke-accelerator" in tf["nodeSelector"]
