"""The TFJob (Training Operator v1.9.4, ``kubeflow.org/v1``) that runs ``cifarflow train`` on workers (and a
chief).

Built with ``kubeflow-training`` 1.9.4's models (the ``KubeflowOrgV1*`` job types around the ``kubernetes``
client's ``V1PodTemplateSpec``); both co-install with kfp 2.17.0 (``kubernetes<31``). The operator injects
``TF_CONFIG`` into every replica and wires them through the ``tfjob-port`` of the container named
``tensorflow``, the names it expects.
"""

from __future__ import annotations

import json
from typing import Any

from kubeflow.training.models import (
    KubeflowOrgV1ReplicaSpec,
    KubeflowOrgV1RunPolicy,
    KubeflowOrgV1TFJob,
    KubeflowOrgV1TFJobSpec,
)
from kubernetes.client import (
    ApiClient,
    V1Container,
    V1ContainerPort,
    V1ObjectMeta,
    V1PodSpec,
    V1PodTemplateSpec,
    V1ResourceRequirements,
)

from cifarflow.k8s import names, podspec
from cifarflow.k8s.settings import K8sSettings

GROUP = "kubeflow.org"
VERSION = "v1"
PLURAL = "tfjobs"
KIND = "TFJob"
STEP = "train"
CONTAINER = "tensorflow"
PORT_NAME = "tfjob-port"
PORT = 2222
# Labels the Training Operator puts on every replica pod.
POD_JOB_LABEL = "training.kubeflow.org/job-name"
POD_REPLICA_TYPE_LABEL = "training.kubeflow.org/replica-type"
POD_REPLICA_INDEX_LABEL = "training.kubeflow.org/replica-index"
COMPONENT_LABEL = "cifarflow.io/component"


class _Json:
    """The shape ``ApiClient.deserialize`` reads: lets the shared policy dicts become typed client models."""

    def __init__(self, obj: Any) -> None:
        self.data = json.dumps(obj)


def _model(obj: Any, klass: str) -> Any:
    return ApiClient().deserialize(_Json(obj), klass)


def _replica(
    settings: K8sSettings,
    *,
    args: list[str],
    pod_labels: dict[str, str],
    replicas: int,
    env_from_config_map: str | None,
) -> KubeflowOrgV1ReplicaSpec:
    t = settings.train
    resources = podspec.train_resources(t)
    node_selector = None
    tolerations = None
    if t.gpus:
        node_selector = dict(t.gpu_node_selector) or None
        tolerations = podspec.tolerations(t.gpu_tolerations) or None
    env_from = podspec.credentials_env_from(settings)
    if env_from_config_map:
        # Arguments may say $(VAR): the kubelet expands it from the container's env (here, a ConfigMap).
        env_from.append({"configMapRef": {"name": env_from_config_map}})
    container = V1Container(
        name=CONTAINER,
        image=t.image,
        image_pull_policy=settings.image_pull_policy,
        args=args,
        env=_model(podspec.base_env(settings), "list[V1EnvVar]"),
        env_from=_model(env_from, "list[V1EnvFromSource]") or None,
        ports=[V1ContainerPort(name=PORT_NAME, container_port=PORT, protocol="TCP")],
        resources=V1ResourceRequirements(requests=resources["requests"], limits=resources["limits"]),
        security_context=_model(podspec.container_security_context(), "V1SecurityContext"),
        volume_mounts=_model([podspec.scratch_mount()], "list[V1VolumeMount]"),
    )
    pod = V1PodSpec(
        containers=[container],
        service_account_name=settings.service_accounts.trainer,
        # Training never calls the Kubernetes API: no token in the pod.
        automount_service_account_token=False,
        security_context=_model(podspec.pod_security_context(), "V1PodSecurityContext"),
        volumes=_model([podspec.scratch_volume(t.scratch_size_limit)], "list[V1Volume]"),
        node_selector=node_selector,
        tolerations=_model(tolerations, "list[V1Toleration]") if tolerations else None,
    )
    return KubeflowOrgV1ReplicaSpec(
        replicas=replicas,
        # ExitCode: exit codes 1-127 are permanent failures, signals (128+, e.g. a preempted node) are retried.
        restart_policy="ExitCode",
        template=V1PodTemplateSpec(metadata=V1ObjectMeta(labels=pod_labels), spec=pod),
    )


def build(
    settings: K8sSettings,
    *,
    name: str,
    args: list[str],
    run_id: str | None = None,
    suspend: bool = False,
    env_from_config_map: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The TFJob as a JSON-ready dict."""
    t = settings.train
    meta_labels = names.labels(STEP, run_id, settings.labels)
    pod_labels = meta_labels | {COMPONENT_LABEL: "trainer"}
    specs = {
        "Worker": _replica(
            settings,
            args=args,
            pod_labels=pod_labels,
            replicas=t.workers,
            env_from_config_map=env_from_config_map,
        )
    }
    if t.chief:
        specs["Chief"] = _replica(
            settings, args=args, pod_labels=pod_labels, replicas=1, env_from_config_map=env_from_config_map
        )
    job = KubeflowOrgV1TFJob(
        api_version=f"{GROUP}/{VERSION}",
        kind=KIND,
        metadata=V1ObjectMeta(
            name=name, namespace=settings.namespace, labels=meta_labels, annotations=annotations or None
        ),
        spec=KubeflowOrgV1TFJobSpec(
            run_policy=KubeflowOrgV1RunPolicy(
                backoff_limit=t.backoff_limit,
                clean_pod_policy=t.clean_pod_policy,
                ttl_seconds_after_finished=t.ttl_seconds_after_finished,
                # Enforced by the operator even if the launcher that watches the job is gone.
                active_deadline_seconds=int(settings.watch.timeout_s),
                suspend=suspend or None,
            ),
            tf_replica_specs=specs,
        ),
    )
    out: dict[str, Any] = ApiClient().sanitize_for_serialization(job)
    return out


def train_arguments(data: str, out: str, extra: list[str] | None = None) -> list[str]:
    """Arguments of the trainer image's ``cifarflow train`` entrypoint."""
    return ["--data", data, "--out", out, *(extra or [])]
