"""Submit-or-re-attach, watch to the end, explain failures: the launchers KFP components and the CLI call.

``launch_preprocess`` runs ``cifarflow preprocess`` as a SparkApplication, ``launch_train`` runs ``cifarflow
train`` as a TFJob (Training Operator v1) or a TrainJob (Kubeflow Trainer v2), as ``settings.trainer`` says.

The job's name comes from the run id, so calling a launcher again with the same run id (a retried KFP step,
a re-run CLI command) finds the job instead of starting another:

* still running -> watch it to the end;  * completed -> reuse it (nothing re-runs);
* failed -> delete it and submit again (that is what a retry is for);
* same name but built from different inputs -> ConflictError (a run id names one piece of work).

A job that outlives ``settings.watch.timeout_s`` is deleted. Every failure becomes one :class:`K8sJobError`
whose message names the cause (spark-submit rejected, driver failed, image cannot be pulled, OOMKilled, RBAC
forbids, timeout) and whose ``logs`` hold the failed driver's or chief's log tail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from cifarflow.config import PreprocessConfig
from cifarflow.errors import ConflictError, JobError
from cifarflow.k8s import names, spark_app, tfjob, trainjob
from cifarflow.k8s.client import (
    SPARK_APPLICATION,
    TFJOB,
    TRAINJOB,
    AlreadyExists,
    JobKind,
    Kube,
    connect,
)
from cifarflow.k8s.settings import K8sSettings
from cifarflow.k8s.watch import PodProblem, Status, cause_from_log, inspect_pods, outputs_from_log, status_of

log = logging.getLogger(__name__)

# The one-shot objects k8s/base deploys (suspended); skaffold rewrites their images to the tags it built.
ONESHOT_PREPROCESS = "cifarflow-preprocess"
ONESHOT_TRAIN = "cifarflow-train"
SPARK_DRIVER_CONTAINER = "spark-kubernetes-driver"
TRAIN_OUTPUTS = ("model", "saved_model", "metrics", "report", "test_accuracy")
TRAIN_MEMORY_FIX = "raise CIFARFLOW_K8S_TRAIN__MEMORY_LIMIT or lower the batch size, then retry"


class K8sJobError(JobError):
    """A job that failed; ``reason`` is one of: submission, driver, image, oom, timeout, failed, deleted."""

    def __init__(self, problem: str, fix: str | None, *, reason: str, name: str, logs: str = "") -> None:
        super().__init__(problem, fix)
        self.reason = reason
        self.name = name
        self.logs = logs


@dataclass(frozen=True)
class LaunchResult:
    kind: str
    name: str
    namespace: str
    state: str
    reused: bool  # a completed job from an earlier attempt was found: nothing ran
    reattached: bool  # a running job from an earlier attempt was found and watched
    seconds: float
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class JobSpec:
    """One job to run: what to submit and how to read its pods."""

    kind: JobKind
    name: str
    body: dict[str, Any]
    pod_selector: str
    main_pod: Callable[[list[client.V1Pod]], client.V1Pod | None]
    container: str
    output_keys: tuple[str, ...]
    memory_fix: str


# -- the two jobs --------------------------------------------------------------------------------------------
def preprocess_job(
    settings: K8sSettings,
    run_id: str,
    *,
    raw: str,
    out: str,
    params: PreprocessConfig,
) -> JobSpec:
    name = names.job_name(spark_app.STEP, run_id)
    args = spark_app.preprocess_arguments(raw, out, params)
    body = _annotated(spark_app.build(settings, name=name, arguments=args, run_id=run_id), run_id)
    return JobSpec(
        kind=SPARK_APPLICATION,
        name=name,
        body=body,
        pod_selector=f"{spark_app.POD_APP_LABEL}={name}",
        main_pod=lambda pods: _pick(pods, "spark-role", "driver"),
        container=SPARK_DRIVER_CONTAINER,
        output_keys=("dataset", "manifest"),
        memory_fix=(
            "give Spark more memory: CIFARFLOW_K8S_SPARK__DRIVER__MEMORY_OVERHEAD / "
            "CIFARFLOW_K8S_SPARK__EXECUTOR__MEMORY_OVERHEAD (Python workers live in the overhead), then retry"
        ),
    )


def train_job(
    settings: K8sSettings, run_id: str, *, data: str, out: str, extra_args: list[str] | None = None
) -> JobSpec:
    """A TFJob, or with ``settings.trainer == "trainjob"`` a Trainer v2 TrainJob, running the same arguments."""
    args = tfjob.train_arguments(data, out, extra_args)
    if settings.trainer == "trainjob":
        return _trainjob(settings, run_id, args)
    name = names.job_name(tfjob.STEP, run_id)
    body = _annotated(tfjob.build(settings, name=name, args=args, run_id=run_id), run_id)
    lead = "chief" if settings.train.chief else "worker"
    return JobSpec(
        kind=TFJOB,
        name=name,
        body=body,
        pod_selector=f"{tfjob.POD_JOB_LABEL}={name}",
        main_pod=lambda pods: _pick(
            pods, tfjob.POD_REPLICA_TYPE_LABEL, lead, (tfjob.POD_REPLICA_INDEX_LABEL, "0")
        ),
        container=tfjob.CONTAINER,
        output_keys=TRAIN_OUTPUTS,
        memory_fix=TRAIN_MEMORY_FIX,
    )


def _trainjob(settings: K8sSettings, run_id: str, args: list[str]) -> JobSpec:
    name = names.job_name(trainjob.STEP, run_id)
    body = _annotated(trainjob.build(settings, name=name, args=args, run_id=run_id), run_id)
    return JobSpec(
        kind=TRAINJOB,
        name=name,
        body=body,
        pod_selector=f"{trainjob.POD_JOBSET_LABEL}={name}",
        # The leader: task 0 of the trainer's replicated job (worker 0 exports and reports, as under TFJob).
        main_pod=lambda pods: _pick(
            pods,
            trainjob.POD_REPLICATED_JOB_LABEL,
            trainjob.REPLICATED_JOB,
            (trainjob.POD_COMPLETION_INDEX_LABEL, "0"),
        ),
        container=trainjob.CONTAINER,
        output_keys=TRAIN_OUTPUTS,
        memory_fix=TRAIN_MEMORY_FIX,
    )


def launch_preprocess(
    settings: K8sSettings,
    run_id: str,
    *,
    raw: str,
    out: str,
    params: PreprocessConfig | None = None,
    kube: Kube | None = None,
) -> LaunchResult:
    """Run ``cifarflow preprocess`` as a SparkApplication (``params``: its options, default the CLI's);
    outputs: ``dataset``, ``manifest`` if logged."""
    kube = kube or Kube(connect(), settings.namespace)
    settings = resolve_images(kube, settings)
    job = preprocess_job(settings, run_id, raw=raw, out=out, params=params or PreprocessConfig())
    return Launcher(kube, settings).run(job)


def launch_train(
    settings: K8sSettings,
    run_id: str,
    *,
    data: str,
    out: str,
    extra_args: list[str] | None = None,
    kube: Kube | None = None,
) -> LaunchResult:
    """Run ``cifarflow train`` as a TFJob (or a TrainJob, per ``settings.trainer``); outputs: ``model`` and
    ``metrics`` when logged."""
    kube = kube or Kube(connect(), settings.namespace)
    settings = resolve_images(kube, settings)
    return Launcher(kube, settings).run(
        train_job(settings, run_id, data=data, out=out, extra_args=extra_args)
    )


def resolve_images(kube: Kube, settings: K8sSettings) -> K8sSettings:
    """With ``images_from_cluster``, use the image refs skaffold wrote into the deployed one-shot objects."""
    if not settings.images_from_cluster:
        return settings
    spark = kube.get(SPARK_APPLICATION, ONESHOT_PREPROCESS)
    train = kube.get(TRAINJOB if settings.trainer == "trainjob" else TFJOB, ONESHOT_TRAIN)
    if spark is None or train is None:
        raise JobError(
            f"images_from_cluster is set but {ONESHOT_PREPROCESS}/{ONESHOT_TRAIN} are not deployed in "
            f"namespace {settings.namespace}",
            "deploy k8s/overlays/<env> with skaffold, or set CIFARFLOW_K8S_IMAGES_FROM_CLUSTER=false",
        )
    spark_image = spark["spec"]["image"]
    if settings.trainer == "trainjob":
        trainer_image = train["spec"]["trainer"]["image"]
    else:
        trainer_image = train["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0][
            "image"
        ]
    log.info("images from the cluster: %s, %s", spark_image, trainer_image)
    return settings.model_copy(
        update={
            "spark": settings.spark.model_copy(update={"image": spark_image}),
            "train": settings.train.model_copy(update={"image": trainer_image}),
        }
    )


# -- the lifecycle -------------------------------------------------------------------------------------------
class Launcher:
    def __init__(
        self, kube: Kube, settings: K8sSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.clock = clock

    def run(self, job: JobSpec) -> LaunchResult:
        start = self.clock()
        obj, reattached = self._submit_or_attach(job)
        status = status_of(job.kind, obj)
        if reattached and status.phase == "succeeded":
            log.info("%s %s already completed: reusing it", job.kind.kind, job.name)
            return self._result(job, status, start, reused=True, reattached=True)
        status = self._follow(job, obj, start)
        if status.phase == "failed":
            raise self._explain(job, status)
        log.info("%s %s completed in %.0fs", job.kind.kind, job.name, self.clock() - start)
        return self._result(job, status, start, reused=False, reattached=reattached)

    def _submit_or_attach(self, job: JobSpec) -> tuple[dict[str, Any], bool]:
        existing = self.kube.get(job.kind, job.name)
        if existing is not None:
            status = status_of(job.kind, existing)
            same = _spec_hash_of(existing) == _spec_hash_of(job.body)
            if status.phase == "failed":
                log.warning(
                    "%s %s failed before (%s): deleting it to retry", job.kind.kind, job.name, status.state
                )
                self._delete_and_wait(job)
            elif not same:
                raise ConflictError(
                    f"{job.kind.kind} {job.name} exists ({status.state}) but was built from different inputs",
                    f"use a new run id, or delete it: kubectl delete {job.kind.plural} {job.name} "
                    f"-n {self.kube.namespace}",
                )
            else:
                log.info("re-attaching to %s %s (%s)", job.kind.kind, job.name, status.state)
                return existing, True
        log.info("submitting %s %s to namespace %s", job.kind.kind, job.name, self.kube.namespace)
        try:
            return self.kube.create(job.kind, job.body), False
        except AlreadyExists:
            # Another attempt created it between our get and our create: attach to that one.
            raced = self.kube.get(job.kind, job.name)
            if raced is None:
                raise
            return raced, True

    def _follow(self, job: JobSpec, obj: dict[str, Any], start: float) -> Status:
        w = self.settings.watch
        deadline = start + w.timeout_s
        status = status_of(job.kind, obj)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        log.info("%s %s: %s", job.kind.kind, job.name, status.state)
        while status.phase not in ("succeeded", "failed"):
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise self._timeout(job, status)
            for event, current in self.kube.watch(job.kind, job.name, rv, min(w.window_s, remaining)):
                if event == "DELETED":
                    raise K8sJobError(
                        f"{job.kind.kind} {job.name} was deleted while cifarflow was watching it",
                        "rerun the step; check who deletes jobs in the namespace",
                        reason="deleted",
                        name=job.name,
                    )
                rv = (current.get("metadata") or {}).get("resourceVersion", rv)
                new = status_of(job.kind, current)
                if new.state != status.state:
                    log.info("%s %s: %s", job.kind.kind, job.name, new.state)
                status = new
                if status.phase in ("succeeded", "failed"):
                    return status
                if self.clock() >= deadline:
                    break
            # Between watch windows: pods that can never start fail the job now rather than at the timeout.
            fatal = inspect_pods(self.kube.pods(job.pod_selector)).fatal()
            if fatal is not None:
                self.kube.delete(job.kind, job.name)
                raise self._pod_failure(job, fatal)
            current_obj = self.kube.get(job.kind, job.name)
            if current_obj is None:
                raise K8sJobError(
                    f"{job.kind.kind} {job.name} disappeared while cifarflow was watching it",
                    "rerun the step; check who deletes jobs in the namespace",
                    reason="deleted",
                    name=job.name,
                )
            rv = current_obj["metadata"].get("resourceVersion")
            status = status_of(job.kind, current_obj)
        return status

    # -- failures --------------------------------------------------------------------------------------------
    def _timeout(self, job: JobSpec, status: Status) -> K8sJobError:
        report = inspect_pods(self.kube.pods(job.pod_selector))
        self.kube.delete(job.kind, job.name)
        why = ""
        stuck = report.first("Unschedulable")
        if stuck is not None:
            why = f"; pod {stuck.pod} could not be scheduled: {stuck.message}"
        return K8sJobError(
            f"{job.kind.kind} {job.name} did not finish within {self.settings.watch.timeout_s:.0f}s "
            f"(last state {status.state}){why}; it was deleted",
            "raise CIFARFLOW_K8S_WATCH__TIMEOUT_S, or free/resize the cluster if pods cannot be scheduled",
            reason="timeout",
            name=job.name,
        )

    def _pod_failure(self, job: JobSpec, problem: PodProblem) -> K8sJobError:
        if problem.reason == "CreateContainerConfigError":
            return K8sJobError(
                f"{job.kind.kind} {job.name}: pod {problem.pod} cannot start: {problem.message}",
                "create the missing Secret/ConfigMap (minikube: the cifarflow-s3-credentials Job makes it)",
                reason="config",
                name=job.name,
            )
        return K8sJobError(
            f"{job.kind.kind} {job.name}: pod {problem.pod} cannot pull its image ({problem.reason}): "
            f"{problem.message}",
            "check the image name and tag; minikube: build with `skaffold run -p minikube`, GKE: push to a "
            "registry the nodes can read",
            reason="image",
            name=job.name,
        )

    def _explain(self, job: JobSpec, status: Status) -> K8sJobError:
        pods = self.kube.pods(job.pod_selector)
        report = inspect_pods(pods)
        main = job.main_pod(pods)
        where = main.metadata.name if main is not None else job.name
        logs = ""
        if main is not None:
            logs = self.kube.pod_log(where, job.container, self.settings.watch.log_tail_lines)
        if logs:
            log.error("last %d log lines of %s:\n%s", self.settings.watch.log_tail_lines, where, logs)
        describe = f"kubectl describe {job.kind.plural} {job.name} -n {self.kube.namespace}"

        def fail(problem: str, fix: str, reason: str) -> K8sJobError:
            return K8sJobError(problem, fix, reason=reason, name=job.name, logs=logs)

        if status.submission_failed:
            return fail(
                f"{job.kind.kind} {job.name}: the operator could not submit it: "
                f"{status.message or status.state}",
                f"read the operator's message ({describe}); usually a missing service account or an invalid "
                "setting",
                "submission",
            )
        oom = report.first("OOMKilled")
        if oom is not None:
            return fail(
                f"{job.kind.kind} {job.name}: pod {oom.pod} ran out of memory (OOMKilled, exit code "
                f"{oom.exit_code})",
                job.memory_fix,
                "oom",
            )
        fatal = report.fatal()
        if fatal is not None:
            err = self._pod_failure(job, fatal)
            err.logs = logs
            return err
        cause = cause_from_log(logs) if logs else None
        if cause is not None:
            problem, fix = cause
            return fail(
                f"{job.kind.kind} {job.name} failed in {where}: {problem}",
                fix or f"kubectl logs {where} -n {self.kube.namespace}",
                "driver" if job.kind == SPARK_APPLICATION else "failed",
            )
        return fail(
            f"{job.kind.kind} {job.name} failed ({status.state}): "
            f"{status.message or 'no message from the operator'}",
            f"kubectl logs {where} -n {self.kube.namespace}; {describe}",
            "driver" if job.kind == SPARK_APPLICATION else "failed",
        )

    # -- helpers ---------------------------------------------------------------------------------------------
    def _delete_and_wait(self, job: JobSpec, timeout_s: float = 120) -> None:
        self.kube.delete(job.kind, job.name)
        deadline = self.clock() + timeout_s
        delay = 0.05
        while self.kube.get(job.kind, job.name) is not None:
            if self.clock() > deadline:
                raise JobError(
                    f"{job.kind.kind} {job.name} is still being deleted after {timeout_s:.0f}s",
                    f"check its finalizers: kubectl get {job.kind.plural} {job.name} -o yaml",
                )
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _result(
        self, job: JobSpec, status: Status, start: float, *, reused: bool, reattached: bool
    ) -> LaunchResult:
        outputs: dict[str, str] = {}
        main = job.main_pod(self.kube.pods(job.pod_selector))
        if main is not None:
            text = self.kube.pod_log(main.metadata.name, job.container, self.settings.watch.log_tail_lines)
            outputs = outputs_from_log(text, job.output_keys)
        return LaunchResult(
            kind=job.kind.kind,
            name=job.name,
            namespace=self.kube.namespace,
            state=status.state,
            reused=reused,
            reattached=reattached,
            seconds=round(self.clock() - start, 3),
            outputs=outputs,
        )


def _annotated(body: dict[str, Any], run_id: str) -> dict[str, Any]:
    meta = body.setdefault("metadata", {})
    meta["annotations"] = {
        **(meta.get("annotations") or {}),
        names.ANNOTATION_RUN_ID: run_id,
        names.ANNOTATION_SPEC_HASH: names.spec_hash(body["spec"]),
    }
    return body


def _spec_hash_of(obj: dict[str, Any]) -> str | None:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(names.ANNOTATION_SPEC_HASH)
    return str(value) if value else None


def _pick(
    pods: list[client.V1Pod], label: str, value: str, index: tuple[str, str] | None = None
) -> client.V1Pod | None:
    for pod in pods:
        labels = pod.metadata.labels or {}
        if labels.get(label) == value and (index is None or labels.get(index[0]) == index[1]):
            return pod
    return None
