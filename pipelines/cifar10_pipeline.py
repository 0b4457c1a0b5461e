"""The CIFAR-10 pipeline: ingest -> plan -> preprocess -> train -> evaluate -> promote -> deploy (only when
promote says yes, and the ``deploy`` parameter is on), as KFP v2 wiring.

Build it with ``cifarflow pipeline compile`` (writes ``pipelines/compiled/cifar10_pipeline.yaml``), submit it
with ``cifarflow pipeline submit``, or run it on this machine with ``cifarflow pipeline run-local``. The
parameters' defaults fit the minikube overlay (``k8s/overlays/minikube``); see docs/pipeline.md.

Caching: ``plan`` reads the raw index and computes the content-addressed dataset id; ``preprocess`` takes only
that id and parameters (no upstream artifact), so KFP's cache key is stable while the dataset is unchanged and
an unchanged dataset is never recomputed. ``ingest`` and ``plan`` always run (cheap, and they are what notices
a changed source); ``train`` and ``evaluate`` run every time: training is named by its settings, so the same
settings resume (or reuse) their model and other settings train into their own folder.
"""

from typing import NamedTuple

from kfp import dsl, kubernetes

from cifarflow import config, deployment
from cifarflow.train.config import TrainConfig

from . import components as c

PIPELINE_NAME = "cifarflow-cifar10"

# Pod deadlines (activeDeadlineSeconds). The Spark/TF jobs a step launches get its deadline minus a margin, so
# the step deletes a job that overruns (and says so) before Kubernetes kills the step's own pod.
DEADLINES = {
    "ingest": 2 * 3600,
    "plan": 600,
    "preprocess": 6 * 3600,
    "train": 48 * 3600,
    "evaluate": 2 * 3600,
    "promote": 2 * 3600,  # a champion scored on another dataset version is evaluated again first
    "deploy": 3600,
}
JOB_MARGIN_S = 600

# The cluster's settings, read by cifarflow.deployment; parameters left empty defer to them.
DEFAULTS_CONFIG_MAP = "cifarflow-defaults"
DEFAULTS_DIR = deployment.DEFAULTS_DIR

# Parameter defaults come from the configs that declare them (tests/pipeline/test_defaults.py checks them).
TRAIN = config.defaults(TrainConfig)
PREPROCESS = config.defaults(config.PreprocessConfig)
GATE = config.defaults(config.PromoteConfig)
DEPLOY = config.defaults(config.DeployConfig)

# Bucket credentials for S3-compatible stores (MinIO/SeaweedFS). Optional, so the same pipeline runs on GKE
# with Workload Identity and no Secret at all.
BUCKET_SECRET_KEYS = {
    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
}


def _on_cluster(task: dsl.PipelineTask, step: str, image: str, bucket_secret: str) -> None:
    """What every task needs in a cluster: the pipeline image, the deployment's settings, the bucket Secret as
    env, and a deadline."""
    task.set_container_image(image)
    # k8s/base's cifarflow-defaults: workdir, store, launcher settings (GPUs, node pools) of this cluster.
    kubernetes.use_config_map_as_volume(task, DEFAULTS_CONFIG_MAP, mount_path=DEFAULTS_DIR, optional=True)
    # Images built into minikube's Docker by skaffold exist on the node only: never pull what is there.
    kubernetes.set_image_pull_policy(task, "IfNotPresent")
    kubernetes.use_secret_as_env(
        task, secret_name=bucket_secret, secret_key_to_env=BUCKET_SECRET_KEYS, optional=True
    )
    kubernetes.set_timeout(task, DEADLINES[step])
    task.set_display_name(step)


class Outputs(NamedTuple):
    dataset: dsl.Dataset
    model: dsl.Model
    metrics: dsl.Metrics
    confusion: dsl.ClassificationMetrics
    report: dsl.HTML
    decision: dsl.Metrics
    promotion: dsl.Markdown


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="CIFAR-10/100 or class folders of images from a bucket to a served model: Spark "
    "preprocessing (SparkApplication), TensorFlow training (TFJob), evaluation with a report, a champion "
    "gate, KServe deployment.",
)
def cifar10_pipeline(  # noqa: PLR0917 - KFP calls a pipeline function with positional arguments
    source: str = "cifar10",
    workdir: str = "",
    s3_endpoint: str = "",
    backend: str = "k8s",
    namespace: str = "",
    pipeline_image: str = c.IMAGE,
    spark_image: str = "",
    trainer_image: str = "",
    bucket_secret: str = "cifarflow-s3",
    val_fraction: float = PREPROCESS["val_fraction"],
    seed: int = PREPROCESS["seed"],  # the split's and training's (the same default)
    partitions: int = 0,  # PreprocessConfig's None: one read task per file
    image_size: int = 0,  # PreprocessConfig's None: the images' one size
    strict: bool = PREPROCESS["strict"],
    spark_executors: int = 2,
    spark_executor_cores: int = 1,
    spark_executor_memory: str = "1g",
    spark_driver_memory: str = "1g",
    train_workers: int = 2,
    gpus_per_worker: int = -1,
    model: str = TRAIN["model"],
    epochs: int = TRAIN["epochs"],
    batch_size: int = TRAIN["batch_size"],
    run_name: str = "",
    min_accuracy: float = GATE["min_accuracy"],
    tolerance: float = GATE["tolerance"],
    max_recall_drop: float = GATE["max_recall_drop"],
    deploy: bool = True,
    deploy_name: str = DEPLOY["name"],
    canary_percent: int = DEPLOY["canary_percent"],
) -> Outputs:
    """CIFAR-10 from a bucket to a served model. Empty values defer to the cluster's cifarflow-defaults.

    Args:
        source: cifar10, cifar100, or an http(s)/bucket URL of a CIFAR archive or image class folders.
        workdir: Bucket URL for raw data, datasets and models ("" = CIFARFLOW_WORKDIR of the cluster).
        s3_endpoint: S3 API endpoint for s3:// URLs ("" = the cluster's AWS_ENDPOINT_URL; none for GCS).
        backend: k8s (SparkApplication and TFJob) or local (Spark and TensorFlow inside the step's pod).
        namespace: Namespace of the Spark and TF jobs ("" = the cluster's, cifarflow).
        pipeline_image: Image every step runs in (cifarflow-pipeline, with the tag skaffold built).
        spark_image: Image of the SparkApplication ("" = the tag skaffold deployed).
        trainer_image: Image of the TFJob ("" = the tag skaffold deployed).
        bucket_secret: Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for the steps (optional).
        val_fraction: Share of each class's train images held out for validation.
        seed: Seed of the train/val split and of training.
        partitions: Spark read tasks (0 = one per input file or 64 MiB range).
        image_size: Image folders: resize to NxN, shorter side then centre crop (0 = keep their one size).
        strict: Image folders: an undecodable file fails the job (false: skipped and listed in stats.json).
        spark_executors: Initial Spark executors (dynamic allocation scales from there).
        spark_executor_cores: Cores per executor.
        spark_executor_memory: JVM memory per executor (e.g. 1g).
        spark_driver_memory: JVM memory of the driver (e.g. 1g).
        train_workers: TFJob Worker replicas (MultiWorkerMirroredStrategy).
        gpus_per_worker: nvidia.com/gpu per worker (-1 = the cluster's: 0 on minikube, 1 on GKE).
        model: resnet20 or resnet9.
        epochs: Training epochs.
        batch_size: Global batch size, split over all replicas.
        run_name: Model folder under WORKDIR/models/<dataset-id>/ ("" = model and a hash of the settings).
        min_accuracy: Promotion floor: never promote below this test accuracy.
        tolerance: Promote at the champion's test accuracy minus this.
        max_recall_drop: Largest fall of any class's recall against the champion.
        deploy: Deploy a promoted model (false: promote only; true needs KServe on a cluster).
        deploy_name: InferenceService name, and the model's name in the V2 protocol's URLs.
        canary_percent: Traffic share of the new revision (100 = all of it, no canary).
    """

    ingest = c.ingest(source=source, workdir=workdir, s3_endpoint=s3_endpoint)
    ingest.set_caching_options(False).set_retry(num_retries=2, backoff_duration="30s")
    _on_cluster(ingest, "ingest", pipeline_image, bucket_secret)

    plan = c.plan(
        raw_url=ingest.output,
        val_fraction=val_fraction,
        seed=seed,
        image_size=image_size,
        s3_endpoint=s3_endpoint,
    )
    plan.set_caching_options(False)
    _on_cluster(plan, "plan", pipeline_image, bucket_secret)

    preprocess = c.preprocess(
        dataset_id=plan.output,
        raw_url=ingest.output,
        workdir=workdir,
        val_fraction=val_fraction,
        seed=seed,
        partitions=partitions,
        image_size=image_size,
        strict=strict,
        backend=backend,
        namespace=namespace,
        spark_image=spark_image,
        spark_executors=spark_executors,
        spark_executor_cores=spark_executor_cores,
        spark_executor_memory=spark_executor_memory,
        spark_driver_memory=spark_driver_memory,
        s3_endpoint=s3_endpoint,
        timeout_s=DEADLINES["preprocess"] - JOB_MARGIN_S,
    )
    # Cached on the dataset id (and the job's settings): no run id among the inputs. A retry re-attaches to
    # the SparkApplication, which is named after the dataset.
    preprocess.set_caching_options(True).set_retry(num_retries=1, backoff_duration="60s")
    _on_cluster(preprocess, "preprocess", pipeline_image, bucket_secret)

    train = c.train(
        dataset=preprocess.outputs["dataset"],
        workdir=workdir,
        model_name=model,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        backend=backend,
        namespace=namespace,
        trainer_image=trainer_image,
        workers=train_workers,
        gpus_per_worker=gpus_per_worker,
        s3_endpoint=s3_endpoint,
        run_name=run_name,
        timeout_s=DEADLINES["train"] - JOB_MARGIN_S,
    )
    # A retry re-attaches to the run's TFJob (named after the run's settings), which resumes from its last
    # checkpoint.
    train.set_caching_options(False).set_retry(num_retries=1, backoff_duration="60s")
    _on_cluster(train, "train", pipeline_image, bucket_secret)

    evaluate = c.evaluate(
        dataset=preprocess.outputs["dataset"], model=train.outputs["model"], s3_endpoint=s3_endpoint
    )
    # Evaluation runs TensorFlow in the step's own pod (CPU); the test split is small.
    evaluate.set_caching_options(False).set_cpu_request("1").set_memory_request("2G").set_memory_limit("6G")
    _on_cluster(evaluate, "evaluate", pipeline_image, bucket_secret)

    promote = c.promote(
        model=train.outputs["model"],
        metrics=evaluate.outputs["metrics"],
        min_accuracy=min_accuracy,
        tolerance=tolerance,
        max_recall_drop=max_recall_drop,
        s3_endpoint=s3_endpoint,
    )
    # The gate reads and writes the champion record under a lock: never cached, never retried blindly.
    promote.set_caching_options(False).set_cpu_request("1").set_memory_request("2G").set_memory_limit("6G")
    _on_cluster(promote, "promote", pipeline_image, bucket_secret)

    # Deploy only a promoted model, and only when asked (the outer condition is the gate's answer).
    with (
        dsl.If(promote.outputs["Output"] == True, name="promoted"),  # noqa: E712 - a KFP condition, not a test
        dsl.If(deploy == True, name="deploy-wanted"),  # noqa: E712
    ):
        deployed = c.deploy(
            model=train.outputs["model"],
            name=deploy_name,
            canary_percent=canary_percent,
            backend=backend,
            namespace=namespace,
            s3_endpoint=s3_endpoint,
            timeout_s=DEADLINES["deploy"] - JOB_MARGIN_S,
        )
        # An unchanged model is a no-op; a retry re-applies the same spec and waits again.
        deployed.set_caching_options(False).set_retry(num_retries=1, backoff_duration="60s")
        _on_cluster(deployed, "deploy", pipeline_image, bucket_secret)

    return Outputs(
        dataset=preprocess.outputs["dataset"],
        model=train.outputs["model"],
        metrics=evaluate.outputs["metrics"],
        confusion=evaluate.outputs["confusion"],
        report=evaluate.outputs["report"],
        decision=promote.outputs["decision"],
        promotion=promote.outputs["summary"],
    )
