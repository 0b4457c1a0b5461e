"""KFP components of the CIFAR-10 pipeline: typed wiring to :mod:`cifarflow.pipeline.steps`.

Each body is a few lines that call one step and hand its result to the KFP artifacts; the work (ingest, the
Spark job, the TFJob, evaluation) lives in ``src/cifarflow``. KFP ships a component's source text, not this
module, so every body imports what it uses and no module-level name is visible inside a body.

No ``from __future__ import annotations`` here: KFP reads the annotations as types to build the component
specs.
"""

import functools

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

# The default only: the pipeline sets every task's image from its `pipeline_image` parameter. The image has
# cifarflow and kfp installed, so nothing is pip-installed when a pod starts (air-gapped clusters work).
IMAGE = "cifarflow-pipeline:latest"
component = functools.partial(dsl.component, base_image=IMAGE, install_kfp_package=False)


@component
def ingest(source: str, workdir: str, s3_endpoint: str) -> str:
    """Land the archive's members under WORKDIR/raw (idempotent: the same archive is not copied twice).
    Returns the raw folder's URL."""
    from cifarflow.pipeline import steps

    return steps.ingest(source=source, workdir=workdir, s3_endpoint=s3_endpoint).raw_url


@component
def plan(raw_url: str, val_fraction: float, seed: int, s3_endpoint: str) -> str:
    """Compute the content-addressed dataset id from the raw index and the parameters (cheap, never cached).
    Returns the dataset id."""
    from cifarflow.pipeline import steps

    return steps.plan(raw_url=raw_url, val_fraction=val_fraction, seed=seed, s3_endpoint=s3_endpoint)


@component
def preprocess(
    *,
    dataset_id: str,
    raw_url: str,
    workdir: str,
    val_fraction: float,
    seed: int,
    partitions: int,
    backend: str,
    namespace: str,
    spark_image: str,
    spark_executors: int,
    spark_executor_cores: int,
    spark_executor_memory: str,
    spark_driver_memory: str,
    s3_endpoint: str,
    timeout_s: int,
    dataset: Output[Dataset],
) -> None:
    """Run the Spark job (a SparkApplication, or Spark local mode) unless the dataset is already committed."""
    from cifarflow.pipeline import steps

    result = steps.preprocess(
        steps.PreprocessRequest(
            dataset_id=dataset_id,
            raw_url=raw_url,
            workdir=workdir,
            val_fraction=val_fraction,
            seed=seed,
            partitions=partitions,
            spark=steps.SparkSettings(
                image=spark_image,
                executors=spark_executors,
                executor_cores=spark_executor_cores,
                executor_memory=spark_executor_memory,
                driver_memory=spark_driver_memory,
            ),
            cluster=steps.Cluster(
                backend=backend,
                namespace=namespace,
                s3_endpoint=s3_endpoint,
                run_id="",  # the job is named after the dataset: the run must not enter the cache key
                timeout_s=timeout_s,
            ),
        )
    )
    steps.publish_dataset(result, dataset, steps.make_store(s3_endpoint))


@component
def train(
    *,
    dataset: Input[Dataset],
    workdir: str,
    model_name: str,
    epochs: int,
    batch_size: int,
    seed: int,
    backend: str,
    namespace: str,
    trainer_image: str,
    workers: int,
    gpus_per_worker: int,
    s3_endpoint: str,
    run_name: str,
    timeout_s: int,
    model: Output[Model],
) -> None:
    """Train on the dataset (a TFJob, or TensorFlow in this process) into WORKDIR/models/<dataset>/<run>, the
    run named by its settings (or run_name): the same settings resume, other settings get their own folder."""
    from cifarflow.pipeline import steps

    result = steps.train(
        steps.TrainRequest(
            dataset_url=dataset.metadata["dataset_url"],
            workdir=workdir,
            model=model_name,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            tfjob=steps.TFJobSettings(image=trainer_image, workers=workers, gpus_per_worker=gpus_per_worker),
            cluster=steps.Cluster(
                backend=backend,
                namespace=namespace,
                s3_endpoint=s3_endpoint,
                run_id="",  # the step names the TFJob after the run
                timeout_s=timeout_s,
            ),
            run_name=run_name,
        )
    )
    steps.publish_model(result, model, steps.make_store(s3_endpoint))


@component
def evaluate(
    *,
    dataset: Input[Dataset],
    model: Input[Model],
    s3_endpoint: str,
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
) -> None:
    """Score the model on the test split; publish accuracy/loss, the confusion matrix and the HTML report."""
    from cifarflow.pipeline import steps

    result = steps.evaluate(
        dataset_url=dataset.metadata["dataset_url"],
        model_url=model.metadata["model_url"],
        s3_endpoint=s3_endpoint,
    )
    steps.publish_evaluation(result, metrics=metrics, confusion=confusion, report=report)
