"""The launchers against a fake API server (real ``kubernetes`` client, kubeconfig, HTTP, watches).

Each test sets what the operator will do with the job (tests/k8s/scenarios.py), runs a launcher, and checks
what the user gets: the result, or one JobError naming the cause and the fix; and what happened to the job.
"""

from __future__ import annotations

import pytest

from cifarflow.config import PreprocessConfig
from cifarflow.errors import ConflictError, JobError
from cifarflow.k8s import launcher, names
from cifarflow.k8s.client import SPARK_APPLICATION, TFJOB, Kube, connect
from cifarflow.k8s.launcher import K8sJobError
from cifarflow.k8s.settings import WatchSettings

from . import scenarios as sc
from .conftest import FAST, Api

RUN = "run-42"
PRE = names.job_name("preprocess", RUN)
TRAIN = names.job_name("train", RUN)
DRIVER_LOG = (
    "25/01/01 12:00:00 INFO SparkContext: Running Spark version 4.3.0\n"
    "dataset: 3f2a9c\n"
    "manifest: s3://cifarflow/work/datasets/3f2a9c/_manifest.json\n"
)
FAILED_DRIVER_LOG = (
    "25/01/01 12:00:00 INFO SparkContext: Running Spark version 4.3.0\n"
    "error: s3://cifarflow/work/raw has no _ingest.json (fix: run `cifarflow ingest` first)\n"
)


def preprocess(api: Api, settings=FAST, run_id: str = RUN, **kw):  # type: ignore[no-untyped-def]
    return launcher.launch_preprocess(
        settings,
        run_id,
        raw="s3://cifarflow/work/raw",
        out="s3://cifarflow/work/datasets",
        kube=api.kube(),
        **kw,
    )


def train(api: Api, settings=FAST, run_id: str = RUN):  # type: ignore[no-untyped-def]
    return launcher.launch_train(
        settings,
        run_id,
        data="s3://cifarflow/work/datasets/3f2a9c",
        out="s3://cifarflow/work/models/m1",
        kube=api.kube(),
    )


# -- success -------------------------------------------------------------------------------------------------
def test_preprocess_runs_to_completion_and_reports_the_dataset(api: Api) -> None:
    api.cluster.scenario(PRE, sc.spark_success(PRE, DRIVER_LOG))
    result = preprocess(api)
    assert (result.kind, result.name, result.state) == ("SparkApplication", PRE, "COMPLETED")
    assert not result.reused and not result.reattached
    assert result.outputs == {
        "dataset": "3f2a9c",
        "manifest": "s3://cifarflow/work/datasets/3f2a9c/_manifest.json",
    }
    app = api.cluster.objects[(SPARK_APPLICATION.group, "sparkapplications", "cifarflow", PRE)]
    assert app["spec"]["arguments"][:5] == [
        "preprocess",
        "--raw",
        "s3://cifarflow/work/raw",
        "--out",
        "s3://cifarflow/work/datasets",
    ]
    assert app["metadata"]["annotations"][names.ANNOTATION_RUN_ID] == RUN


def test_train_survives_a_restart_and_completes(api: Api) -> None:
    api.cluster.scenario(TRAIN, sc.tf_restart_then_success(TRAIN, "model: s3://cifarflow/work/models/m1\n"))
    result = train(api)
    assert (result.kind, result.state) == ("TFJob", "Succeeded")
    assert result.outputs == {"model": "s3://cifarflow/work/models/m1"}


def test_train_success(api: Api) -> None:
    api.cluster.scenario(TRAIN, sc.tf_success(TRAIN, "metrics: s3://cifarflow/work/models/m1/metrics.json\n"))
    assert train(api).outputs == {"metrics": "s3://cifarflow/work/models/m1/metrics.json"}


# -- failures ------------------------------------------------------------------------------------------------
def test_submission_failure_names_the_operators_message(api: Api) -> None:
    api.cluster.scenario(PRE, sc.spark_submission_failed(FAST.spark.on_submission_failure_retries))
    with pytest.raises(K8sJobError) as err:
        preprocess(api)
    assert err.value.reason == "submission"
    assert "could not submit it" in err.value.problem
    assert 'serviceaccounts "cifarflow-spark-driver" not found' in err.value.problem
    assert "kubectl describe sparkapplications" in (err.value.fix or "")


def test_driver_failure_surfaces_cifarflows_own_error_line_and_the_log(api: Api) -> None:
    api.cluster.scenario(PRE, sc.spark_driver_failed(PRE, FAILED_DRIVER_LOG))
    with pytest.raises(K8sJobError) as err:
        preprocess(api)
    e = err.value
    assert e.reason == "driver"
    assert (
        e.problem
        == f"SparkApplication {PRE} failed in {PRE}-driver: s3://cifarflow/work/raw has no _ingest.json"
    )
    assert e.fix == "run `cifarflow ingest` first"
    assert "Running Spark version" in e.logs


def test_train_failure_reports_the_workers_error(api: Api) -> None:
    log = "Traceback (most recent call last):\n  File x\nValueError: batch size 0 must be positive\n"
    api.cluster.scenario(TRAIN, sc.tf_failed(TRAIN, log))
    with pytest.raises(K8sJobError) as err:
        train(api)
    assert err.value.reason == "failed"
    assert "ValueError: batch size 0 must be positive" in err.value.problem
    assert f"{TRAIN}-worker-0" in err.value.problem


@pytest.mark.parametrize("kind", ["spark", "tfjob"])
def test_an_image_that_cannot_be_pulled_fails_fast_and_removes_the_job(api: Api, kind: str) -> None:
    if kind == "spark":
        api.cluster.scenario(PRE, sc.spark_image_pull(PRE))
        run, plural, name = preprocess, "sparkapplications", PRE
    else:
        api.cluster.scenario(TRAIN, sc.tf_image_pull(TRAIN))
        run, plural, name = train, "tfjobs", TRAIN
    with pytest.raises(K8sJobError) as err:
        run(api)
    assert err.value.reason == "image"
    assert "ImagePullBackOff" in err.value.problem and ":nope" in err.value.problem
    assert "skaffold run -p minikube" in (err.value.fix or "")
    assert not [k for k in api.cluster.objects if k[1] == plural]
    assert any(r.verb == "delete" and r.name == name for r in api.cluster.requests)


def test_driver_oom_asks_for_more_memory_overhead(api: Api) -> None:
    api.cluster.scenario(PRE, sc.spark_driver_oom(PRE))
    with pytest.raises(K8sJobError) as err:
        preprocess(api)
    assert err.value.reason == "oom"
    assert f"pod {PRE}-driver ran out of memory (OOMKilled, exit code 137)" in err.value.problem
    assert "CIFARFLOW_K8S_SPARK__DRIVER__MEMORY_OVERHEAD" in (err.value.fix or "")


def test_worker_oom(api: Api) -> None:
    api.cluster.scenario(TRAIN, sc.tf_oom(TRAIN))
    with pytest.raises(K8sJobError) as err:
        train(api)
    assert err.value.reason == "oom"
    assert "CIFARFLOW_K8S_TRAIN__MEMORY_LIMIT" in (err.value.fix or "")


def test_missing_credentials_secret_is_named(api: Api) -> None:
    api.cluster.scenario(PRE, sc.spark_missing_secret(PRE))
    with pytest.raises(K8sJobError) as err:
        preprocess(api)
    assert err.value.reason == "config"
    assert 'secret "cifarflow-s3" not found' in err.value.problem


def test_timeout_deletes_the_job(api: Api) -> None:
    api.cluster.scenario(PRE, sc.spark_forever(PRE))
    settings = FAST.model_copy(update={"watch": WatchSettings(timeout_s=1.5, window_s=0.5)})
    with pytest.raises(K8sJobError) as err:
        preprocess(api, settings)
    assert err.value.reason == "timeout"
    assert "did not finish within 2s (last state RUNNING)" in err.value.problem
    assert "it was deleted" in err.value.problem
    assert not api.cluster.objects


def test_timeout_says_why_a_pod_could_not_be_scheduled(api: Api) -> None:
    api.cluster.scenario(TRAIN, sc.tf_unschedulable(TRAIN))
    settings = FAST.model_copy(update={"watch": WatchSettings(timeout_s=1.2, window_s=0.5)})
    with pytest.raises(K8sJobError) as err:
        train(api, settings)
    assert (
        "could not be scheduled: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu." in err.value.problem
    )


def test_rbac_refusal_is_one_clear_error(api: Api) -> None:
    # A service account bound to nothing: the API server answers 403.
    api.cluster.use_rbac([], {"nobody": "system:serviceaccount:cifarflow:nobody"})
    with pytest.raises(JobError) as err:
        launcher.launch_preprocess(FAST, RUN, raw="s3://b/raw", out="s3://b/ds", kube=api.kube("nobody"))
    assert err.value.problem.startswith("forbidden: cannot get sparkapplications in namespace cifarflow:")
    assert "system:serviceaccount:cifarflow:nobody" in err.value.problem
    assert "k8s/base/rbac.yaml" in (err.value.fix or "")


def test_missing_operator_is_named(api: Api) -> None:
    api.cluster.crds.pop(("kubeflow.org", "tfjobs"), None)
    if not api.cluster.crds:
        pytest.skip("needs the CRDs in ../shared/crds to know which kinds are installed")
    with pytest.raises(JobError) as err:
        train(api)
    assert err.value.problem == "the TFJob resource (kubeflow.org/v1) is not installed in the cluster"
    assert "Training Operator v1.9.4" in (err.value.fix or "")


def test_unreachable_api_server(api: Api, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = api.server.url
    api.server.stop()
    kube = Kube(connect(str(api.server.kubeconfig(tmp_path / "dead", "admin-token"))), "cifarflow")
    with pytest.raises(JobError) as err:
        launcher.launch_preprocess(FAST, RUN, raw="s3://b/raw", out="s3://b/ds", kube=kube)
    assert err.value.problem.startswith(f"cannot reach the Kubernetes API at {url}")


# -- re-attach, reuse, retry ---------------------------------------------------------------------------------
def test_a_retried_step_reattaches_to_the_running_job(api: Api) -> None:
    api.cluster.scenario(PRE, sc.spark_success(PRE, DRIVER_LOG))
    # The first attempt submitted the job and died.
    first = launcher.preprocess_job(
        FAST,
        RUN,
        raw="s3://cifarflow/work/raw",
        out="s3://cifarflow/work/datasets",
        params=PreprocessConfig(),
    )
    api.kube().create(SPARK_APPLICATION, first.body)
    result = preprocess(api)
    assert result.reattached and not result.reused
    assert result.state == "COMPLETED"
    assert len(api.cluster.created("sparkapplications")) == 1


def test_a_completed_job_is_reused_not_rerun(api: Api) -> None:
    api.cluster.scenario(TRAIN, sc.tf_success(TRAIN, "model: s3://m\n"))
    train(api)
    again = train(api)
    assert again.reused and again.state == "Succeeded"
    assert again.outputs == {"model": "s3://m"}
    assert len(api.cluster.created("tfjobs")) == 1


def test_a_retry_after_a_failure_deletes_and_resubmits(api: Api) -> None:
    api.cluster.scenario(PRE, sc.spark_driver_failed(PRE, FAILED_DRIVER_LOG))
    with pytest.raises(K8sJobError):
        preprocess(api)
    api.cluster.scenario(PRE, sc.spark_success(PRE, DRIVER_LOG))
    result = preprocess(api)
    assert result.state == "COMPLETED" and not result.reattached
    assert len(api.cluster.created("sparkapplications")) == 2
    assert [r.verb for r in api.cluster.requests if r.verb == "delete"] == ["delete"]


def test_same_run_id_with_different_inputs_is_a_conflict(api: Api) -> None:
    api.cluster.scenario(PRE, sc.spark_forever(PRE))
    job = launcher.preprocess_job(
        FAST, RUN, raw="s3://other/raw", out="s3://other/ds", params=PreprocessConfig()
    )
    api.kube().create(SPARK_APPLICATION, job.body)
    with pytest.raises(ConflictError) as err:
        preprocess(api)
    assert "was built from different inputs" in err.value.problem
    assert f"kubectl delete sparkapplications {PRE} -n cifarflow" in (err.value.fix or "")


def test_images_from_the_cluster_follow_skaffolds_tags(api: Api) -> None:
    from cifarflow.k8s.generate import oneshot_manifests

    kube = api.kube()
    manifests = oneshot_manifests()
    spark, tf = manifests["preprocess.yaml"], manifests["train.yaml"]
    spark["spec"]["image"] = "cifarflow-spark:abc123"
    tf["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["image"] = (
        "cifarflow-trainer:abc123"
    )
    kube.create(SPARK_APPLICATION, spark)
    kube.create(TFJOB, tf)
    api.cluster.scenario(TRAIN, sc.tf_success(TRAIN, ""))
    train(api, FAST.model_copy(update={"images_from_cluster": True}))
    job = api.cluster.objects[("kubeflow.org", "tfjobs", "cifarflow", TRAIN)]
    assert job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["image"] == (
        "cifarflow-trainer:abc123"
    )
