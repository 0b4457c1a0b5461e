"""Kubeflow Trainer v2 (``trainer.kubeflow.org/v1alpha1``, v2.3.0): the TensorFlow ClusterTrainingRuntime and
the TrainJobs that reference it.

Trainer v2 ships no TensorFlow runtime, so cifarflow brings one: ``cifarflow-tensorflow``, a JobSet with one
replicated job ``node`` whose Indexed Job runs N pods (``numNodes``) of the trainer image, hardened like every
cifarflow pod. A TrainJob only says what differs per run: image, arguments, env, resources, node count.
JobSet gives every pod a stable DNS name, ``<jobset>-node-0-<index>.<jobset>`` (a headless Service named after
the JobSet, which Trainer names after the TrainJob), and ``JOB_COMPLETION_INDEX``; inside the container
:mod:`cifarflow.train.cluster_spec` turns those into the same ``TF_CONFIG`` a TFJob injects.

Built with ``kubeflow-trainer-api`` 2.3.0's pydantic models (it depends only on pydantic, so it co-installs
with kfp 2.17.0 and ``kubernetes<31``).
"""

from __future__ import annotations

import math
from typing import Any

from kubeflow_trainer_api.models import (
    IoK8sApiCoreV1EnvVar,
    IoK8sApiCoreV1ResourceRequirements,
    IoK8sApimachineryPkgApisMetaV1ObjectMeta,
    JobsetV1alpha2JobSetSpec,
    TrainerV1alpha1ClusterTrainingRuntime,
    TrainerV1alpha1JobSetTemplateSpec,
    TrainerV1alpha1MLPolicy,
    TrainerV1alpha1RuntimePatch,
    TrainerV1alpha1RuntimeRef,
    TrainerV1alpha1Trainer,
    TrainerV1alpha1TrainingRuntimeSpec,
    TrainerV1alpha1TrainingRuntimeSpecPatch,
    TrainerV1alpha1TrainJob,
    TrainerV1alpha1TrainJobSpec,
)

from cifarflow.k8s import names, podspec
from cifarflow.k8s.settings import K8sSettings

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
RUNTIME_KIND = "ClusterTrainingRuntime"
RUNTIME_PLURAL = "clustertrainingruntimes"
STEP = "train"
# The names Trainer v2 looks for: the replicated job labelled as the trainer step, and its container `node`.
REPLICATED_JOB = "node"
CONTAINER = "node"
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
PORT_NAME = "tf"
PORT = 2222
# Labels JobSet and the Job controller put on every pod.
POD_JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"
POD_REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
POD_JOB_INDEX_LABEL = "jobset.sigs.k8s.io/job-index"
POD_COMPLETION_INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
# What the container learns through the downward API (read by cifarflow.train.cluster_spec).
ENV_JOBSET_NAME = "JOBSET_NAME"
ENV_REPLICATED_JOB = "JOBSET_REPLICATED_JOB"
ENV_JOB_INDEX = "JOBSET_JOB_INDEX"
ENV_NUM_NODES = "CIFARFLOW_TF_NUM_WORKERS"
ENV_PORT = "CIFARFLOW_TF_PORT"
# Exit codes 128+signal (SIGKILL of a preempted node or an OOM kill, 138 = a lost peer, SIGTERM) are retried
# within the Job's backoffLimit; any other non-zero exit (a bug, bad input) fails the TrainJob at once: the
# same rule as the TFJob's restartPolicy ExitCode.
RETRYABLE_EXIT_CODES = list(range(128, 160))
PATCH_MANAGER = "cifarflow.io/launcher"
COMPONENT_LABEL = "cifarflow.io/component"


def _downward(name: str, label: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{label}']"}}}


def runtime_env() -> list[dict[str, Any]]:
    """The pod's place in the JobSet, from its labels; plus the plain env every cifarflow container has."""
    plain = [e for e in podspec.base_env(K8sSettings()) if e["name"] != "AWS_ENDPOINT_URL"]
    return [
        _downward(ENV_JOBSET_NAME, POD_JOBSET_LABEL),
        _downward(ENV_REPLICATED_JOB, POD_REPLICATED_JOB_LABEL),
        _downward(ENV_JOB_INDEX, POD_JOB_INDEX_LABEL),
        {"name": ENV_PORT, "value": str(PORT)},
        *plain,
    ]


def build_runtime(settings: K8sSettings, *, name: str | None = None) -> dict[str, Any]:
    """The ClusterTrainingRuntime (cluster-scoped) as a JSON-ready dict."""
    t = settings.train
    container = {
        "name": CONTAINER,
        "image": t.image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": runtime_env(),
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "resources": podspec.train_resources(t.model_copy(update={"gpus": 0})),
        "securityContext": podspec.container_security_context(),
        "volumeMounts": [podspec.scratch_mount()],
    }
    pod = {
        "metadata": {"labels": names.labels(STEP, None, settings.labels) | {COMPONENT_LABEL: "trainer"}},
        "spec": {
            # podFailurePolicy requires Never: the Job, not the kubelet, decides about a failed pod.
            "restartPolicy": "Never",
            "serviceAccountName": settings.service_accounts.trainer,
            # Training never calls the Kubernetes API: no token in the pod.
            "automountServiceAccountToken": False,
            "securityContext": podspec.pod_security_context(),
            "volumes": [podspec.scratch_volume(t.scratch_size_limit)],
            "containers": [container],
        },
    }
    job = {
        "name": REPLICATED_JOB,
        "template": {
            "metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
            "spec": {
                # Indexed: each pod gets JOB_COMPLETION_INDEX and a stable host name (its TF task index).
                "completionMode": "Indexed",
                "backoffLimit": t.backoff_limit,
                "ttlSecondsAfterFinished": t.ttl_seconds_after_finished,
                "podFailurePolicy": {
                    "rules": [
                        {
                            "action": "FailJob",
                            "onExitCodes": {
                                "containerName": CONTAINER,
                                "operator": "NotIn",
                                "values": RETRYABLE_EXIT_CODES,
                            },
                        },
                        # A node drained or preempted: not the job's fault, retry without counting it.
                        {
                            "action": "Ignore",
                            "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                        },
                    ]
                },
                "template": pod,
            },
        },
    }
    jobset = JobsetV1alpha2JobSetSpec.from_dict(
        {
            # Workers resolve each other before they are Ready (they become ready only once all are up).
            "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
            "replicatedJobs": [job],
        }
    )
    runtime = TrainerV1alpha1ClusterTrainingRuntime(
        api_version=f"{GROUP}/{VERSION}",
        kind=RUNTIME_KIND,
        metadata=IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name or t.runtime,
            labels=names.labels(STEP, None, settings.labels)
            | {"trainer.kubeflow.org/framework": "tensorflow"},
        ),
        spec=TrainerV1alpha1TrainingRuntimeSpec(
            ml_policy=TrainerV1alpha1MLPolicy(num_nodes=1),
            template=TrainerV1alpha1JobSetTemplateSpec(spec=jobset),
        ),
    )
    return runtime.to_dict()


def _env(settings: K8sSettings, config_map: str | None, keys: list[str]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": ENV_NUM_NODES, "value": str(settings.train.workers)}]
    if settings.storage.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": settings.storage.s3_endpoint})
    secret = settings.storage.credentials_secret
    if secret:
        # TrainJob env has no envFrom: the two keys botocore reads, by reference (never a value in a spec).
        optional = settings.storage.credentials_optional
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref: dict[str, Any] = {"name": secret, "key": key} | ({"optional": True} if optional else {})
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    for key in keys if config_map else []:
        # Arguments may say $(VAR): the kubelet expands it from the container's env (here, a ConfigMap).
        env.append(
            {
                "name": key,
                "valueFrom": {
                    "configMapKeyRef": {"name": config_map, "key": key, "optional": key == "AWS_ENDPOINT_URL"}
                },
            }
        )
    return env


def _gpu_patch(settings: K8sSettings) -> TrainerV1alpha1RuntimePatch | None:
    """GPU nodes: a nodeSelector and the GPU taint's toleration, patched onto the runtime's pods."""
    t = settings.train
    if not t.gpus:
        return None
    pod: dict[str, Any] = {"tolerations": podspec.tolerations(t.gpu_tolerations)}
    if t.gpu_node_selector:
        pod["nodeSelector"] = dict(t.gpu_node_selector)
    patch = {
        "template": {
            "spec": {
                "replicatedJobs": [
                    {"name": REPLICATED_JOB, "template": {"spec": {"template": {"spec": pod}}}}
                ]
            }
        }
    }
    return TrainerV1alpha1RuntimePatch(
        manager=PATCH_MANAGER,
        training_runtime_spec=TrainerV1alpha1TrainingRuntimeSpecPatch.from_dict(patch),
    )


def build(
    settings: K8sSettings,
    *,
    name: str,
    args: list[str],
    run_id: str | None = None,
    suspend: bool = False,
    env_from_config_map: str | None = None,
    config_map_keys: list[str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The TrainJob as a JSON-ready dict."""
    t = settings.train
    patch = _gpu_patch(settings)
    env = _env(settings, env_from_config_map, config_map_keys or [])
    job = TrainerV1alpha1TrainJob(
        api_version=f"{GROUP}/{VERSION}",
        kind=KIND,
        metadata=IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name,
            namespace=settings.namespace,
            labels=names.labels(STEP, run_id, settings.labels),
            annotations=annotations or None,
        ),
        spec=TrainerV1alpha1TrainJobSpec(
            runtime_ref=TrainerV1alpha1RuntimeRef(api_group=GROUP, kind=RUNTIME_KIND, name=t.runtime),
            # Enforced by Trainer even if the launcher that watches the job is gone.
            # (At least 1: the CRD's minimum, for sub-second test timeouts.)
            active_deadline_seconds=max(1, math.ceil(settings.watch.timeout_s)),
            suspend=suspend or None,
            trainer=TrainerV1alpha1Trainer(
                image=t.image,
                args=args,
                num_nodes=t.workers,
                env=[IoK8sApiCoreV1EnvVar.from_dict(e) for e in env],
                resources_per_node=IoK8sApiCoreV1ResourceRequirements.from_dict(podspec.train_resources(t)),
            ),
            runtime_patches=[patch] if patch else None,
        ),
    )
    return job.to_dict()
