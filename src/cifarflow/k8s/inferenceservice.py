"""The KServe ``InferenceService`` (``serving.kserve.io/v1beta1``, KServe v0.20 CRDs) that serves a model.

Built with the ``kserve`` SDK's models. Two runtimes:

- ``cifarflow`` (the default): a custom predictor running ``cifarflow serve`` in the pipeline image. It reads
  the SavedModel exactly where ``cifarflow train`` wrote it, through the same storage layer (S3 endpoint and
  credentials Secret, or GKE Workload Identity), and speaks the same V2 protocol with class names as
  ``cifarflow serve`` on a laptop: one protocol, one set of tests, everywhere.
- ``tensorflow``: KServe's stock TensorFlow Serving runtime, ``storageUri`` = ``MODEL/tfserving`` (TF Serving
  wants numbered version folders; ``deploy`` publishes ``MODEL/saved_model`` there as version 1). It speaks
  V1 (``:predict``) and needs KServe's storage-initializer credentials: a service account whose Secret carries
  the ``serving.kserve.io/s3-*`` annotations (docs/serving.md).

Pods are hardened like every cifarflow pod (``podspec``); KServe runs in RawDeployment mode (no Knative).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, Literal

from kubernetes.client import ApiClient
from pydantic import BaseModel, Field

from cifarflow.errors import InputError
from cifarflow.k8s import names, podspec
from cifarflow.k8s.client import JobKind
from cifarflow.k8s.settings import SETTINGS_CONFIG, K8sSettings, from_env
from cifarflow.k8s.tfjob import _model as typed  # the shared dict -> client model conversion

INFERENCE_SERVICE = JobKind(
    "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService", "KServe v0.20 (RawDeployment)"
)
CONTAINER = "kserve-container"  # the name KServe expects for a custom predictor's container
PORT = 8080
STEP = "serve"
ANNOTATION_MODEL = "cifarflow.io/model"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
POD_LABEL = "serving.kserve.io/inferenceservice"  # on every predictor pod KServe creates
TFSERVING_FOLDER = "tfserving"
ENV_PREFIX = "CIFARFLOW_SERVE_"

Runtime = Literal["cifarflow", "tensorflow"]


class ServingSettings(BaseModel):
    """Size and identity of the predictor; every field from ``CIFARFLOW_SERVE_<FIELD>``."""

    model_config = SETTINGS_CONFIG

    runtime: Runtime = "cifarflow"
    image: str = "cifarflow-pipeline"
    # GCS: a Kubernetes SA bound to a Google SA (Workload Identity). S3: KServe's storage-initializer reads
    # the credentials of the Secret this SA lists (stock runtime only; cifarflow's reads the Secret as env).
    service_account: str | None = None
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    cpu: str = "500m"
    cpu_limit: str = "2"
    memory: str = "1Gi"
    memory_limit: str = "2Gi"
    gpus: int = Field(default=0, ge=0)
    scratch_size_limit: str = "1Gi"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServingSettings:
        return from_env(cls, ENV_PREFIX, "serving", environ, overrides)


def _kserve() -> Any:
    # kserve.model_server parses sys.argv on import: hide the CLI's arguments from it.
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve
    finally:
        sys.argv = argv
    return kserve


def _resources(s: ServingSettings) -> dict[str, dict[str, str]]:
    requests = {"cpu": s.cpu, "memory": s.memory}
    limits = {"cpu": s.cpu_limit, "memory": s.memory_limit}
    if s.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(s.gpus)
    return {"requests": requests, "limits": limits}


def _custom_container(
    settings: K8sSettings, serving: ServingSettings, model: str, name: str
) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/v2/health/ready", "port": PORT}, "periodSeconds": 5}
    return {
        "name": CONTAINER,
        "image": serving.image,
        "imagePullPolicy": settings.image_pull_policy,
        "args": ["serve", "--model", model, "--name", name, "--port", str(PORT)],
        "ports": [{"containerPort": PORT, "protocol": "TCP"}],
        "env": podspec.base_env(settings),
        "envFrom": podspec.credentials_env_from(settings),
        "resources": _resources(serving),
        "securityContext": podspec.container_security_context(),
        "volumeMounts": [podspec.scratch_mount()],
        "readinessProbe": probe,
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": PORT}, "periodSeconds": 10},
    }


def build(
    settings: K8sSettings,
    serving: ServingSettings,
    *,
    name: str,
    model: str,
    canary_percent: int | None = None,
) -> dict[str, Any]:
    """The InferenceService as plain JSON (what is sent, printed and validated)."""
    ks = _kserve()
    predictor: dict[str, Any] = {
        "min_replicas": serving.min_replicas,
        "max_replicas": serving.max_replicas,
        "service_account_name": serving.service_account,
        "canary_traffic_percent": canary_percent,
        "security_context": typed(podspec.pod_security_context(), "V1PodSecurityContext"),
        "volumes": [typed(podspec.scratch_volume(serving.scratch_size_limit), "V1Volume")],
    }
    if serving.runtime == "cifarflow":
        container = _custom_container(settings, serving, model, name)
        predictor["containers"] = [typed(container, "V1Container")]
    else:
        predictor["model"] = ks.V1beta1ModelSpec(
            model_format=ks.V1beta1ModelFormat(name="tensorflow"),
            storage_uri=tfserving_uri(model),
            resources=typed(_resources(serving), "V1ResourceRequirements"),
            security_context=typed(podspec.container_security_context(), "V1SecurityContext"),
            env=[typed(e, "V1EnvVar") for e in podspec.base_env(settings)],
        )
    isvc = ks.V1beta1InferenceService(
        api_version=INFERENCE_SERVICE.api_version,
        kind=INFERENCE_SERVICE.kind,
        metadata=typed(
            {
                "name": name,
                "namespace": settings.namespace,
                "labels": names.labels(STEP, extra=settings.labels),
                "annotations": {DEPLOYMENT_MODE: "RawDeployment", ANNOTATION_MODEL: model},
            },
            "V1ObjectMeta",
        ),
        spec=ks.V1beta1InferenceServiceSpec(predictor=ks.V1beta1PredictorSpec(**predictor)),
    )
    body: dict[str, Any] = ApiClient().sanitize_for_serialization(isvc)
    body["metadata"]["annotations"][names.ANNOTATION_SPEC_HASH] = names.spec_hash(body["spec"])
    return body


def tfserving_uri(model: str) -> str:
    return model.rstrip("/") + "/" + TFSERVING_FOLDER


def service_name(name: str) -> str:
    """A DNS-1035 name KServe accepts (it prefixes pods and Services with it)."""
    slug = names.slug(name, 45)
    if not slug or not slug[0].isalpha():
        raise InputError(f"--name {name!r} is not a valid InferenceService name", "use letters, digits and -")
    return slug
