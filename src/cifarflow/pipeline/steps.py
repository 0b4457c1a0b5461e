"""What each pipeline step does: the logic behind the KFP components in ``pipelines/components.py``.

A component is wiring: it calls one function here with its plain inputs (:mod:`cifarflow.pipeline.inputs`),
then one publisher (:mod:`cifarflow.pipeline.publish`) with its KFP output artifacts. Where things live is
:mod:`cifarflow.layout`; which backend runs a job is :func:`cifarflow.backends.get_backend`'s choice; the error
contract is :mod:`cifarflow.pipeline.contract`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from cifarflow import deployment
from cifarflow.backends import DeployRequest, DeployResult, PreprocessRequest, TrainRequest, get_backend
from cifarflow.config import DeployConfig, PreprocessConfig, PromoteConfig, parse
from cifarflow.errors import InputError, JobError
from cifarflow.layout import Workdir
from cifarflow.pipeline.contract import step
from cifarflow.pipeline.inputs import Cluster, PreprocessInputs, TrainInputs
from cifarflow.pipeline.results import (
    CommittedDataset,
    Evaluation,
    Ingested,
    TrainedModel,
    describe_dataset,
    evaluation,
)
from cifarflow.storage import basename, join, redact
from cifarflow.train.config import TrainConfig, parse_config

if TYPE_CHECKING:
    from cifarflow.serve.promote import Decision

log = logging.getLogger(__name__)


def pipeline_option(name: str, value: object) -> str:
    """How a refused value is named in a step's error line."""
    return f"pipeline parameter {name}={value!r}"


def resolve_workdir(given: str) -> Workdir:
    """The workdir parameter, or the deployment's ``CIFARFLOW_WORKDIR`` where it is empty."""
    chosen = given.strip() or deployment.values().get("CIFARFLOW_WORKDIR", "").strip()
    if not chosen:
        raise InputError(
            "no workdir: the parameter is empty and no cifarflow-defaults ConfigMap sets CIFARFLOW_WORKDIR",
            "pass --param workdir=s3://bucket/work (or gs://...), or deploy k8s/overlays/<env>",
        )
    return Workdir.at(chosen)


@step
def ingest(*, source: str, workdir: str, s3_endpoint: str) -> Ingested:
    from cifarflow.data import ingest as ingest_mod

    dest = resolve_workdir(workdir).ingest_dest
    result = ingest_mod.ingest(source, dest, store=deployment.store(s3_endpoint))
    log.info(
        "raw data at %s (source %s%s)",
        redact(result.raw_url),
        result.identity,
        ", reused" if result.reused else "",
    )
    return Ingested(result.raw_url, result.identity)


# KFP has no null integers: the pipeline's 0 stands for the config's None.
ZERO_IS_NONE = ("partitions", "image_size")


def preprocess_config(**given: Any) -> PreprocessConfig:
    """The Spark job's parameters from the pipeline's (the others: the config's defaults); a bad one is one
    line naming the pipeline parameter."""
    values = {name: None if name in ZERO_IS_NONE and value == 0 else value for name, value in given.items()}
    return parse(PreprocessConfig, values, option=pipeline_option)


@step
def plan(*, raw_url: str, val_fraction: float, seed: int, image_size: int, s3_endpoint: str) -> str:
    """The dataset id preprocess will commit, from the raw index alone (no Spark, no image read)."""
    from cifarflow.data import manifest as mf
    from cifarflow.data import preprocess as pre
    from cifarflow.data.preprocess.job import check_options

    params = preprocess_config(val_fraction=val_fraction, seed=seed, image_size=image_size)
    source = pre.read_source(deployment.store(s3_endpoint), raw_url)
    check_options(source, params.image_size, params.strict)  # before any job: CIFAR takes no image size
    parameters = pre.parameters(source, params.val_fraction, params.seed, params.image_size)
    dataset_id = mf.dataset_id(source.checksum, parameters)
    log.info(
        "dataset id %s (from %s, val fraction %s, seed %d, image size %s)",
        dataset_id,
        redact(raw_url),
        val_fraction,
        seed,
        params.image_size or "kept",
    )
    return dataset_id


@step
def preprocess(req: PreprocessInputs) -> CommittedDataset:
    """Commit the planned dataset, unless it is committed already (then no job is started at all)."""
    from cifarflow.data import manifest as mf

    store = deployment.store(req.cluster.s3_endpoint)
    backend = get_backend(req.cluster.backend, store=store, k8s=req.cluster.options(spark=req.spark))
    where = resolve_workdir(req.workdir)
    dataset_url = where.dataset(req.dataset_id)
    reused = store.exists(join(dataset_url, mf.MANIFEST))
    if reused:
        log.info("dataset %s is already committed: no Spark job", req.dataset_id)
    else:
        params = preprocess_config(
            val_fraction=req.val_fraction,
            seed=req.seed,
            image_size=req.image_size,
            partitions=req.partitions,
            strict=req.strict,
        )
        backend.preprocess(PreprocessRequest(req.raw_url, where.datasets, params, dataset_id=req.dataset_id))
    info = describe_dataset(store, dataset_url, reused=reused)
    if info.dataset_id != req.dataset_id:
        raise JobError(
            f"preprocess committed {info.dataset_id}, but plan computed {req.dataset_id}",
            "the plan and preprocess images run different cifarflow versions: use one image tag for both",
        )
    return info


@step
def train(req: TrainInputs) -> TrainedModel:
    """Train the model these settings define; a retried step, or a later run with the same settings, resumes
    from its last checkpoint; other settings train into their own folder."""
    from cifarflow.data import manifest as mf
    from cifarflow.train import runs

    store = deployment.store(req.cluster.s3_endpoint)
    backend = get_backend(req.cluster.backend, store=store, k8s=req.cluster.options(trainer=req.trainer))
    manifest, base = mf.load(store, req.dataset_url)
    cfg = train_config(req, base, "")  # checked here, before a training job or TensorFlow starts
    out = runs.model_url(resolve_workdir(req.workdir).models, manifest.dataset_id, cfg, req.run_name or None)
    cfg = cfg.model_copy(update={"out": out})
    runs.check(store, cfg, manifest.dataset_id)  # another run's folder: one line, before any job
    backend.train(TrainRequest(cfg, run_name=basename(out)))  # the run's folder is named by the run
    saved = join(out, "saved_model")
    if not store.exists(join(saved, "saved_model.pb")):
        raise JobError(
            f"training finished without a SavedModel at {redact(saved)}", "read the training job's log"
        )
    return TrainedModel(out, saved, manifest.dataset_id, req.model, req.epochs, req.batch_size)


def train_config(req: TrainInputs, data: str, out: str) -> TrainConfig:
    """The trainer's configuration for this step; a bad parameter is one line naming it."""
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
        option=pipeline_option,
    )


@step
def evaluate(*, dataset_url: str, model_url: str, s3_endpoint: str) -> Evaluation:
    """Score the SavedModel on the test split and render the report (TensorFlow on this pod's CPU)."""
    from cifarflow.backends.local import require
    from cifarflow.train import evaluate as ev

    require("tensorflow", "the evaluate step", "cifarflow[train]")
    store = deployment.store(s3_endpoint)
    # The report goes next to the model, as `cifarflow run` puts it.
    return evaluation(ev.evaluate(dataset_url, model_url, model_url, store=store), store)


@step
def promote(*, model_url: str, metrics_url: str, gate: dict[str, float], s3_endpoint: str) -> Decision:
    """The gate: the new model becomes the champion (``<models root>/champion.json``) only if it beats the
    current one on the same dataset (the champion is evaluated on it first when it was scored elsewhere)."""
    from cifarflow.serve import promote as gate_mod

    thresholds = parse(PromoteConfig, gate, option=pipeline_option)
    store = deployment.store(s3_endpoint)
    return gate_mod.promote(model_url, store=store, metrics_url=metrics_url, **thresholds.model_dump())


@step
def deploy(*, model_url: str, name: str, canary_percent: int, cluster: Cluster) -> DeployResult:
    """Serve the promoted model: an InferenceService (k8s), or a servability check here (local)."""
    params = parse(DeployConfig, {"name": name, "canary_percent": canary_percent}, option=pipeline_option)
    store = deployment.store(cluster.s3_endpoint)
    backend = get_backend(cluster.backend, store=store, k8s=cluster.options())
    result = backend.deploy(DeployRequest(model_url, params))
    for line in result.lines():
        log.info("deploy %s", line)
    return result
