"""Least privilege, checked both ways: the Roles allow every call cifarflow makes, and nothing else.

The launcher's and the bootstrap's calls are recorded by the fake API server while it enforces the rendered
Roles (a missing grant fails with 403); the recorded set must then equal the granted set. The Spark driver's
calls are Spark's own, listed with their origin in ``cifarflow.k8s.rbac``.
"""

from __future__ import annotations

from typing import Any

import pytest

from cifarflow.k8s import bootstrap, deploy, launcher, names, rbac
from cifarflow.k8s.client import SPARK_APPLICATION, TFJOB
from cifarflow.k8s.generate import oneshot_manifests
from cifarflow.k8s.inferenceservice import ServingSettings
from cifarflow.k8s.launcher import K8sJobError
from cifarflow.k8s.settings import WatchSettings
from serve.isvc_scenarios import ready as isvc_ready

from . import scenarios as sc
from .conftest import FAST, Api

Doc = dict[str, Any]
RUNNER = "system:serviceaccount:kubeflow:cifarflow-pipeline-runner"
BOOTSTRAP = "system:serviceaccount:cifarflow:cifarflow-bootstrap"


def granted(docs: list[Doc], role: str, namespace: str) -> set[tuple[str, str, str]]:
    doc = next(
        d
        for d in docs
        if d["kind"] == "Role" and d["metadata"]["name"] == role and d["metadata"]["namespace"] == namespace
    )
    return {
        (v, g, r)
        for rule in doc["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def used(api: Api, subject: str) -> set[tuple[str, str, str]]:
    return {(r.verb, r.group, r.resource) for r in api.cluster.requests if r.subject == subject}


def test_the_launcher_role_is_exactly_what_the_launchers_use(
    api: Api, rendered: dict[str, list[Doc]]
) -> None:
    docs = rendered["minikube"]
    api.cluster.use_rbac(docs, {"runner": RUNNER})
    kube = api.kube("runner")
    pre = lambda run, s=FAST: launcher.launch_preprocess(s, run, raw="s3://b/raw", out="s3://b/ds", kube=kube)  # noqa: E731
    fit = lambda run, s=FAST: launcher.launch_train(s, run, data="s3://b/ds/x", out="s3://b/m", kube=kube)  # noqa: E731

    # success with results read from the log; a re-attach; a reuse
    api.cluster.scenario(
        names.job_name("preprocess", "a"), sc.spark_success(names.job_name("preprocess", "a"), "")
    )
    pre("a")
    pre("a")
    # a failure (driver log read), then the retry that deletes it and submits again
    name = names.job_name("train", "b")
    api.cluster.scenario(name, sc.tf_failed(name, "error: boom\n"))
    with pytest.raises(K8sJobError):
        fit("b")
    api.cluster.scenario(name, sc.tf_success(name, ""))
    fit("b")
    # a timeout that deletes the job
    name = names.job_name("preprocess", "c")
    api.cluster.scenario(name, sc.spark_forever(name))
    with pytest.raises(K8sJobError):
        pre("c", FAST.model_copy(update={"watch": WatchSettings(timeout_s=1, window_s=0.5)}))
    # images read from the deployed one-shot jobs
    for kind, doc in zip((SPARK_APPLICATION, TFJOB), oneshot_manifests().values(), strict=True):
        api.kube().create(kind, doc)
    api.cluster.scenario(names.job_name("train", "d"), sc.tf_success(names.job_name("train", "d"), ""))
    fit("d", FAST.model_copy(update={"images_from_cluster": True}))
    # Trainer v2: a failed TrainJob (leader's log read), then the retry that deletes it and submits again
    v2 = FAST.model_copy(update={"trainer": "trainjob"})
    name = names.job_name("train", "e")
    api.cluster.scenario(name, sc.tj_failed(name, "error: boom\n"))
    with pytest.raises(K8sJobError):
        fit("e", v2)
    api.cluster.scenario(name, sc.tj_success(name, ""))
    fit("e", v2)

    # cifarflow deploy: a create, then an update (KServe played by tests/serve/isvc_scenarios.py)
    api.cluster.scenario("cifarflow", isvc_ready("cifarflow", delay=0.05))
    for model in ("s3://b/m", "s3://b/m2"):
        deploy.deploy(model, settings=FAST, serving=ServingSettings(), kube=kube)

    assert not [r for r in api.cluster.requests if r.subject == RUNNER and r.namespace != "cifarflow"]
    assert used(api, RUNNER) == granted(docs, "cifarflow-launcher", "cifarflow")


def test_the_spark_driver_role_is_exactly_sparks_calls(rendered: dict[str, list[Doc]]) -> None:
    for docs in rendered.values():
        assert granted(docs, "cifarflow-spark-driver", "cifarflow") == rbac.triples(rbac.SPARK_DRIVER_CALLS)


def test_the_bootstrap_role_is_exactly_what_ensure_credentials_uses(
    api: Api, rendered: dict[str, list[Doc]]
) -> None:
    docs = rendered["minikube"]
    api.cluster.use_rbac(docs, {"bootstrap": BOOTSTRAP})
    kube = api.kube("bootstrap")
    assert bootstrap.ensure_credentials(kube, "cifarflow-s3", ["kubeflow"]) is True
    assert (
        bootstrap.ensure_credentials(kube, "cifarflow-s3", ["kubeflow"]) is False
    )  # a re-deploy changes nothing
    first, copy = (
        api.cluster.secrets[("cifarflow", "cifarflow-s3")],
        api.cluster.secrets[("kubeflow", "cifarflow-s3")],
    )
    assert first["stringData"] == copy["stringData"]
    for ns in ("cifarflow", "kubeflow"):
        assert {(v, g, r) for v, g, r in used(api, BOOTSTRAP)} == granted(docs, "cifarflow-bootstrap", ns)
        names_read = {r.name for r in api.cluster.requests if r.verb == "get" and r.namespace == ns}
        assert names_read == {"cifarflow-s3"}


def test_the_bootstrap_cannot_read_other_secrets(api: Api, rendered: dict[str, list[Doc]]) -> None:
    api.cluster.use_rbac(rendered["minikube"], {"bootstrap": BOOTSTRAP})
    with pytest.raises(Exception, match="forbidden: cannot get secrets"):
        api.kube("bootstrap").read_secret("mlpipeline-minio-artifact")


@pytest.mark.parametrize("overlay", ["minikube", "gke"])
def test_identities_that_never_call_the_api_hold_no_token_and_no_role(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    bound = {s["name"] for d in docs if d["kind"] == "RoleBinding" for s in d["subjects"]}
    for name in ("cifarflow-spark-executor", "cifarflow-trainer"):
        sa = next(d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == name)
        assert sa["automountServiceAccountToken"] is False
        assert name not in bound
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for d in docs:
        for rule in d.get("rules", []):
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], d["metadata"]["name"]
