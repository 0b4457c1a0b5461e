"""The fake API server answers as kube-apiserver does where cifarflow could tell the difference (issue 13):
each behaviour once over raw HTTP, and where the launcher depends on it, through the launcher."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from cifarflow.errors import JobError
from cifarflow.k8s import launcher, names
from cifarflow.k8s.client import TFJOB

from . import scenarios as sc
from .conftest import FAST, Api, needs_crds

TFJOBS = "/apis/kubeflow.org/v1/namespaces/{ns}/tfjobs"


def call(
    api: Api, method: str, path: str, body: Any = None, token: str = "admin-token"
) -> tuple[int, Any, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(api.server.url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def tfjob(name: str = "cifarflow-train-x", **spec_extra: Any) -> dict[str, Any]:
    body = launcher.train_job(FAST, "x", data="s3://b/ds", out="s3://b/m").body
    body["metadata"]["name"] = name
    body["spec"].update(spec_extra)
    return body


@pytest.fixture(autouse=True)
def _crds() -> None:
    needs_crds()


def test_a_create_in_a_missing_namespace_is_a_404_naming_namespaces(api: Api) -> None:
    code, _, text = call(api, "POST", TFJOBS.format(ns="nope"), tfjob())
    status = json.loads(text)
    assert code == 404 and status["message"] == 'namespaces "nope" not found'
    assert status["details"] == {"name": "nope", "kind": "namespaces"}
    with pytest.raises(JobError) as err:
        launcher.launch_train(FAST, "x", data="s3://b/ds", out="s3://b/m", kube=api.kube(namespace="nope"))
    assert err.value.problem == "namespace nope does not exist"
    assert "CIFARFLOW_K8S_NAMESPACE" in (err.value.fix or "")


def test_unknown_fields_are_pruned_with_a_warning_and_refused_when_strict(api: Api) -> None:
    code, headers, text = call(api, "POST", TFJOBS.format(ns="cifarflow"), tfjob(x=1, runPolicy={"typo": 2}))
    assert code == 201
    assert headers.get_all("Warning") == [
        '299 - "unknown field \\"spec.runPolicy.typo\\""',
        '299 - "unknown field \\"spec.x\\""',
    ]
    stored = json.loads(text)["spec"]
    assert "x" not in stored and "typo" not in stored["runPolicy"]
    code, _, text = call(
        api,
        "POST",
        TFJOBS.format(ns="cifarflow") + "?fieldValidation=Strict",
        tfjob("cifarflow-train-y", x=1),
    )
    assert code == 400
    assert json.loads(text)["message"] == (
        'TFJob in version "v1" cannot be handled as a TFJob: strict decoding error: unknown field "spec.x"'
    )


def test_the_launcher_sends_strict_so_a_builder_typo_is_an_error(api: Api) -> None:
    job = launcher.train_job(FAST, "z", data="s3://b/ds", out="s3://b/m")
    job.body["spec"]["runPolicy"]["backofLimit"] = 3  # a typo the real server would silently drop
    with pytest.raises(JobError) as err:
        api.kube().create(TFJOB, job.body)
    assert 'strict decoding error: unknown field "spec.runPolicy.backofLimit"' in err.value.problem
    assert not api.cluster.objects


def test_metadata_name_must_be_rfc_1123(api: Api) -> None:
    code, _, text = call(api, "POST", TFJOBS.format(ns="cifarflow"), tfjob("Train_Job"))
    status = json.loads(text)
    assert code == 422 and status["reason"] == "Invalid"
    assert status["message"].startswith(
        'TFJob.kubeflow.org "Train_Job" is invalid: metadata.name: Invalid value'
    )
    assert "RFC 1123 subdomain" in status["message"]


def test_crd_defaults_are_applied(api: Api) -> None:
    code, _, text = call(api, "POST", TFJOBS.format(ns="cifarflow"), tfjob())
    assert code == 201
    assert json.loads(text)["spec"]["runPolicy"]["suspend"] is False


def test_a_422_lists_every_error(api: Api) -> None:
    body = tfjob()
    body["spec"]["runPolicy"]["backoffLimit"] = "three"
    body["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = "two"
    code, _, text = call(api, "POST", TFJOBS.format(ns="cifarflow"), body)
    status = json.loads(text)
    assert code == 422
    fields = [c["field"] for c in status["details"]["causes"]]
    assert fields == ["spec.runPolicy.backoffLimit", "spec.tfReplicaSpecs.Worker.replicas"]
    assert status["message"].startswith('TFJob.kubeflow.org "cifarflow-train-x" is invalid: [spec.runPolicy')


def test_a_status_the_real_server_refuses_is_not_stored(api: Api) -> None:
    name = names.job_name("preprocess", "s")
    key = ("sparkoperator.k8s.io", "sparkapplications", "cifarflow", name)
    api.cluster.put(key, {"metadata": {"name": name}, "spec": {}})
    assert api.cluster.update_status(key, {"applicationState": {"state": "SUBMITTED"}}) is False
    assert "status: Required value: 'driverInfo' is a required property" in api.cluster.rejected_status[0]
    assert "status" not in api.cluster.objects[key]
    api.cluster.rejected_status.clear()
    assert api.cluster.update_status(key, {"applicationState": {"state": "SUBMITTED"}, "driverInfo": {}})


def test_an_api_group_nobody_serves_is_a_plain_text_404(api: Api) -> None:
    api.cluster.crds = {k: v for k, v in api.cluster.crds.items() if k[0] != "trainer.kubeflow.org"}
    code, headers, text = call(
        api, "GET", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/cifarflow/trainjobs/x"
    )
    assert (code, text, headers["Content-Type"]) == (404, "404 page not found\n", "text/plain")
    with pytest.raises(JobError) as err:
        launcher.launch_train(
            FAST.model_copy(update={"trainer": "trainjob"}),
            "x",
            data="s3://b/ds",
            out="s3://b/m",
            kube=api.kube(),
        )
    assert (
        err.value.problem
        == "the TrainJob resource (trainer.kubeflow.org/v1alpha1) is not installed in the cluster"
    )
    assert "Kubeflow Trainer v2.3.0" in (err.value.fix or "")


def test_a_403_names_the_resource_as_plural_dot_group(api: Api) -> None:
    api.cluster.use_rbac([], {"nobody": "system:serviceaccount:cifarflow:nobody"})
    code, _, text = call(api, "GET", TFJOBS.format(ns="cifarflow") + "/j", token="nobody")
    assert code == 403
    assert json.loads(text)["message"] == (
        'tfjobs.kubeflow.org "j" is forbidden: User "system:serviceaccount:cifarflow:nobody" cannot get resource '
        '"tfjobs" in API group "kubeflow.org" in the namespace "cifarflow"'
    )
    code, _, text = call(api, "POST", TFJOBS.format(ns="cifarflow"), tfjob(), token="nobody")
    assert json.loads(text)["message"].startswith('tfjobs.kubeflow.org is forbidden: User "system:')


def test_a_pod_that_has_not_started_has_an_empty_log(api: Api) -> None:
    pod = sc.pod("p-0", {}, "node", "img", phase="Pending", state=sc.waiting("ContainerCreating", ""))
    api.cluster.set_pod("cifarflow", pod, "owner")
    assert call(api, "GET", "/api/v1/namespaces/cifarflow/pods/p-0/log")[::2] == (200, "")
    assert call(api, "GET", "/api/v1/namespaces/cifarflow/pods/gone/log")[0] == 404
