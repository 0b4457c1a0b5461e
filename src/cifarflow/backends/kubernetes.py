"""The Kubernetes backend: the launchers of :mod:`cifarflow.k8s` (a SparkApplication; a TFJob or a TrainJob, as
``K8sSettings.trainer`` says; a KServe InferenceService), submitted or re-attached to, and watched to the end.

Settings are resolved on one path, :func:`resolve_settings`: built-in defaults, then the deployment's
``CIFARFLOW_K8S_*`` (the environment, then the mounted cifarflow-defaults ConfigMap), then what the caller gives
(:class:`K8sOptions`: the pipeline's parameters; the CLI gives none). The predictor's ``CIFARFLOW_SERVE_*``
settings come from the same two places (:func:`resolve_serving`). The cluster comes from ``KUBECONFIG`` or
the pod's service account.

A job is named after the work it does, so running it again (a retried step, a re-run command) re-attaches to it
or reuses its result: a preprocess job after the planned dataset id and the Spark settings (or, where no id is
planned, ``CIFARFLOW_RUN_ID`` or a hash of its arguments); a training job after its run name and model URL.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cifarflow import deployment
from cifarflow.backends.base import (
    Backend,
    DeployRequest,
    DeployResult,
    Job,
    PreprocessRequest,
    PreprocessResult,
    TrainRequest,
    TrainResult,
)
from cifarflow.storage import Store
from cifarflow.train.config import container_args

log = logging.getLogger(__name__)

RUN_ID_ENV = "CIFARFLOW_RUN_ID"


@dataclass(frozen=True)
class SparkResources:
    """The SparkApplication's size; an empty image leaves the deployment's (k8s/base: skaffold's tag)."""

    image: str
    executors: int  # the initial count; dynamic allocation scales from there
    executor_cores: int
    executor_memory: str
    driver_memory: str


@dataclass(frozen=True)
class TrainerResources:
    """The training job's size; an empty image leaves the deployment's."""

    image: str
    workers: int
    gpus_per_worker: int  # -1 = the deployment's (GKE's overlay: 1)


@dataclass(frozen=True)
class K8sOptions:
    """What a caller sets over the deployment's settings; empty values leave them."""

    namespace: str = ""
    s3_endpoint: str = ""
    timeout_s: float | None = None
    spark: SparkResources | None = None
    trainer: TrainerResources | None = None


def resolve_settings(options: K8sOptions, *, job: str, environ: Mapping[str, str] | None = None) -> Any:
    """The launchers' :class:`~cifarflow.k8s.settings.K8sSettings` for one ``job`` (preprocess or train): an
    image given for one job does not change where the other takes its image from."""
    from cifarflow.k8s.settings import ENV_PREFIX, K8sSettings

    given: dict[str, Any] = {}
    if options.timeout_s is not None:
        given["watch"] = {"timeout_s": options.timeout_s}
    if options.namespace:
        given["namespace"] = options.namespace
    if options.s3_endpoint:
        given["storage"] = {"s3_endpoint": options.s3_endpoint}
    if job == "preprocess" and options.spark is not None:
        given.update(_spark(options.spark))
    if job == "train" and options.trainer is not None:
        given.update(_trainer(options.trainer))
    return K8sSettings.from_env(_deployed(ENV_PREFIX, environ), **given)


def resolve_serving(runtime: str | None = None, environ: Mapping[str, str] | None = None) -> Any:
    """The InferenceService's :class:`~cifarflow.k8s.inferenceservice.ServingSettings`: ``CIFARFLOW_SERVE_*``
    of the environment and the deployment, then ``runtime`` where given."""
    from cifarflow.k8s.inferenceservice import ENV_PREFIX, ServingSettings

    return ServingSettings.from_env(_deployed(ENV_PREFIX, environ), runtime=runtime)


def _deployed(prefix: str, environ: Mapping[str, str] | None) -> dict[str, str]:
    """The environment with the deployment's ``prefix`` settings over it (the ConfigMap is this cluster's)."""
    env = os.environ if environ is None else environ
    return {**env, **{k: v for k, v in deployment.values().items() if k.startswith(prefix)}}


def _spark(spark: SparkResources) -> dict[str, Any]:
    return {
        # An empty image leaves the deployment's choice (in k8s/base: the tag skaffold deployed).
        **({"images_from_cluster": False} if spark.image else {}),
        "spark": {
            **({"image": spark.image} if spark.image else {}),
            "executors": spark.executors,
            "executor": {
                "cores": spark.executor_cores,
                "core_limit": str(spark.executor_cores),
                "memory": spark.executor_memory,
            },
            "driver": {"memory": spark.driver_memory},
        },
    }


def _trainer(job: TrainerResources) -> dict[str, Any]:
    train: dict[str, Any] = {"workers": job.workers}
    if job.image:
        train["image"] = job.image
    if job.gpus_per_worker >= 0:
        train["gpus"] = job.gpus_per_worker
    return {**({"images_from_cluster": False} if job.image else {}), "train": train}


class KubernetesBackend(Backend):
    name = "k8s"

    def __init__(self, store: Store, options: K8sOptions | None = None) -> None:
        super().__init__(store)
        self.options = options or K8sOptions()

    def preprocess(self, request: PreprocessRequest) -> PreprocessResult:
        from cifarflow.k8s import names, spark_app
        from cifarflow.k8s.launcher import launch_preprocess

        settings = resolve_settings(self.options, job="preprocess")
        if request.dataset_id:
            # Named after the dataset and the job's settings: a retried step, or a second run of the same
            # dataset, re-attaches to the running application instead of starting another.
            job_id = f"{request.dataset_id}-{names.spec_hash(settings.spark.model_dump(mode='json'))[:6]}"
        else:
            # Named after the command the driver runs: every option (--image-size, --strict too) counts.
            args = spark_app.preprocess_arguments(request.raw_url, request.datasets_url, request.params)
            job_id = os.environ.get(RUN_ID_ENV) or names.derive_run_id("preprocess", args[1:])
        result = launch_preprocess(
            settings, job_id, raw=request.raw_url, out=request.datasets_url, params=request.params
        )
        return PreprocessResult(job=_job(result), outputs=dict(result.outputs))

    def train(self, request: TrainRequest) -> TrainResult:
        from cifarflow.k8s.launcher import launch_train

        settings = resolve_settings(self.options, job="train")
        cfg = request.cfg
        # Named by the run and its folder (job_name digests the whole id): a retried step, or a later run with
        # the same settings, re-attaches to the job that trains this model instead of starting a second one.
        job_id = f"{request.run_name}-{cfg.out}"
        result = launch_train(settings, job_id, data=cfg.data, out=cfg.out, extra_args=container_args(cfg))
        return TrainResult(job=_job(result), outputs=dict(result.outputs))

    def deploy(self, request: DeployRequest) -> DeployResult:
        from cifarflow.k8s import deploy as dp

        result = dp.deploy(
            request.model_url,
            name=request.params.name,
            canary_percent=request.params.canary,
            settings=resolve_settings(self.options, job="deploy"),
            serving=resolve_serving(request.runtime),
            store=self.store,
        )
        # Like a completed job re-attached to: an unchanged model wrote nothing.
        job = Job(
            dp.KIND.kind, result.name, result.namespace, "Ready", result.action == "unchanged", result.seconds
        )
        log.info("InferenceService %s/%s %s", job.namespace, job.name, result.action)
        return DeployResult(job=job, outputs={"action": result.action, "url": result.url})


def _job(result: Any) -> Job:
    job = Job(result.kind, result.name, result.namespace, result.state, result.reused, result.seconds)
    log.info("%s %s/%s %s in %.0f s", job.kind, job.namespace, job.name, job.state, job.seconds)
    return job
