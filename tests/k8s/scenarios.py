"""What the operators do after a job is created, played by the fake API server's controller.

Spark Operator v2.5.2 (``status.applicationState.state``): "" -> SUBMITTED -> RUNNING -> SUCCEEDING ->
COMPLETED, or RUNNING -> FAILING -> FAILED, or SUBMISSION_FAILED (retried) -> FAILED. The driver pod is
``<name>-driver`` (labels ``spark-role=driver``, ``sparkoperator.k8s.io/app-name=<name>``); its container is
``spark-kubernetes-driver``.

Training Operator v1.9.4 (``status.conditions``): Created -> Running (-> Restarting -> Running) -> Succeeded
or Failed; replica pods ``<name>-worker-<i>`` labelled ``training.kubeflow.org/job-name``, ``replica-type``,
``replica-index``; container ``tensorflow``.
"""

from __future__ import annotations

from typing import Any

from .fakeapi import FakeCluster, Key, Obj, Step, now

TICK = 0.03


def container_status(name: str, image: str, state: Obj, last: Obj | None = None, restarts: int = 0) -> Obj:
    out: Obj = {
        "name": name,
        "image": image,
        "imageID": "",
        "ready": "running" in state,
        "restartCount": restarts,
        "state": state,
    }
    if last:
        out["lastState"] = last
    return out


def pod(
    name: str, labels: dict[str, str], container: str, image: str, *, phase: str, state: Obj, **extra: Any
) -> Obj:
    status: Obj = {"phase": phase, "containerStatuses": [container_status(container, image, state, **extra)]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": container, "image": image}]},
        "status": status,
    }


RUNNING: Obj = {"running": {"startedAt": "2025-01-01T00:00:00Z"}}


def terminated(code: int, reason: str) -> Obj:
    return {"terminated": {"exitCode": code, "reason": reason}}


def waiting(reason: str, message: str) -> Obj:
    return {"waiting": {"reason": reason, "message": message}}


# -- SparkApplication ----------------------------------------------------------------------------------------
def _spark_labels(name: str, role: str) -> dict[str, str]:
    return {"sparkoperator.k8s.io/app-name": name, "spark-role": role, "spark-app-selector": f"spark-{name}"}


def _image(cluster: FakeCluster, key: Key) -> str:
    return str(cluster.objects[key]["spec"].get("image", "cifarflow-spark"))


def spark_state(state: str, message: str = "", **status: Any) -> Step:
    def act(cluster: FakeCluster, key: Key) -> None:
        body: Obj = {"applicationState": {"state": state, **({"errorMessage": message} if message else {})}}
        if "driverInfo" not in cluster.objects[key].get("status", {}):
            # The operator always writes driverInfo (a Go struct, not omitempty; the CRD requires it): empty
            # until a driver pod exists.
            body["driverInfo"] = {}
        cluster.update_status(key, body | status)

    return (TICK, act)


def spark_driver(phase: str, state: Obj, log: str | None = None, **extra: Any) -> Step:
    def act(cluster: FakeCluster, key: Key) -> None:
        name = key[3]
        p = pod(
            f"{name}-driver",
            _spark_labels(name, "driver"),
            "spark-kubernetes-driver",
            _image(cluster, key),
            phase=phase,
            state=state,
            **extra,
        )
        cluster.set_pod(key[2], p, name, log)

    return (0.0, act)


def spark_executors(n: int, phase: str, state: Obj) -> Step:
    def act(cluster: FakeCluster, key: Key) -> None:
        name = key[3]
        for i in range(1, n + 1):
            labels = _spark_labels(name, "executor") | {"spark-exec-id": str(i)}
            p = pod(
                f"{name}-exec-{i}",
                labels,
                "spark-kubernetes-executor",
                _image(cluster, key),
                phase=phase,
                state=state,
            )
            cluster.set_pod(key[2], p, name)

    return (0.0, act)


SUBMITTED = {"submissionAttempts": 1, "lastSubmissionAttemptTime": "2025-01-01T00:00:00Z"}


def _ran(name: str) -> Obj:
    return {"driverInfo": {"podName": f"{name}-driver"}, "sparkApplicationId": f"spark-{name}"}


def spark_success(name: str, log: str) -> list[Step]:
    return [
        spark_state("SUBMITTED", **SUBMITTED, **_ran(name)),
        spark_driver("Pending", waiting("ContainerCreating", "")),
        spark_state("RUNNING", executionAttempts=1),
        spark_driver("Running", RUNNING),
        spark_executors(2, "Running", RUNNING),
        spark_state("SUCCEEDING"),
        spark_driver("Succeeded", terminated(0, "Completed"), log=log),
        spark_state("COMPLETED", terminationTime=now()),
    ]


def spark_submission_failed(retries: int) -> list[Step]:
    message = (
        "failed to run spark-submit: Exception in thread main "
        "io.fabric8.kubernetes.client.KubernetesClientException: "
        'serviceaccounts "cifarflow-spark-driver" not found'
    )
    steps = [spark_state("SUBMISSION_FAILED", message, submissionAttempts=i + 1) for i in range(retries + 1)]
    return [*steps, spark_state("FAILED", message)]


def spark_driver_failed(name: str, log: str) -> list[Step]:
    return [
        spark_state("SUBMITTED", **SUBMITTED, **_ran(name)),
        spark_state("RUNNING", executionAttempts=1),
        spark_driver("Running", RUNNING),
        spark_state("FAILING", "driver container failed with ExitCode: 2, Reason: Error"),
        spark_driver("Failed", terminated(2, "Error"), log=log),
        spark_state("FAILED", "driver container failed with ExitCode: 2, Reason: Error"),
    ]


def spark_image_pull(name: str) -> list[Step]:
    return [
        spark_state("SUBMITTED", **SUBMITTED, **_ran(name)),
        spark_driver(
            "Pending",
            waiting("ImagePullBackOff", 'Back-off pulling image "cifarflow-spark:nope"'),
        ),
    ]


def spark_driver_oom(name: str) -> list[Step]:
    return [
        spark_state("SUBMITTED", **SUBMITTED, **_ran(name)),
        spark_state("RUNNING", executionAttempts=1),
        spark_driver("Running", RUNNING),
        spark_driver("Failed", terminated(137, "OOMKilled"), log="25/01/01 INFO starting\nKilled\n"),
        spark_state("FAILED", "driver container failed with ExitCode: 137, Reason: OOMKilled"),
    ]


def spark_forever(name: str) -> list[Step]:
    return [
        spark_state("SUBMITTED", **SUBMITTED, **_ran(name)),
        spark_state("RUNNING", executionAttempts=1),
        spark_driver("Running", RUNNING),
    ]


def spark_missing_secret(name: str) -> list[Step]:
    return [
        spark_state("SUBMITTED", **SUBMITTED, **_ran(name)),
        spark_driver("Pending", waiting("CreateContainerConfigError", 'secret "cifarflow-s3" not found')),
    ]


# -- TFJob ---------------------------------------------------------------------------------------------------
def tf_condition(kind: str, reason: str, message: str = "") -> Step:
    def act(cluster: FakeCluster, key: Key) -> None:
        obj = cluster.objects[key]
        conditions = [
            dict(c, status="False") if c["type"] in ("Running", "Restarting") else c
            for c in obj.get("status", {}).get("conditions", [])
        ]
        conditions.append(
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastUpdateTime": now(),
                "lastTransitionTime": now(),
            }
        )
        cluster.update_status(key, {"conditions": conditions})

    return (TICK, act)


def tf_worker(index: int, phase: str, state: Obj, log: str | None = None, **extra: Any) -> Step:
    def act(cluster: FakeCluster, key: Key) -> None:
        name = key[3]
        labels = {
            "training.kubeflow.org/job-name": name,
            "training.kubeflow.org/replica-type": "worker",
            "training.kubeflow.org/replica-index": str(index),
            "training.kubeflow.org/operator-name": "tfjob-controller",
        }
        spec = cluster.objects[key]["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
        p = pod(
            f"{name}-worker-{index}", labels, "tensorflow", spec["image"], phase=phase, state=state, **extra
        )
        cluster.set_pod(key[2], p, name, log)

    return (0.0, act)


def tf_success(name: str, log: str) -> list[Step]:
    return [
        tf_condition("Created", "TFJobCreated", f"TFJob cifarflow/{name} is created."),
        tf_worker(0, "Running", RUNNING),
        tf_worker(1, "Running", RUNNING),
        tf_condition("Running", "TFJobRunning", f"TFJob cifarflow/{name} is running."),
        tf_worker(0, "Succeeded", terminated(0, "Completed"), log=log),
        tf_worker(1, "Succeeded", terminated(0, "Completed"), log=""),
        tf_condition("Succeeded", "TFJobSucceeded", f"TFJob cifarflow/{name} successfully completed."),
    ]


def tf_restart_then_success(name: str, log: str) -> list[Step]:
    return [
        tf_condition("Created", "TFJobCreated"),
        tf_worker(0, "Running", RUNNING),
        tf_condition("Running", "TFJobRunning"),
        # Worker preempted (SIGKILL, 137): ExitCode policy restarts it.
        tf_condition("Restarting", "TFJobRestarting", "TFJob worker-0 is restarting because exit code 137"),
        tf_worker(0, "Running", RUNNING, last=terminated(137, "Error"), restarts=1),
        tf_condition("Running", "TFJobRunning"),
        tf_worker(0, "Succeeded", terminated(0, "Completed"), log=log),
        tf_condition("Succeeded", "TFJobSucceeded"),
    ]


def tf_failed(name: str, log: str) -> list[Step]:
    return [
        tf_condition("Created", "TFJobCreated"),
        tf_worker(0, "Running", RUNNING),
        tf_condition("Running", "TFJobRunning"),
        tf_worker(0, "Failed", terminated(2, "Error"), log=log),
        tf_condition(
            "Failed", "TFJobFailed", f"TFJob cifarflow/{name} has failed because 1 Worker replica(s) failed."
        ),
    ]


def tf_oom(name: str) -> list[Step]:
    return [
        tf_condition("Created", "TFJobCreated"),
        tf_worker(0, "Running", RUNNING),
        tf_condition("Running", "TFJobRunning"),
        tf_worker(0, "Failed", terminated(137, "OOMKilled"), log="Epoch 1/3\n"),
        tf_condition("Failed", "TFJobFailed", "TFJob has failed because 1 Worker replica(s) failed."),
    ]


def tf_image_pull(name: str) -> list[Step]:
    return [
        tf_condition("Created", "TFJobCreated"),
        tf_worker(0, "Pending", waiting("ErrImagePull", "pull access denied")),
        tf_worker(
            0, "Pending", waiting("ImagePullBackOff", 'Back-off pulling image "cifarflow-trainer:nope"')
        ),
    ]


def tf_unschedulable(name: str) -> list[Step]:
    def act(cluster: FakeCluster, key: Key) -> None:
        p = pod(
            f"{name}-worker-0",
            {
                "training.kubeflow.org/job-name": name,
                "training.kubeflow.org/replica-type": "worker",
                "training.kubeflow.org/replica-index": "0",
            },
            "tensorflow",
            "cifarflow-trainer",
            phase="Pending",
            state=waiting("ContainerCreating", ""),
        )
        p["status"]["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
            }
        ]
        cluster.set_pod(key[2], p, name)

    return [tf_condition("Created", "TFJobCreated"), (0.0, act)]


# -- TrainJob (Kubeflow Trainer v2.3.0 on JobSet) ---------------------------------------------------------------
# Conditions Created/Suspended/Complete/Failed (each with reason, message, lastTransitionTime: the status schema
# requires them); running shows as status.jobsStatus[].active. Pods of the one replicated job `node` are
# `<name>-node-0-<i>-<suffix>`, labelled by JobSet and the Job controller; container `node`.
def tj_condition(kind: str, reason: str, message: str = "") -> Step:
    def act(cluster: FakeCluster, key: Key) -> None:
        obj = cluster.objects[key]
        conditions = [c for c in obj.get("status", {}).get("conditions", []) if c["type"] != kind]
        conditions.append(
            {
                "type": kind,
                "status": "True",
                "reason": reason,
                "message": message or reason,
                "lastTransitionTime": now(),
            }
        )
        cluster.update_status(key, {"conditions": conditions})

    return (TICK, act)


def tj_jobs(active: int = 0, succeeded: int = 0, failed: int = 0) -> Step:
    def act(cluster: FakeCluster, key: Key) -> None:
        counts = {"active": active, "ready": active, "succeeded": succeeded, "failed": failed, "suspended": 0}
        cluster.update_status(key, {"jobsStatus": [{"name": "node", **counts}]})

    return (TICK, act)


def tj_node(index: int, phase: str, state: Obj, log: str | None = None, **extra: Any) -> Step:
    def act(cluster: FakeCluster, key: Key) -> None:
        name = key[3]
        labels = {
            "jobset.sigs.k8s.io/jobset-name": name,
            "jobset.sigs.k8s.io/replicatedjob-name": "node",
            "jobset.sigs.k8s.io/job-index": "0",
            "batch.kubernetes.io/job-completion-index": str(index),
            "trainer.kubeflow.org/trainjob-ancestor-step": "trainer",
        }
        image = cluster.objects[key]["spec"]["trainer"]["image"]
        p = pod(f"{name}-node-0-{index}-x7k2p", labels, "node", image, phase=phase, state=state, **extra)
        cluster.set_pod(key[2], p, name, log)

    return (0.0, act)


def tj_success(name: str, log: str) -> list[Step]:
    return [
        tj_node(0, "Running", RUNNING),
        tj_node(1, "Running", RUNNING),
        tj_jobs(active=1),
        tj_node(0, "Succeeded", terminated(0, "Completed"), log=log),
        tj_node(1, "Succeeded", terminated(0, "Completed"), log=""),
        tj_jobs(succeeded=1),
        tj_condition("Complete", "JobsCompleted", "jobset completed successfully"),
    ]


def tj_failed(name: str, log: str) -> list[Step]:
    return [
        tj_node(0, "Running", RUNNING),
        tj_jobs(active=1),
        tj_node(0, "Failed", terminated(2, "Error"), log=log),
        tj_jobs(failed=1),
        tj_condition("Failed", "FailedJobs", "jobset failed: job node-0 failed (PodFailurePolicy)"),
    ]


def tj_forever(name: str) -> list[Step]:
    return [tj_node(0, "Running", RUNNING), tj_jobs(active=1)]


def tj_suspended(name: str) -> list[Step]:
    return [tj_condition("Suspended", "Suspended", "TrainJob is suspended")]
