"""KFP components of the CIFAR-10 pipeline: typed wiring to :mod:`cifarflow.pipeline.steps`.

Each body is a few lines that call one step and hand its result to the KFP artifacts; the work (ingest, the
Spark job, the TFJob, evaluation) lives in ``src/cifarflow``. KFP ships a component's source text, not this
module, so every body imports what it uses and no module-level name is visible inside a body.

No ``from __future__ import annotations`` here: KFP reads the annotations as types to build the component
specs. Every input is described in its component's ``Args:`` (KFP shows those descriptions in its UI).
"""

import functools

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

# The default only: the pipeline sets every task's image from its `pipeline_image` parameter. The image has
# cifarflow and kfp installed, so nothing is pip-installed when a pod starts (air-gapped clusters work).
IMAGE = "cifarflow-pipeline:latest"
component = functools.partial(dsl.component, base_image=IMAGE, install_kfp_package=False)


@component
def ingest(source: str, workdir: str, s3_endpoint: str) -> str:
    """Land the archive's members or the images under WORKDIR/raw (idempotent: nothing is copied twice).

    Args:
        source: cifar10, cifar100, or an http(s)/bucket URL of a CIFAR archive or image class folders.
        workdir: Bucket URL for raw data, datasets and models ("" = the cluster's CIFARFLOW_WORKDIR).
        s3_endpoint: S3 API endpoint for s3:// URLs ("" = the cluster's AWS_ENDPOINT_URL).

    Returns:
        The raw folder's URL.
    """
    from cifarflow.pipeline import steps

    return steps.ingest(source=source, workdir=workdir, s3_endpoint=s3_endpoint).raw_url


@component
def plan(raw_url: str, val_fraction: float, seed: int, image_size: int, s3_endpoint: str) -> str:
    """Compute the content-addressed dataset id from the raw index and the parameters (cheap, never cached).

    Args:
        raw_url: The raw folder ingest wrote.
        val_fraction: Share of each class's train images held out for validation.
        seed: Seed of the train/val split.
        image_size: Image folders: resize to NxN (0 = keep their one size); part of the dataset id.
        s3_endpoint: S3 API endpoint for s3:// URLs ("" = the cluster's AWS_ENDPOINT_URL).

    Returns:
        The dataset id.
    """
    from cifarflow.pipeline import steps

    return steps.plan(
        raw_url=raw_url, val_fraction=val_fraction, seed=seed, image_size=image_size, s3_endpoint=s3_endpoint
    )


@component
def preprocess(
    *,
    dataset_id: str,
    raw_url: str,
    workdir: str,
    val_fraction: float,
    seed: int,
    partitions: int,
    image_size: int,
    strict: bool,
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
    """Run the Spark job (a SparkApplication, or Spark local mode) unless the dataset is already committed.

    Args:
        dataset_id: The id plan computed; the job is named after it, so a retry re-attaches.
        raw_url: The raw folder ingest wrote.
        workdir: Bucket URL for raw data, datasets and models ("" = the cluster's CIFARFLOW_WORKDIR).
        val_fraction: Share of each class's train images held out for validation.
        seed: Seed of the train/val split.
        partitions: Spark read tasks (0 = one per input file or 64 MiB range).
        image_size: Image folders: resize to NxN (0 = keep their one size); the job's --image-size.
        strict: Image folders: stop at an undecodable file instead of skipping it; the job's --strict.
        backend: k8s (a SparkApplication) or local (Spark local mode in this pod).
        namespace: Namespace of the SparkApplication ("" = the cluster's).
        spark_image: Image of the SparkApplication ("" = the tag skaffold deployed).
        spark_executors: Initial Spark executors (dynamic allocation scales from there).
        spark_executor_cores: Cores per executor.
        spark_executor_memory: JVM memory per executor (e.g. 1g).
        spark_driver_memory: JVM memory of the driver (e.g. 1g).
        s3_endpoint: S3 API endpoint for s3:// URLs ("" = the cluster's AWS_ENDPOINT_URL).
        timeout_s: Seconds the SparkApplication may run before it is deleted.
        dataset: The committed _manifest.json, with the dataset's id, URL and counts as metadata.
    """
    from cifarflow import deployment
    from cifarflow.backends.kubernetes import SparkResources
    from cifarflow.pipeline import inputs, publish, steps

    result = steps.preprocess(
        inputs.PreprocessInputs(
            dataset_id=dataset_id,
            raw_url=raw_url,
            workdir=workdir,
            val_fraction=val_fraction,
            seed=seed,
            partitions=partitions,
            image_size=image_size,
            strict=strict,
            spark=SparkResources(
                image=spark_image,
                executors=spark_executors,
                executor_cores=spark_executor_cores,
                executor_memory=spark_executor_memory,
                driver_memory=spark_driver_memory,
            ),
            cluster=inputs.Cluster(
                backend=backend, namespace=namespace, s3_endpoint=s3_endpoint, timeout_s=timeout_s
            ),
        )
    )
    publish.publish_dataset(result, dataset, deployment.store(s3_endpoint))


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
    """Train on the dataset (a TFJob or TrainJob, or TensorFlow in this process) into
    WORKDIR/models/<dataset>/<run>, the run named by its settings (or run_name): the same settings resume,
    other settings get their own folder.

    Args:
        dataset: The Dataset artifact preprocess published.
        workdir: Bucket URL for raw data, datasets and models ("" = the cluster's CIFARFLOW_WORKDIR).
        model_name: resnet20 or resnet9.
        epochs: Training epochs.
        batch_size: Global batch size, split over all replicas.
        seed: Seed of initialisation and shuffling.
        backend: k8s (a TFJob or TrainJob) or local (TensorFlow in this pod).
        namespace: Namespace of the training job ("" = the cluster's).
        trainer_image: Image of the training job ("" = the tag skaffold deployed).
        workers: Worker replicas (MultiWorkerMirroredStrategy).
        gpus_per_worker: nvidia.com/gpu per worker (-1 = the cluster's).
        s3_endpoint: S3 API endpoint for s3:// URLs ("" = the cluster's AWS_ENDPOINT_URL).
        run_name: Model folder under WORKDIR/models/<dataset-id>/ ("" = model and a hash of the settings).
        timeout_s: Seconds the training job may run before it is deleted.
        model: The SavedModel (a copy), with the model's URL and settings as metadata.
    """
    from cifarflow import deployment
    from cifarflow.backends.kubernetes import TrainerResources
    from cifarflow.pipeline import inputs, publish, steps

    result = steps.train(
        inputs.TrainInputs(
            dataset_url=dataset.metadata["dataset_url"],
            workdir=workdir,
            model=model_name,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            trainer=TrainerResources(image=trainer_image, workers=workers, gpus_per_worker=gpus_per_worker),
            cluster=inputs.Cluster(
                backend=backend, namespace=namespace, s3_endpoint=s3_endpoint, timeout_s=timeout_s
            ),
            run_name=run_name,
        )
    )
    publish.publish_model(result, model, deployment.store(s3_endpoint))


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
    """Score the model on the test split; publish accuracy/loss, the confusion matrix and the HTML report.

    Args:
        dataset: The Dataset artifact preprocess published.
        model: The Model artifact train published.
        s3_endpoint: S3 API endpoint for s3:// URLs ("" = the cluster's AWS_ENDPOINT_URL).
        metrics: Test accuracy, loss and macro scores, and the last epoch's curves.
        confusion: The test split's confusion matrix.
        report: The HTML report (curves, confusion matrix, samples).
    """
    from cifarflow.pipeline import publish, steps

    result = steps.evaluate(
        dataset_url=dataset.metadata["dataset_url"],
        model_url=model.metadata["model_url"],
        s3_endpoint=s3_endpoint,
    )
    publish.publish_evaluation(result, metrics=metrics, confusion=confusion, report=report)


@component
def promote(
    *,
    model: Input[Model],
    metrics: Input[Metrics],
    min_accuracy: float,
    tolerance: float,
    max_recall_drop: float,
    s3_endpoint: str,
    decision: Output[Metrics],
    summary: Output[Markdown],
) -> bool:
    """Make the model the champion (WORKDIR/models/champion.json) only if it beats the current one on the same
    dataset; publish the decision with both models' scores.

    Args:
        model: The Model artifact train published.
        metrics: The Metrics artifact evaluate published (its metrics.json is what the gate reads).
        min_accuracy: Floor: never promote below this test accuracy.
        tolerance: Promote at the champion's accuracy minus this.
        max_recall_drop: Largest fall of any class's recall against the champion.
        s3_endpoint: S3 API endpoint for s3:// URLs ("" = the cluster's AWS_ENDPOINT_URL).
        decision: promoted (1 or 0), both models' test accuracy and the thresholds; the reason as metadata.
        summary: The verdict, its reason and both models' per-class recall.

    Returns:
        Whether the model was promoted (deploy runs only then).
    """
    from cifarflow.pipeline import publish, steps

    result = steps.promote(
        model_url=model.metadata["model_url"],
        metrics_url=metrics.metadata["metrics_url"],
        gate={"min_accuracy": min_accuracy, "tolerance": tolerance, "max_recall_drop": max_recall_drop},
        s3_endpoint=s3_endpoint,
    )
    publish.publish_decision(result, metrics=decision, summary=summary)
    return result.promoted


@component
def deploy(
    *,
    model: Input[Model],
    name: str,
    canary_percent: int,
    backend: str,
    namespace: str,
    s3_endpoint: str,
    timeout_s: int,
) -> str:
    """Serve the promoted model: create or update its KServe InferenceService and wait until it is Ready
    (backend=local: check that it loads and answers, and name the `cifarflow serve` command).

    Args:
        model: The Model artifact train published (the model folder in the workdir is served).
        name: InferenceService name, and the model's name in the V2 protocol's URLs.
        canary_percent: Traffic share of the new revision (100 = all of it, no canary).
        backend: k8s (a KServe InferenceService) or local (a servability check in this pod).
        namespace: Namespace of the InferenceService ("" = the cluster's).
        s3_endpoint: S3 API endpoint for s3:// URLs ("" = the cluster's AWS_ENDPOINT_URL).
        timeout_s: Seconds to wait for the InferenceService to become Ready.

    Returns:
        The InferenceService's URL (backend=local: the command that serves the model).
    """
    from cifarflow.pipeline import inputs, steps

    result = steps.deploy(
        model_url=model.metadata["model_url"],
        name=name,
        canary_percent=canary_percent,
        cluster=inputs.Cluster(
            backend=backend, namespace=namespace, s3_endpoint=s3_endpoint, timeout_s=timeout_s
        ),
    )
    return result.outputs.get("url") or result.outputs.get("serve", "")
