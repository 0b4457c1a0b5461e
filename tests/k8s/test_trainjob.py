"""Kubeflow Trainer v2: the TrainJob launcher through the same lifecycle as the TFJob (complete, failed, deleted,
timeout, re-attach, conflict), against the fake API server, and the builders against the v2.3.0 CRDs."""

from __future__ import annotations

from typing import Any

import pytest

from cifarflow.errors import ConflictError
from cifarflow.k8s import launcher, names, trainjob
from cifarflow.k8s.client import TRAINJOB
from cifarflow.k8s.launcher import K8sJobError
from cifarflow.k8s.settings import K8sSettings, TrainSettings, WatchSettings
from cifarflow.k8s.watch import trainjob_status

from . import scenarios as sc
from .conftest import FAST, Api, crd_errors, needs_crds

V2 = FAST.model_copy(update={"trainer": "trainjob"})
RUN = "run-42"
NAME = names.job_name("train", RUN)
KEY = (TRAINJOB.group, TRAINJOB.plural, "cifarflow", NAME)


def train(api: Api, settings: K8sSettings = V2, data: str = "s3://cifarflow/work/datasets/3f2a9c") -> Any:
    return launcher.launch_train(
        settings, RUN, data=data, out="s3://cifarflow/work/models/m1", kube=api.kube()
    )


def test_a_trainjob_runs_to_completion_and_reports_the_leaders_results(api: Api) -> None:
    api.cluster.scenario(NAME, sc.tj_success(NAME, "model: s3://cifarflow/work/models/m1\n"))
    result = train(api)
    assert (result.kind, result.name, result.state) == ("TrainJob", NAME, "Complete")
    assert result.outputs == {"model": "s3://cifarflow/work/models/m1"}
    job = api.cluster.objects[KEY]
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "cifarflow-tensorflow",
    }
    assert job["spec"]["trainer"]["args"][:2] == ["--data", "s3://cifarflow/work/datasets/3f2a9c"]


def test_the_api_server_applies_the_trainjob_crds_defaults(api: Api) -> None:
    needs_crds()  # the defaults come from the CRD's schema
    api.cluster.scenario(NAME, sc.tj_success(NAME, "model: s3://cifarflow/work/models/m1\n"))
    train(api)
    assert api.cluster.objects[KEY]["spec"]["managedBy"] == "trainer.kubeflow.org/trainjob-controller"


def test_a_failed_trainjob_names_the_leaders_error_line(api: Api) -> None:
    log = "Epoch 1/3\nerror: dataset s3://x has no _manifest.json (fix: run `cifarflow preprocess` first)\n"
    api.cluster.scenario(NAME, sc.tj_failed(NAME, log))
    with pytest.raises(K8sJobError) as err:
        train(api)
    e = err.value
    assert e.reason == "failed"
    assert (
        e.problem == f"TrainJob {NAME} failed in {NAME}-node-0-0-x7k2p: dataset s3://x has no _manifest.json"
    )
    assert e.fix == "run `cifarflow preprocess` first"
    assert "Epoch 1/3" in e.logs


def test_a_trainjob_deleted_while_watched_is_reported(api: Api) -> None:
    def delete(cluster: Any, key: Any) -> None:
        cluster.remove(key)

    api.cluster.scenario(NAME, [*sc.tj_forever(NAME), (0.1, delete)])
    with pytest.raises(K8sJobError) as err:
        train(api)
    assert err.value.reason == "deleted"
    assert f"TrainJob {NAME} was deleted while cifarflow was watching it" in err.value.problem


def test_a_trainjob_past_its_timeout_is_deleted(api: Api) -> None:
    api.cluster.scenario(NAME, sc.tj_forever(NAME))
    settings = V2.model_copy(update={"watch": WatchSettings(timeout_s=1.2, window_s=0.4)})
    with pytest.raises(K8sJobError) as err:
        train(api, settings)
    assert err.value.reason == "timeout"
    assert "(last state Running)" in err.value.problem and "it was deleted" in err.value.problem
    assert KEY not in api.cluster.objects


def test_a_retried_step_reattaches_to_the_running_trainjob(api: Api) -> None:
    api.cluster.scenario(NAME, sc.tj_success(NAME, "model: s3://m\n"))
    first = launcher.train_job(
        V2, RUN, data="s3://cifarflow/work/datasets/3f2a9c", out="s3://cifarflow/work/models/m1"
    )
    api.kube().create(TRAINJOB, first.body)
    result = train(api)
    assert result.reattached and not result.reused and result.state == "Complete"
    assert len(api.cluster.created("trainjobs")) == 2 - 1  # only the first attempt's create
    again = train(api)
    assert again.reused and again.outputs == {"model": "s3://m"}


def test_the_same_run_id_with_other_inputs_is_a_conflict(api: Api) -> None:
    api.cluster.scenario(NAME, sc.tj_forever(NAME))
    other = launcher.train_job(V2, RUN, data="s3://other/ds", out="s3://cifarflow/work/models/m1")
    api.kube().create(TRAINJOB, other.body)
    with pytest.raises(ConflictError) as err:
        train(api)
    assert "was built from different inputs" in err.value.problem
    assert f"kubectl delete trainjobs {NAME} -n cifarflow" in (err.value.fix or "")


def test_a_suspended_trainjob_is_pending_until_the_timeout(api: Api) -> None:
    api.cluster.scenario(NAME, sc.tj_suspended(NAME))
    settings = V2.model_copy(update={"watch": WatchSettings(timeout_s=0.8, window_s=0.3)})
    with pytest.raises(K8sJobError) as err:
        train(api, settings)
    assert "(last state Suspended)" in err.value.problem


@pytest.mark.parametrize(
    ("status", "phase", "state"),
    [
        ({}, "pending", "NEW"),
        ({"conditions": [{"type": "Suspended", "status": "True"}]}, "pending", "Suspended"),
        ({"jobsStatus": [{"name": "node", "active": 1}]}, "running", "Running"),
        ({"conditions": [{"type": "Complete", "status": "True"}]}, "succeeded", "Complete"),
        ({"conditions": [{"type": "Failed", "status": "True", "message": "m"}]}, "failed", "Failed"),
        ({"conditions": [{"type": "Suspended", "status": "False"}]}, "pending", "NEW"),
    ],
)
def test_trainjob_states(status: dict[str, Any], phase: str, state: str) -> None:
    got = trainjob_status({"status": status})
    assert (got.phase, got.state) == (phase, state)


# -- builders ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gpus", [0, 1])
def test_the_trainjob_and_the_runtime_validate_against_the_v2_3_0_crds(gpus: int) -> None:
    needs_crds()
    settings = V2.model_copy(
        update={
            "train": TrainSettings(gpus=gpus, gpu_node_selector={"cloud.google.com/gke-accelerator": "l4"})
        }
    )
    job = launcher.train_job(settings, RUN, data="s3://b/ds", out="s3://b/m").body
    assert crd_errors("trainjobs", job) == []
    assert crd_errors("clustertrainingruntimes", trainjob.build_runtime(settings)) == []
    resources = job["spec"]["trainer"]["resourcesPerNode"]
    assert ("nvidia.com/gpu" in resources["limits"]) == bool(gpus)
    assert bool(job["spec"].get("runtimePatches")) == bool(gpus)


def test_the_runtime_is_one_replicated_job_of_restricted_indexed_pods() -> None:
    runtime = trainjob.build_runtime(K8sSettings())
    (rjob,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == "node"
    assert rjob["template"]["metadata"]["labels"] == {
        "trainer.kubeflow.org/trainjob-ancestor-step": "trainer"
    }
    job = rjob["template"]["spec"]
    assert job["completionMode"] == "Indexed"
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "node"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    sc_ = container["securityContext"]
    assert sc_["allowPrivilegeEscalation"] is False and sc_["capabilities"] == {"drop": ["ALL"]}
    assert sc_["readOnlyRootFilesystem"] is True and sc_["seccompProfile"] == {"type": "RuntimeDefault"}
    # Retries: signals (128+) only; 1-127 fail the TrainJob at once, like the TFJob's ExitCode policy.
    rule = job["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["operator"] == "NotIn"
    assert 138 in rule["onExitCodes"]["values"] and 2 not in rule["onExitCodes"]["values"]
    env = {e["name"] for e in container["env"]}
    assert {"JOBSET_NAME", "JOBSET_REPLICATED_JOB", "JOBSET_JOB_INDEX", "CIFARFLOW_TF_PORT"} <= env
