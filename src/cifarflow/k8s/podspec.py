"""The pod hardening every cifarflow pod gets, written once as plain Kubernetes JSON.

Both builders convert these dicts into their model classes (kubeflow-spark-api's pydantic models for the
SparkApplication, the kubernetes client's models for the TFJob), so the policy cannot drift between the two
jobs. The images run under any non-root uid (files are world-readable, HOME and scratch live on emptyDir
volumes), which is what lets the root filesystem be read-only.
"""

from __future__ import annotations

from typing import Any

from cifarflow.k8s.settings import K8sSettings, Toleration, TrainSettings

# A high uid/gid that cannot collide with a host user (checkov CKV_K8S_40); the images do not depend on it.
RUN_AS = 10001
SCRATCH_VOLUME = "scratch"
SCRATCH_PATH = "/tmp"


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def scratch_volume(size_limit: str) -> dict[str, Any]:
    """The only writable place in the container: Python/TensorFlow temp files and HOME."""
    return {"name": SCRATCH_VOLUME, "emptyDir": {"sizeLimit": size_limit}}


def scratch_mount() -> dict[str, Any]:
    return {"name": SCRATCH_VOLUME, "mountPath": SCRATCH_PATH}


def base_env(settings: K8sSettings) -> list[dict[str, Any]]:
    """Plain (non-secret) environment every job container gets."""
    env = [
        {"name": "HOME", "value": SCRATCH_PATH},
        {"name": "TMPDIR", "value": SCRATCH_PATH},
        # Python would otherwise try to write __pycache__ next to read-only sources.
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "CIFARFLOW_LOG_LEVEL", "value": "INFO"},
    ]
    if settings.storage.s3_endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": settings.storage.s3_endpoint})
    return env


def credentials_env_from(settings: K8sSettings) -> list[dict[str, Any]]:
    """Bucket credentials: every key of the Secret becomes an env var; nothing secret is ever in a spec."""
    secret = settings.storage.credentials_secret
    if not secret:
        return []
    ref: dict[str, Any] = {"name": secret}
    if settings.storage.credentials_optional:
        ref["optional"] = True
    return [{"secretRef": ref}]


def tolerations(items: list[Toleration]) -> list[dict[str, Any]]:
    return [t.model_dump(exclude_none=True) for t in items]


def train_resources(t: TrainSettings) -> dict[str, dict[str, str]]:
    """A training replica's requests and limits; GPUs are requested and limited alike."""
    requests: dict[str, str] = {"cpu": t.cpu, "memory": t.memory}
    limits: dict[str, str] = {"cpu": t.cpu_limit, "memory": t.memory_limit}
    if t.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(t.gpus)
    return {"requests": requests, "limits": limits}
