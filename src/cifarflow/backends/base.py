"""The seam between what a step computes and where it runs: one abstract :class:`Backend`, typed requests and
results. :mod:`cifarflow.backends.local` runs in this process, :mod:`cifarflow.backends.kubernetes` as
Kubernetes jobs; :func:`cifarflow.backends.get_backend` chooses. Deploying a model is the third job: an
InferenceService on Kubernetes, a servability check with the command that serves it here.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from cifarflow.config import DeployConfig, PreprocessConfig
from cifarflow.storage import Store
from cifarflow.train.config import TrainConfig

BackendName = Literal["local", "k8s"]
BACKEND_NAMES: tuple[str, ...] = get_args(BackendName)


@dataclass(frozen=True)
class PreprocessRequest:
    raw_url: str  # the DEST/raw root that ingest wrote
    datasets_url: str  # the datasets root: the dataset lands in DATASETS/<dataset-id>/
    params: PreprocessConfig
    dataset_id: str = ""  # the planned id, where known (the pipeline's plan step): it names the job
    master: str | None = None  # Spark master in this process (None: spark-submit's, else local[*])


@dataclass(frozen=True)
class TrainRequest:
    cfg: TrainConfig  # cfg.data and cfg.out say where
    run_name: str  # the run's name (cifarflow.train.runs): a job trains one run, so it names the job
    hooks: Any = None  # progress hooks for training in this process (cifarflow.train.trainer.Hooks)


@dataclass(frozen=True)
class DeployRequest:
    model_url: str  # a model folder `cifarflow train` wrote (the SavedModel under saved_model/)
    params: DeployConfig = field(default_factory=DeployConfig)
    runtime: str | None = None  # the InferenceService's predictor runtime (None: the deployment's)


@dataclass(frozen=True)
class Job:
    """A job a backend ran elsewhere, as the CLI reports it."""

    kind: str
    name: str
    namespace: str
    state: str
    reused: bool  # a completed job from an earlier attempt: nothing ran
    seconds: float


@dataclass(frozen=True)
class Result:
    """What a backend reports: the job (if one ran elsewhere) and the facts a script reads, in order."""

    job: Job | None = None
    outputs: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """``key: value`` lines, the job first: what ``cifarflow preprocess|train`` print."""
        out = []
        if self.job is not None:
            out.append(f"job: {self.job.kind}/{self.job.name} (namespace {self.job.namespace})")
            out.append(f"state: {self.job.state}" + (" (reused)" if self.job.reused else ""))
        return out + [f"{key}: {value}" for key, value in self.outputs.items()]


class PreprocessResult(Result):
    pass


class TrainResult(Result):
    pass


class DeployResult(Result):
    pass


class Backend(abc.ABC):
    """Runs cifarflow's jobs somewhere. Each method returns when the job has finished (or raises a
    :class:`cifarflow.errors.CifarflowError`)."""

    name: BackendName

    def __init__(self, store: Store) -> None:
        self.store = store

    @abc.abstractmethod
    def preprocess(self, request: PreprocessRequest) -> PreprocessResult:
        """Commit the dataset the raw data and ``request.params`` define (reused if committed already)."""

    @abc.abstractmethod
    def train(self, request: TrainRequest) -> TrainResult:
        """Train ``request.cfg`` into ``cfg.out`` (resuming its last checkpoint)."""

    @abc.abstractmethod
    def deploy(self, request: DeployRequest) -> DeployResult:
        """Make ``request.model_url`` served under ``request.params.name`` (an unchanged model: no change)."""
