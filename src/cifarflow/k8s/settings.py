"""Typed settings for running cifarflow's jobs on Kubernetes.

One :class:`K8sSettings` describes where jobs run (namespace, images, service accounts), how the bucket is
reached (an S3 endpoint plus a credentials Secret, or Workload Identity on GKE) and how big each job is.
Defaults suit a minikube cluster with the ``k8s/overlays/minikube`` deployment; every field can be overridden
from the environment (``CIFARFLOW_K8S_<FIELD>``, nested fields with ``__``:
``CIFARFLOW_K8S_SPARK__EXECUTORS=4``) or in Python.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cifarflow.errors import InputError

ENV_PREFIX = "CIFARFLOW_K8S_"

# Kubernetes quantities: "500m", "2", "1.5", "4Gi", "512M" ...
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
# Spark's JVM memory strings: "512m", "2g" (what spark.driver.memory accepts).
_JVM_MEMORY = re.compile(r"^[0-9]+[kmgt]?$")


M = TypeVar("M", bound=BaseModel)

# A quantity given as a number in the environment (CIFARFLOW_K8S_TRAIN__CPU=2) parses as JSON 2: a string field
# takes it as "2".
SETTINGS_CONFIG = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class _Model(BaseModel):
    model_config = SETTINGS_CONFIG


class Toleration(_Model):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


class SparkPod(_Model):
    """Driver or executor size. Spark derives the pod's memory request *and* limit from memory + overhead."""

    cores: int = Field(default=1, ge=1)
    core_request: str = "500m"
    core_limit: str = "1"
    memory: str = "1g"
    # Off-heap room for the Python workers that decode images (Spark's default for Python is 40% of memory).
    memory_overhead: str = "512m"

    @field_validator("core_request", "core_limit")
    @classmethod
    def _cpu(cls, v: str) -> str:
        if not _QUANTITY.match(v):
            raise ValueError(f"{v!r} is not a Kubernetes CPU quantity (e.g. 500m, 1, 2)")
        return v

    @field_validator("memory", "memory_overhead")
    @classmethod
    def _mem(cls, v: str) -> str:
        if not _JVM_MEMORY.match(v):
            raise ValueError(f"{v!r} is not a Spark memory size (e.g. 512m, 2g)")
        return v


class DynamicAllocation(_Model):
    """Executors follow the backlog; shuffle tracking stands in for an external shuffle service."""

    enabled: bool = True
    min_executors: int = Field(default=1, ge=0)
    max_executors: int = Field(default=4, ge=1)
    # Keep executors that hold shuffle files at most this long after their last use.
    shuffle_tracking_timeout_ms: int = Field(default=120_000, ge=0)


class SparkSettings(_Model):
    image: str = "cifarflow-spark"
    # The Spark inside the image (pyspark==4.3.0); the operator's spark-submit is only the submitting client.
    spark_version: str = "4.3.0"
    main_application_file: str = "local:///opt/cifarflow/main.py"
    driver: SparkPod = SparkPod()
    executor: SparkPod = SparkPod(
        cores=1, core_request="500m", core_limit="1", memory="1g", memory_overhead="1g"
    )
    executors: int = Field(
        default=2, ge=1, description="Initial executor count (dynamic allocation may scale it)."
    )
    dynamic_allocation: DynamicAllocation = DynamicAllocation()
    # restartPolicy OnFailure: the operator re-runs a failed application this many times.
    on_failure_retries: int = Field(default=2, ge=0)
    on_failure_retry_interval_s: int = Field(default=10, ge=1)
    on_submission_failure_retries: int = Field(default=3, ge=0)
    on_submission_failure_retry_interval_s: int = Field(default=20, ge=1)
    # Graceful executor decommissioning: shuffle and cached blocks migrate before a pod goes away.
    decommission: bool = True
    executor_grace_period_s: int = Field(default=60, ge=1)
    ttl_seconds: int = Field(
        default=86_400, ge=60, description="Finished applications are deleted after this."
    )
    scratch_size_limit: str = "8Gi"
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    spark_conf: dict[str, str] = Field(
        default_factory=dict, description="Extra --conf entries (win over ours)."
    )


class TrainSettings(_Model):
    image: str = "cifarflow-trainer"
    workers: int = Field(default=2, ge=1)
    # A Chief replica coordinates checkpoints and exports; without one, worker 0 plays that role.
    chief: bool = False
    gpus: int = Field(default=0, ge=0, description="nvidia.com/gpu per replica.")
    cpu: str = "1"
    cpu_limit: str = "2"
    memory: str = "3Gi"
    memory_limit: str = "4Gi"
    backoff_limit: int = Field(default=3, ge=0)
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    ttl_seconds_after_finished: int = Field(default=86_400, ge=60)
    scratch_size_limit: str = "4Gi"
    # Where GPU replicas may land (GKE: cloud.google.com/gke-accelerator) and the GPU taint they tolerate.
    gpu_node_selector: dict[str, str] = Field(default_factory=dict)
    gpu_tolerations: list[Toleration] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    )
    # Trainer v2 only: the ClusterTrainingRuntime TrainJobs reference (k8s/components/trainer-v2).
    runtime: str = "cifarflow-tensorflow"

    @field_validator("cpu", "cpu_limit", "memory", "memory_limit")
    @classmethod
    def _quantity(cls, v: str) -> str:
        if not _QUANTITY.match(v):
            raise ValueError(f"{v!r} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)")
        return v


class StorageSettings(_Model):
    """How pods reach the bucket. Credentials are never inlined: a Secret's keys become env (or, on GKE,
    Workload Identity needs none)."""

    s3_endpoint: str | None = "http://seaweedfs.cifarflow.svc:8333"
    # Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; None = ambient identity (GKE Workload Identity).
    credentials_secret: str | None = "cifarflow-s3"
    # Only for the deployed one-shot jobs, which must start on GKE too where no such Secret exists.
    credentials_optional: bool = False


class ServiceAccounts(_Model):
    spark_driver: str = "cifarflow-spark-driver"
    spark_executor: str = "cifarflow-spark-executor"
    trainer: str = "cifarflow-trainer"


class WatchSettings(_Model):
    timeout_s: float = Field(default=3 * 3600, gt=0, description="A job still running after this is deleted.")
    # Length of one watch request; between requests the launcher inspects pods (image pulls, OOM kills).
    window_s: float = Field(default=15, gt=0)
    log_tail_lines: int = Field(default=200, ge=1)


# Which operator runs training: Training Operator v1 (TFJob, kubeflow.org/v1) or Kubeflow Trainer v2
# (TrainJob on JobSet, trainer.kubeflow.org/v1alpha1, with cifarflow's TensorFlow ClusterTrainingRuntime).
TrainerKind = Literal["tfjob", "trainjob"]


class K8sSettings(_Model):
    namespace: str = "cifarflow"
    trainer: TrainerKind = "tfjob"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    storage: StorageSettings = StorageSettings()
    service_accounts: ServiceAccounts = ServiceAccounts()
    spark: SparkSettings = SparkSettings()
    train: TrainSettings = TrainSettings()
    watch: WatchSettings = WatchSettings()
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on every object and pod.")
    # In the cluster: take the spark/trainer image refs from the deployed one-shot objects (skaffold tags them).
    images_from_cluster: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> K8sSettings:
        """Defaults, then ``CIFARFLOW_K8S_*`` variables, then keyword overrides (nested dicts merge)."""
        return from_env(cls, ENV_PREFIX, "Kubernetes", environ, overrides)


def from_env(
    model: type[M], prefix: str, what: str, environ: Mapping[str, str] | None, overrides: Mapping[str, Any]
) -> M:
    """``model`` from its defaults, then the ``<prefix><FIELD>`` variables (nested fields with ``__``; values
    parsed as JSON where they are JSON), then ``overrides`` (nested dicts merge; ``None`` leaves a value). A
    refused value is one line naming its variable."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    for key, raw in env.items():
        if key.startswith(prefix):
            _put(data, key[len(prefix) :].lower().split("__"), _parse(raw))
    _merge(data, {k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(
            f"invalid {what} setting {where}: {first['msg']}",
            f"fix {prefix}{where.upper().replace('.', '__')} or the matching option",
        ) from None


def _parse(raw: str) -> Any:
    """Env values are JSON where they parse as JSON (numbers, booleans, objects), else plain strings."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _put(data: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        data = data.setdefault(part, {})
    data[path[-1]] = value


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        plain = value.model_dump() if isinstance(value, BaseModel) else value
        if isinstance(plain, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], plain)
        else:
            into[key] = plain
