"""What the KFP components pass to the steps (plain values, typed here) and the checks on the pipeline's
arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

from cifarflow.backends import BACKEND_NAMES, K8sOptions
from cifarflow.backends.kubernetes import SparkResources, TrainerResources
from cifarflow.errors import InputError
from cifarflow.train.config import ModelName


@dataclass(frozen=True)
class Cluster:
    """Where and how a step's job runs."""

    backend: str
    namespace: str  # "" = the deployment's
    s3_endpoint: str  # "" = the deployment's
    timeout_s: int

    def options(
        self, *, spark: SparkResources | None = None, trainer: TrainerResources | None = None
    ) -> K8sOptions:
        """The Kubernetes backend's options (the local backend needs none)."""
        return K8sOptions(self.namespace, self.s3_endpoint, self.timeout_s, spark, trainer)


@dataclass(frozen=True)
class PreprocessInputs:
    dataset_id: str  # what `plan` computed; the committed dataset must carry the same id
    raw_url: str
    workdir: str
    val_fraction: float
    seed: int
    partitions: int  # 0 = let the job decide
    image_size: int  # image folders: 0 = keep their one size
    strict: bool  # image folders: stop at an undecodable file
    spark: SparkResources
    cluster: Cluster


@dataclass(frozen=True)
class TrainInputs:
    dataset_url: str  # a dataset folder or its _manifest.json (the Dataset artifact's URI)
    workdir: str
    model: str
    epochs: int
    batch_size: int
    seed: int
    trainer: TrainerResources
    cluster: Cluster
    run_name: str = ""  # "" = named by the dataset and the settings, like `cifarflow run`


# The parameters with a fixed set of values, checked before anything is uploaded or run.
CHOICES: dict[str, tuple[str, ...]] = {"backend": BACKEND_NAMES, "model": get_args(ModelName)}


def check_arguments(arguments: dict[str, Any]) -> None:
    """Refuse arguments no step accepts before anything is uploaded or run (the steps check again)."""
    for name, allowed in CHOICES.items():
        if name in arguments and arguments[name] not in allowed:
            raise InputError(
                f"pipeline parameter {name}={arguments[name]!r} is not one of {', '.join(allowed)}",
                f"pass --param {name}={allowed[0]} (or another of those)",
            )
