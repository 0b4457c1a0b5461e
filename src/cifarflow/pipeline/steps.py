"""What each pipeline step does: the logic behind the KFP components in ``pipelines/components.py``.

A component is wiring: it calls one function here with its plain inputs, then one ``publish_*`` function with
its KFP output artifacts. Everything between (where things live in the workdir, which backend runs a job, what
the artifacts say) is here, typed and testable without KFP.

Workdir layout (the same bucket serves the pipeline and ``cifarflow run``)::

    WORKDIR/raw/...                          ingest's raw members + _ingest.json
    WORKDIR/datasets/<dataset-id>/...        committed datasets (content-addressed)
    WORKDIR/models/<dataset-id>/<run>/...    one model per pipeline run (saved_model/, checkpoints/...)
    WORKDIR/models/<dataset-id>/<run>/evaluation/   metrics.json, report.html of the evaluate step

Backends: ``k8s`` launches a SparkApplication / TFJob through :mod:`cifarflow.k8s` and waits for it; ``local``
runs the same code in the step's own process (Spark local mode, TensorFlow on the CPU).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from cifarflow.errors import CifarflowError, InputError, JobError
from cifarflow.storage import StorageConfig, Store, join, normalize, redact

log = logging.getLogger(__name__)

BACKENDS = ("local", "k8s")
T = TypeVar("T")


# -- where things live ---------------------------------------------------------------------------------------


def raw_root(workdir: str) -> str:
    """What ``ingest`` is given as DEST (it writes DEST/raw)."""
    return _workdir(workdir)


def datasets_root(workdir: str) -> str:
    return join(_workdir(workdir), "datasets")


def model_url(workdir: str, dataset_id: str, run_id: str) -> str:
    from cifarflow.k8s.names import slug

    return join(_workdir(workdir), "models", dataset_id, slug(run_id, 63) or "run")


def _workdir(workdir: str) -> str:
    if not workdir.strip():
        raise InputError(
            "the workdir parameter is empty", "pass a bucket URL or folder, e.g. workdir=s3://bucket/work"
        )
    return normalize(workdir.strip()).rstrip("/")


def make_store(s3_endpoint: str) -> Store:
    """Empty endpoint = whatever the environment says (AWS_ENDPOINT_URL), or none (GCS, AWS)."""
    return Store(StorageConfig.from_env(s3_endpoint or None))


# -- the settings components pass ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """Where and how a step's job runs."""

    backend: str
    namespace: str
    bucket_secret: str  # Secret with the bucket's credentials for the job's pods; "" = ambient identity (GKE)
    s3_endpoint: str
    run_id: str
    timeout_s: int

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(
                f"unknown backend {self.backend!r}", f"use backend={' or backend='.join(BACKENDS)}"
            )

    @property
    def store(self) -> Store:
        return make_store(self.s3_endpoint)


@dataclass(frozen=True)
class SparkSettings:
    image: str
    executors: int
    executor_cores: int
    executor_memory: str
    driver_memory: str


@dataclass(frozen=True)
class TFJobSettings:
    image: str
    workers: int
    gpus_per_worker: int


@dataclass(frozen=True)
class PreprocessRequest:
    dataset_id: str  # what `plan` computed; the committed dataset must carry the same id
    raw_url: str
    workdir: str
    val_fraction: float
    seed: int
    partitions: int  # 0 = let the job decide
    spark: SparkSettings
    cluster: Cluster


@dataclass(frozen=True)
class TrainRequest:
    dataset_url: str  # a dataset folder or its _manifest.json (the Dataset artifact's URI)
    workdir: str
    model: str
    epochs: int
    batch_size: int
    seed: int
    tfjob: TFJobSettings
    cluster: Cluster


# -- what steps return ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ingested:
    raw_url: str
    archive_md5: str


@dataclass(frozen=True)
class DatasetInfo:
    dataset_id: str
    dataset_url: str
    manifest_url: str
    counts: dict[str, int]  # rows per split
    class_names: list[str]
    reused: bool


@dataclass(frozen=True)
class ModelInfo:
    model_url: str
    saved_model_url: str
    dataset_id: str
    model: str
    epochs: int
    batch_size: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float
    class_names: list[str]
    confusion: list[list[int]]
    report_url: str
    metrics_url: str
    test_images: int
    report_html: bytes = field(repr=False, default=b"")


# -- the error contract inside a KFP pod ---------------------------------------------------------------------


def step(func: Callable[..., T]) -> Callable[..., T]:
    """Run a step with cifarflow's logging; a user-facing failure becomes one ``error:`` line and exit 2.

    KFP shows a step's log; one line naming the problem and the fix reads better there than a traceback, and
    ``pipeline run-local`` lifts that line into its own error.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        from cifarflow import log as cflog

        cflog.setup()
        try:
            return func(*args, **kwargs)
        except CifarflowError as exc:
            sys.stderr.write(f"error: {exc}\n")
            sys.stderr.flush()
            raise SystemExit(exc.exit_code) from None

    return wrapper


# -- the steps -----------------------------------------------------------------------------------------------


@step
def ingest(*, source: str, workdir: str, s3_endpoint: str) -> Ingested:
    from cifarflow.data import ingest as ingest_mod

    result = ingest_mod.ingest(source, raw_root(workdir), store=make_store(s3_endpoint))
    log.info(
        "raw data at %s (archive md5 %s%s)",
        redact(result.raw_url),
        result.archive_md5,
        ", reused" if result.reused else "",
    )
    return Ingested(result.raw_url, result.archive_md5)


@step
def plan(*, raw_url: str, val_fraction: float, seed: int, s3_endpoint: str) -> str:
    """The dataset id preprocess will commit, from the raw index alone (no Spark, no image read)."""
    from cifarflow.data import manifest as mf
    from cifarflow.data import preprocess as pre

    source = pre.read_source(make_store(s3_endpoint), raw_url)
    dataset_id = mf.dataset_id(source.checksum, pre.parameters(source, val_fraction, seed))
    log.info(
        "dataset id %s (from %s, val fraction %s, seed %d)", dataset_id, redact(raw_url), val_fraction, seed
    )
    return dataset_id


@step
def preprocess(req: PreprocessRequest) -> DatasetInfo:
    """Commit the planned dataset, unless it is committed already (then no job is started at all)."""
    store = req.cluster.store
    out = datasets_root(req.workdir)
    dataset_url = join(out, req.dataset_id)
    reused = _committed(store, dataset_url)
    if reused:
        log.info("dataset %s is already committed: no Spark job", req.dataset_id)
    elif req.cluster.backend == "local":
        _require("pyspark", "preprocess with backend=local", "cifarflow[spark]")
        from cifarflow.data import preprocess as pre

        pre.preprocess(
            req.raw_url,
            out,
            master=None,
            partitions=req.partitions or None,
            val_fraction=req.val_fraction,
            seed=req.seed,
            store=store,
        )
    else:
        _preprocess_on_k8s(req, out)
    info = describe_dataset(store, dataset_url, reused=reused)
    if info.dataset_id != req.dataset_id:
        raise JobError(
            f"preprocess committed {info.dataset_id}, but plan computed {req.dataset_id}",
            "the plan and preprocess images run different cifarflow versions: use one image tag for both",
        )
    return info


@step
def train(req: TrainRequest) -> ModelInfo:
    """Train one model for this run; a retried step resumes from the run's last checkpoint."""
    from cifarflow.data import manifest as mf

    store = req.cluster.store
    manifest, base = mf.load(store, req.dataset_url)
    out = model_url(req.workdir, manifest.dataset_id, req.cluster.run_id)
    if req.cluster.backend == "local":
        _require("tensorflow", "train with backend=local", "cifarflow[train]")
        _train_here(req, base, out)
    else:
        _train_on_k8s(req, base, out)
    saved = join(out, "saved_model")
    if not store.exists(join(saved, "saved_model.pb")):
        raise JobError(
            f"training finished without a SavedModel at {redact(saved)}", "read the training job's log"
        )
    return ModelInfo(out, saved, manifest.dataset_id, req.model, req.epochs, req.batch_size)


@step
def evaluate(*, dataset_url: str, model_url: str, s3_endpoint: str) -> Evaluation:
    """Score the SavedModel on the test split and render the report (TensorFlow on this pod's CPU)."""
    _require("tensorflow", "the evaluate step", "cifarflow[train]")
    from cifarflow.train import evaluate as ev

    store = make_store(s3_endpoint)
    out = join(model_url, "evaluation")
    result = ev.evaluate(dataset_url, model_url, out, store=store)
    return _evaluation(result, out, store)


# -- publishing to KFP artifacts -----------------------------------------------------------------------------


class Artifact(Protocol):
    """The part of ``kfp.dsl.Artifact`` the publishers use (kept structural so tests need no KFP)."""

    uri: str
    metadata: dict[str, Any]

    @property
    def path(self) -> str: ...


def publish_dataset(info: DatasetInfo, artifact: Any) -> None:
    """The Dataset artifact *is* the committed manifest (its URI), with the id and counts for the UI."""
    artifact.uri = info.manifest_url
    artifact.metadata.update(
        {
            "dataset_id": info.dataset_id,
            "dataset_url": info.dataset_url,
            "num_classes": len(info.class_names),
            "class_names": info.class_names,
            "reused": info.reused,
            **{f"{split}_images": rows for split, rows in sorted(info.counts.items())},
        }
    )


def publish_model(info: ModelInfo, artifact: Any) -> None:
    artifact.uri = info.saved_model_url
    artifact.metadata.update(
        {
            "framework": "tensorflow",
            "model_url": info.model_url,
            "dataset_id": info.dataset_id,
            "model": info.model,
            "epochs": info.epochs,
            "batch_size": info.batch_size,
            **info.extra,
        }
    )


def publish_evaluation(result: Evaluation, *, metrics: Any, confusion: Any, report: Any) -> None:
    metrics.log_metric("accuracy", result.accuracy)
    metrics.log_metric("loss", result.loss)
    metrics.log_metric("test_images", result.test_images)
    metrics.metadata["metrics_url"] = result.metrics_url
    confusion.log_confusion_matrix(result.class_names, result.confusion)
    # KFP uploads what is written at .path (a local path in the pod) to the artifact's URI after the step.
    os.makedirs(os.path.dirname(report.path) or ".", exist_ok=True)
    with open(report.path, "wb") as handle:
        handle.write(result.report_html)
    report.metadata["report_url"] = result.report_url


# -- helpers -------------------------------------------------------------------------------------------------


def describe_dataset(store: Store, dataset_url: str, *, reused: bool) -> DatasetInfo:
    """What the Dataset artifact shows, read back from the committed manifest (the one source of truth)."""
    from cifarflow.data import manifest as mf

    manifest, base = mf.load(store, dataset_url)
    counts = {name: split.rows for name, split in manifest.splits.items()}
    return DatasetInfo(
        manifest.dataset_id, base, join(base, mf.MANIFEST), counts, list(manifest.class_names), reused
    )


def _committed(store: Store, dataset_url: str) -> bool:
    from cifarflow.data import manifest as mf

    return store.exists(join(dataset_url, mf.MANIFEST))


def _require(module: str, what: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise InputError(
            f"{what} needs {module}, which this image does not have",
            f"use backend=k8s, or a pipeline image built with {extra}",
        )


def _train_here(req: TrainRequest, data: str, out: str) -> None:
    from cifarflow.train import trainer
    from cifarflow.train.config import TrainConfig

    cfg = TrainConfig.model_validate(
        {
            "data": data,
            "out": out,
            "model": req.model,
            "epochs": req.epochs,
            "batch_size": req.batch_size,
            "seed": req.seed,
            "evaluate": False,  # evaluation is the pipeline's next step
            "s3_endpoint": req.cluster.s3_endpoint or None,
        }
    )
    trainer.train(cfg)


def _preprocess_on_k8s(req: PreprocessRequest, out: str) -> None:
    raise JobError("backend=k8s is not wired yet", "use backend=local")


def _train_on_k8s(req: TrainRequest, data: str, out: str) -> None:
    raise JobError("backend=k8s is not wired yet", "use backend=local")


def _evaluation(result: Any, out: str, store: Store) -> Evaluation:
    report_url = join(out, "report.html")
    return Evaluation(
        accuracy=float(result.accuracy),
        loss=float(result.loss),
        class_names=list(result.class_names),
        confusion=[[int(v) for v in row] for row in result.confusion],
        report_url=report_url,
        metrics_url=join(out, "metrics.json"),
        test_images=int(sum(sum(row) for row in result.confusion)),
        report_html=store.read_bytes(report_url),
    )
