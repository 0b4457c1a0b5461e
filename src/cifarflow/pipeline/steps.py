"""What each pipeline step does: the logic behind the KFP components in ``pipelines/components.py``.

A component is wiring: it calls one function here with its plain inputs, then one ``publish_*`` function with
its KFP output artifacts. Everything between (where things live in the workdir, which backend runs a job, what
the artifacts say) is here, typed and testable without KFP.

Workdir layout (the same bucket serves the pipeline and ``cifarflow run``)::

    WORKDIR/raw/...                          ingest's raw members + _ingest.json
    WORKDIR/datasets/<dataset-id>/...        committed datasets (content-addressed)
    WORKDIR/models/<dataset-id>/<run>/...    one model per training run (saved_model/, checkpoints/...), named
                                             by its settings (or the run_name parameter), as `cifarflow run` does
    WORKDIR/models/<dataset-id>/<run>/report.html, metrics.json   the evaluate step's, where `cifarflow run`
                                             puts them

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
from cifarflow.storage import StorageConfig, Store, basename, join, normalize, redact

log = logging.getLogger(__name__)

BACKENDS = ("local", "k8s")
# Where the pipeline mounts the cifarflow-defaults ConfigMap (pipelines/cifar10_pipeline.py says the same).
DEFAULTS_DIR = "/etc/cifarflow/defaults"
DEFAULTS_ENV = "CIFARFLOW_DEFAULTS_DIR"
T = TypeVar("T")


# -- where things live ---------------------------------------------------------------------------------------


def raw_root(workdir: str) -> str:
    """What ``ingest`` is given as DEST (it writes DEST/raw)."""
    return _workdir(workdir)


def datasets_root(workdir: str) -> str:
    return join(_workdir(workdir), "datasets")


def models_root(workdir: str) -> str:
    return join(_workdir(workdir), "models")


def _workdir(workdir: str) -> str:
    chosen = workdir.strip() or deployment().get("CIFARFLOW_WORKDIR", "").strip()
    if not chosen:
        raise InputError(
            "no workdir: the parameter is empty and no cifarflow-defaults ConfigMap sets CIFARFLOW_WORKDIR",
            "pass --param workdir=s3://bucket/work (or gs://...), or deploy k8s/overlays/<env>",
        )
    return normalize(chosen).rstrip("/")


def make_store(s3_endpoint: str) -> Store:
    """An empty endpoint means the deployment's (``AWS_ENDPOINT_URL``), or none at all (GCS, AWS S3)."""
    return Store(StorageConfig.from_env(s3_endpoint or deployment().get("AWS_ENDPOINT_URL") or None))


def deployment() -> dict[str, str]:
    """The cluster's ``cifarflow-defaults`` ConfigMap, which the pipeline mounts into every task (k8s/base):
    the workdir, the store, and the launchers' ``CIFARFLOW_K8S_*`` settings. Empty outside a cluster.

    Pipeline parameters win over it; an empty parameter (or ``-1`` GPUs) leaves the deployment's value.
    """
    folder = os.environ.get(DEFAULTS_ENV, DEFAULTS_DIR)
    if not os.path.isdir(folder):
        return {}
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        # A mounted ConfigMap also holds ..data and timestamped folders: keys are the plain files.
        if not name.startswith(".") and os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                out[name] = handle.read()
    return out


# -- the settings components pass ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """Where and how a step's job runs."""

    backend: str
    namespace: str  # "" = the deployment's
    s3_endpoint: str  # "" = the deployment's
    run_id: str  # names the step's job, so a retried step re-attaches to it ("" where the step names it)
    timeout_s: int

    def check(self) -> None:
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
    gpus_per_worker: int  # -1 = the deployment's (GKE's overlay: 1)


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
    run_name: str = ""  # "" = named by the dataset and the settings, like `cifarflow run`


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
    scores: dict[str, float]  # what the Metrics artifact shows, in this order
    class_names: list[str]
    confusion: list[list[int]]  # [true class][predicted class]
    report_url: str
    metrics_url: str
    report_html: bytes = field(repr=False, default=b"")


def check_arguments(arguments: dict[str, Any]) -> None:
    """Refuse arguments no step accepts before anything is uploaded or run (the steps check again)."""
    from typing import get_args

    from cifarflow.train.config import ModelName

    choices = {"backend": BACKENDS, "model": get_args(ModelName)}
    for name, allowed in choices.items():
        if name in arguments and arguments[name] not in allowed:
            raise InputError(
                f"pipeline parameter {name}={arguments[name]!r} is not one of {', '.join(allowed)}",
                f"pass --param {name}={allowed[0]} (or another of those)",
            )


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
    req.cluster.check()
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
    """Train the model these settings define; a retried step, or a later run with the same settings, resumes
    from its last checkpoint; other settings train into their own folder."""
    from cifarflow.data import manifest as mf
    from cifarflow.train import runs

    req.cluster.check()
    store = req.cluster.store
    manifest, base = mf.load(store, req.dataset_url)
    cfg = train_config(req, base, "")  # checked here, before a TFJob or TensorFlow starts
    out = runs.model_url(models_root(req.workdir), manifest.dataset_id, cfg, req.run_name or None)
    cfg = cfg.model_copy(update={"out": out})
    runs.check(store, cfg, manifest.dataset_id)  # another run's folder: one line, before any job
    if req.cluster.backend == "local":
        _require("tensorflow", "train with backend=local", "cifarflow[train]")
        from cifarflow.train import trainer

        trainer.train(cfg)
    else:
        _train_on_k8s(req, base, out)
    saved = join(out, "saved_model")
    if not store.exists(join(saved, "saved_model.pb")):
        raise JobError(
            f"training finished without a SavedModel at {redact(saved)}", "read the training job's log"
        )
    return ModelInfo(out, saved, manifest.dataset_id, req.model, req.epochs, req.batch_size)


def train_config(req: TrainRequest, data: str, out: str) -> Any:
    """The trainer's configuration for this step; a bad parameter is one line naming it."""
    from cifarflow.train.config import parse_config

    return parse_config(
        {
            "data": data,
            "out": out,
            "model": req.model,
            "epochs": req.epochs,
            "batch_size": req.batch_size,
            "seed": req.seed,
            "evaluate": False,  # evaluation is the pipeline's next step
            "s3_endpoint": req.cluster.s3_endpoint or None,
        },
        option=lambda name, value: f"pipeline parameter {name}={value!r}",
    )


@step
def evaluate(*, dataset_url: str, model_url: str, s3_endpoint: str) -> Evaluation:
    """Score the SavedModel on the test split and render the report (TensorFlow on this pod's CPU)."""
    _require("tensorflow", "the evaluate step", "cifarflow[train]")
    from cifarflow.train import evaluate as ev

    store = make_store(s3_endpoint)
    result = ev.evaluate(
        dataset_url, model_url, model_url, store=store
    )  # next to the model, as `cifarflow run`
    return _evaluation(result, store)


# -- publishing to KFP artifacts -----------------------------------------------------------------------------


class Artifact(Protocol):
    """The part of ``kfp.dsl.Artifact`` the publishers use (structural, so tests need no KFP)."""

    uri: str
    metadata: dict[str, Any]

    @property
    def path(self) -> str: ...


# KFP records an output artifact at the URI it assigned under the run's pipeline root, and its launcher
# refuses any other URI, so the artifacts hold copies (a manifest, a SavedModel: small) and say in their
# metadata where the originals live. A Model artifact is thus a complete SavedModel in KFP's store, servable
# from there.


def publish_dataset(info: DatasetInfo, artifact: Artifact, store: Store) -> None:
    """The Dataset artifact is the committed ``_manifest.json`` (a byte copy), with the id and counts."""
    _write(artifact.path, store.read_bytes(info.manifest_url))
    artifact.metadata.update(
        {
            "dataset_id": info.dataset_id,
            "dataset_url": info.dataset_url,
            "manifest_url": info.manifest_url,
            "num_classes": len(info.class_names),
            "class_names": info.class_names,
            "reused": info.reused,
            **{f"{split}_images": rows for split, rows in sorted(info.counts.items())},
        }
    )


def publish_model(info: ModelInfo, artifact: Artifact, store: Store) -> None:
    """The Model artifact is the SavedModel (a copy of ``MODEL_URL/saved_model``)."""
    copy_tree(store, info.saved_model_url, artifact.path)
    artifact.metadata.update(
        {
            "framework": "tensorflow",
            "model_url": info.model_url,
            "saved_model_url": info.saved_model_url,
            "dataset_id": info.dataset_id,
            "model": info.model,
            "epochs": info.epochs,
            "batch_size": info.batch_size,
            **info.extra,
        }
    )


def publish_evaluation(
    result: Evaluation, *, metrics: Artifact, confusion: Artifact, report: Artifact
) -> None:
    for name, value in result.scores.items():
        metrics.log_metric(name, value)  # type: ignore[attr-defined]
    metrics.metadata["metrics_url"] = result.metrics_url
    confusion.log_confusion_matrix(result.class_names, result.confusion)  # type: ignore[attr-defined]
    _write(report.path, result.report_html)
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


def copy_tree(store: Store, url: str, local: str) -> None:
    """Copy every file under ``url`` into the local folder ``local``."""
    fs, path = store.fs(url)
    os.makedirs(local, exist_ok=True)
    fs.get(path.rstrip("/") + "/", local.rstrip("/") + "/", recursive=True)


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


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


def k8s_settings(cluster: Cluster, **overrides: Any) -> Any:
    """The launchers' settings: built-in defaults, then the deployment's ``CIFARFLOW_K8S_*`` (ConfigMap and
    environment), then the pipeline's parameters where they are set."""
    from cifarflow.k8s.settings import ENV_PREFIX, K8sSettings

    environ = {**os.environ, **{k: v for k, v in deployment().items() if k.startswith(ENV_PREFIX)}}
    given: dict[str, Any] = {"watch": {"timeout_s": cluster.timeout_s}}
    if cluster.namespace:
        given["namespace"] = cluster.namespace
    if cluster.s3_endpoint:
        given["storage"] = {"s3_endpoint": cluster.s3_endpoint}
    return K8sSettings.from_env(environ, **given, **overrides)


def _preprocess_on_k8s(req: PreprocessRequest, out: str) -> None:
    from cifarflow.k8s import names
    from cifarflow.k8s.launcher import launch_preprocess

    spark = req.spark
    settings = k8s_settings(
        req.cluster,
        # An empty image leaves the deployment's choice (in k8s/base: the tag skaffold deployed).
        **({"images_from_cluster": False} if spark.image else {}),
        spark={
            **({"image": spark.image} if spark.image else {}),
            "executors": spark.executors,  # the initial count; dynamic allocation scales from there
            "executor": {
                "cores": spark.executor_cores,
                "core_limit": str(spark.executor_cores),
                "memory": spark.executor_memory,
            },
            "driver": {"memory": spark.driver_memory},
        },
    )
    # Named after the dataset and the job's settings: a retried step, or a second run of the same dataset,
    # re-attaches to the running application instead of starting another.
    job_id = f"{req.dataset_id}-{names.spec_hash(settings.spark.model_dump(mode='json'))[:6]}"
    result = launch_preprocess(
        settings,
        job_id,
        raw=req.raw_url,
        out=out,
        partitions=req.partitions or None,
        val_fraction=req.val_fraction,
        seed=req.seed,
    )
    log.info(
        "SparkApplication %s/%s %s in %.0f s", result.namespace, result.name, result.state, result.seconds
    )


def _train_on_k8s(req: TrainRequest, data: str, out: str) -> None:
    from cifarflow.k8s.launcher import launch_train

    job = req.tfjob
    train: dict[str, Any] = {"workers": job.workers}
    if job.image:
        train["image"] = job.image
    if job.gpus_per_worker >= 0:
        train["gpus"] = job.gpus_per_worker
    settings = k8s_settings(req.cluster, **({"images_from_cluster": False} if job.image else {}), train=train)
    # Named by the run and its folder (job_name digests the whole id): a retried step, or a later pipeline run with
    # the same settings, re-attaches to the job that trains this model instead of starting a second one.
    job_id = f"{basename(out)}-{out}"
    result = launch_train(settings, job_id, data=data, out=out, extra_args=train_arguments(req))
    log.info("TFJob %s/%s %s in %.0f s", result.namespace, result.name, result.state, result.seconds)


def train_arguments(req: TrainRequest) -> list[str]:
    """``cifarflow train`` options beyond --data/--out (evaluation is the pipeline's own next step)."""
    return [
        "--model", req.model,
        "--epochs", str(req.epochs),
        "--batch-size", str(req.batch_size),
        "--seed", str(req.seed),
        "--no-evaluate",
    ]  # fmt: skip


def _evaluation(result: Any, store: Store) -> Evaluation:
    """The evaluate step's numbers: test scores, then the last epoch's training and validation curves."""
    test = result.metrics["test"]
    scores = {"accuracy": float(test["accuracy"])}
    if "loss" in test:
        scores["loss"] = float(test["loss"])
    scores.update({k: float(test[k]) for k in ("macro_precision", "macro_recall", "macro_f1") if k in test})
    scores["test_images"] = float(test["images"])
    last = (result.metrics.get("history") or [{}])[-1]
    for key, name in (("loss", "train_loss"), ("accuracy", "train_accuracy"), ("val_loss", "val_loss")):
        if key in last:
            scores[name] = float(last[key])
    return Evaluation(
        scores=scores,
        class_names=list(result.metrics["class_names"]),
        confusion=[[int(v) for v in row] for row in test["confusion_matrix"]],
        report_url=result.report_url,
        metrics_url=result.metrics_url,
        report_html=store.read_bytes(result.report_url),
    )
