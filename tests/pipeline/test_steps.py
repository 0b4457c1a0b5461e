"""The step logic behind the components: the k8s backend's jobs, publishing artifacts, the error contract.

The Kubernetes API cannot run here, so the launchers' submit-and-watch is replaced by a stand-in that builds
the job with the launchers' own builders (what would be submitted) and then plays the job's part: it commits
the dataset or writes the SavedModel, as the driver or the chief would. Everything else is real: storage,
manifests, TrainConfig validation, kfp's artifact classes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from kfp import dsl

from cifarflow import deployment
from cifarflow.backends.kubernetes import SparkResources, TrainerResources
from cifarflow.data import manifest as mf
from cifarflow.errors import InputError
from cifarflow.k8s import launcher, names
from cifarflow.pipeline import inputs, publish, results, steps
from cifarflow.storage import Store, join

DATASET_ID = "ds-0123456789abcdef"
CLASSES = [f"class{i}" for i in range(10)]


def commit_dataset(store: Store, url: str, dataset_id: str = DATASET_ID) -> str:
    """A tiny committed dataset (2 images per split) written with the manifest module's own writers."""
    splits = {}
    for split in mf.SPLITS:
        table = pa.table(
            {
                "id": [f"{split}-0", f"{split}-1"],
                "label": pa.array([0, 1], pa.int32()),
                "image": [bytes(3072), np.full(3072, 255, np.uint8).tobytes()],
            }
        )
        entry = mf.write_shard(store, url, f"{split}/part-00000.parquet", table)
        splits[split] = mf.SplitInfo(rows=2, files=[entry])
    manifest = mf.Manifest(
        dataset_id=dataset_id,
        num_classes=10,
        class_names=CLASSES,
        splits=splits,
        stats=mf.FileEntry(path=mf.STATS, bytes=0, sha256=""),
        source={"raw": "test"},
        parameters={"val_fraction": 0.1, "seed": 0},
    )
    stats = mf.Stats(mean=[0.5] * 3, std=[0.5] * 3, counts={s: [1, 1] + [0] * 8 for s in mf.SPLITS})
    return mf.commit(store, url, manifest, stats)


def cluster(**kw: Any) -> inputs.Cluster:
    fields: dict[str, Any] = {
        "backend": "k8s",
        "namespace": "ml",
        "s3_endpoint": "http://minio.ml:9000",
        "timeout_s": 3000,
    }
    return inputs.Cluster(**(fields | kw))


def spark(**kw: Any) -> SparkResources:
    fields: dict[str, Any] = {
        "image": "registry.example/cifarflow-spark:abc123",
        "executors": 3,
        "executor_cores": 2,
        "executor_memory": "3g",
        "driver_memory": "2g",
    }
    return SparkResources(**(fields | kw))


@pytest.fixture
def workdir(tmp_path: Path) -> str:
    return str(tmp_path / "work")


@dataclass
class Submitted:
    """Jobs the launchers were asked to run: their settings and the body the launchers' builders made."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    chief_exports: bool = True  # whether the stand-in TFJob leaves a SavedModel behind


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> Submitted:
    state = Submitted()
    jobs = state.jobs

    def launch_preprocess(settings: Any, run_id: str, **kw: Any) -> launcher.LaunchResult:
        spec = launcher.preprocess_job(settings, run_id, **kw)
        jobs.append({"settings": settings, "run_id": run_id, "body": spec.body, **kw})
        commit_dataset(Store(), join(kw["out"], DATASET_ID))  # what the Spark driver does
        return launcher.LaunchResult(
            "SparkApplication", spec.name, settings.namespace, "COMPLETED", False, False, 1
        )

    def launch_train(settings: Any, run_id: str, **kw: Any) -> launcher.LaunchResult:
        spec = launcher.train_job(settings, run_id, **kw)
        jobs.append({"settings": settings, "run_id": run_id, "body": spec.body, **kw})
        if state.chief_exports:
            Store().write_bytes(
                join(kw["out"], "saved_model", "saved_model.pb"), b"graph"
            )  # what the chief does
        return launcher.LaunchResult("TFJob", spec.name, settings.namespace, "Succeeded", False, False, 1)

    monkeypatch.setattr(launcher, "launch_preprocess", launch_preprocess)
    monkeypatch.setattr(launcher, "launch_train", launch_train)
    for key in [k for k in os.environ if k.startswith("CIFARFLOW_K8S_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv(
        deployment.DEFAULTS_ENV, "/nonexistent"
    )  # no deployment ConfigMap unless a test mounts one
    return state


def preprocess_request(workdir: str, **kw: Any) -> inputs.PreprocessInputs:
    fields: dict[str, Any] = {
        "dataset_id": DATASET_ID,
        "raw_url": workdir + "/raw",
        "workdir": workdir,
        "val_fraction": 0.1,
        "seed": 7,
        "partitions": 0,
        "image_size": 0,
        "strict": False,
        "spark": spark(),
        "cluster": cluster(),
    }
    return inputs.PreprocessInputs(**(fields | kw))


def test_preprocess_on_k8s_runs_a_spark_application_built_from_the_parameters(
    workdir: str, submitted: Submitted
) -> None:
    info = steps.preprocess(preprocess_request(workdir))
    (job,) = submitted.jobs
    body, settings = job["body"], job["settings"]
    assert body["kind"] == "SparkApplication"
    assert body["metadata"]["namespace"] == "ml"
    assert body["spec"]["image"] == "registry.example/cifarflow-spark:abc123"
    assert body["spec"]["dynamicAllocation"]["initialExecutors"] == 3
    assert body["spec"]["executor"]["cores"] == 2
    assert body["spec"]["executor"]["memory"] == "3g"
    assert body["spec"]["driver"]["memory"] == "2g"
    assert settings.storage.s3_endpoint == "http://minio.ml:9000"
    assert settings.watch.timeout_s == 3000
    assert settings.images_from_cluster is False
    args = body["spec"]["arguments"]
    assert args[:5] == ["preprocess", "--raw", workdir + "/raw", "--out", "file://" + workdir + "/datasets"]
    assert args[args.index("--seed") + 1] == "7"
    # The job is named after the dataset and the Spark settings: no run id, so KFP's cache key stays stable.
    assert job["run_id"].startswith(DATASET_ID + "-")
    assert info.dataset_id == DATASET_ID
    assert info.counts == {"train": 2, "val": 2, "test": 2}


def test_the_spark_job_name_is_stable_and_changes_with_the_settings(
    workdir: str, tmp_path: Path, submitted: Submitted
) -> None:
    steps.preprocess(preprocess_request(workdir))
    steps.preprocess(preprocess_request(str(tmp_path / "w2")))
    steps.preprocess(preprocess_request(str(tmp_path / "w3"), spark=spark(executors=5)))
    first, again, other = (names.job_name("preprocess", job["run_id"]) for job in submitted.jobs)
    assert first == again != other


def test_a_committed_dataset_starts_no_job(workdir: str, submitted: Submitted) -> None:
    commit_dataset(Store(), join(steps.resolve_workdir(workdir).datasets, DATASET_ID))
    info = steps.preprocess(preprocess_request(workdir))
    assert submitted.jobs == []
    assert info.reused is True


def deploy_defaults(monkeypatch: pytest.MonkeyPatch, folder: Path, **data: str) -> None:
    """The cifarflow-defaults ConfigMap as the kubelet mounts it: a file per key (and its own dot-entries)."""
    folder.mkdir()
    (folder / "..data").mkdir()
    for key, value in data.items():
        (folder / key).write_text(value)
    monkeypatch.setenv(deployment.DEFAULTS_ENV, str(folder))


def train_request(workdir: str, dataset_url: str, **kw: Any) -> inputs.TrainInputs:
    fields: dict[str, Any] = {
        "dataset_url": dataset_url,
        "workdir": workdir,
        "model": "resnet9",
        "epochs": 4,
        "batch_size": 256,
        "seed": 1,
        "trainer": TrainerResources(
            image="registry.example/cifarflow-trainer:abc123", workers=3, gpus_per_worker=1
        ),
        "cluster": cluster(),
    }
    return inputs.TrainInputs(**(fields | kw))


def test_train_on_k8s_runs_a_tfjob_for_the_run(workdir: str, submitted: Submitted) -> None:
    dataset = join(steps.resolve_workdir(workdir).datasets, DATASET_ID)
    commit_dataset(Store(), dataset)
    info = steps.train(train_request(workdir, dataset))
    (job,) = submitted.jobs
    body = job["body"]
    worker = body["spec"]["tfReplicaSpecs"]["Worker"]
    container = worker["template"]["spec"]["containers"][0]
    assert body["kind"] == "TFJob" and body["metadata"]["namespace"] == "ml"
    assert worker["replicas"] == 3
    assert container["image"] == "registry.example/cifarflow-trainer:abc123"
    assert container["resources"]["limits"]["nvidia.com/gpu"] in (1, "1")
    assert job["extra_args"] == [
        "--model", "resnet9", "--epochs", "4", "--batch-size", "256", "--seed", "1", "--no-evaluate",
    ]  # fmt: skip
    # Named by the settings, not by the KFP run: the same settings find the same folder and TFJob.
    run = train_config(workdir, dataset).run_name(DATASET_ID)
    assert job["out"] == info.model_url == join("file://" + workdir, "models", DATASET_ID, run)
    assert job["run_id"] == f"{run}-{info.model_url}"
    assert info.saved_model_url == info.model_url + "/saved_model"


def train_config(workdir: str, dataset: str, **kw: Any) -> Any:
    return steps.train_config(train_request(workdir, dataset, **kw), dataset, "")


def test_train_settings_name_the_model_folder_and_another_run_is_one_conflict_line(
    workdir: str, submitted: Submitted, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = join(steps.resolve_workdir(workdir).datasets, DATASET_ID)
    commit_dataset(Store(), dataset)
    first = steps.train(train_request(workdir, dataset))
    again = steps.train(train_request(workdir, dataset, cluster=cluster(timeout_s=4000)))
    other = steps.train(train_request(workdir, dataset, epochs=5))
    assert first.model_url == again.model_url != other.model_url
    named = steps.train(train_request(workdir, dataset, run_name="baseline"))
    assert named.model_url == join("file://" + workdir, "models", DATASET_ID, "baseline")
    jobs = [names.job_name("train", job["run_id"]) for job in submitted.jobs]
    assert jobs[0] == jobs[1] and len(set(jobs)) == 3  # a retry or rerun re-attaches to its TFJob

    # "baseline" now holds a run of 4 epochs (its run.json, as the trainer writes it): 5 epochs is refused.
    from cifarflow.train import runs

    runs.record(
        Store(), train_config(workdir, dataset).model_copy(update={"out": named.model_url}), DATASET_ID
    )
    capsys.readouterr()
    with pytest.raises(SystemExit):
        steps.train(train_request(workdir, dataset, run_name="baseline", epochs=5))
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert "holds another training run" in line and "epochs 4 there, 5 here" in line
    assert len(submitted.jobs) == 4  # no TFJob for the refused run


def test_a_tfjob_that_leaves_no_savedmodel_is_one_error_line(
    workdir: str, submitted: Submitted, capsys: pytest.CaptureFixture[str]
) -> None:
    submitted.chief_exports = False
    dataset = join(steps.resolve_workdir(workdir).datasets, DATASET_ID)
    commit_dataset(Store(), dataset)
    with pytest.raises(SystemExit) as exit_info:
        steps.train(train_request(workdir, dataset))
    assert exit_info.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    assert line.startswith("error: training finished without a SavedModel at file://")
    assert line.endswith("(fix: read the training job's log)")


def test_bad_training_parameters_fail_before_any_job(
    workdir: str, submitted: Submitted, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = join(steps.resolve_workdir(workdir).datasets, DATASET_ID)
    commit_dataset(Store(), dataset)
    with pytest.raises(SystemExit):
        steps.train(train_request(workdir, dataset, batch_size=0))
    assert submitted.jobs == []
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: pipeline parameter batch_size=0 is invalid: input should be greater than or equal to 1 "
        "(fix: pass a value within the bound above)"
    )


def test_publish_dataset_and_model_write_copies_and_say_where_the_originals_are(tmp_path: Path) -> None:
    store = Store()
    dataset_url = "file://" + str(tmp_path / "datasets" / DATASET_ID)
    manifest_url = commit_dataset(store, dataset_url)
    info = results.describe_dataset(store, dataset_url, reused=False)
    artifact = dsl.Dataset(uri=str(tmp_path / "kfp" / "preprocess" / "dataset"))
    publish.publish_dataset(info, artifact, store)
    assert Path(artifact.path).read_bytes() == store.read_bytes(manifest_url)
    assert artifact.metadata == {
        "dataset_id": DATASET_ID,
        "dataset_url": dataset_url,
        "manifest_url": manifest_url,
        "num_classes": 10,
        "class_names": CLASSES,
        "reused": False,
        "test_images": 2,
        "train_images": 2,
        "val_images": 2,
    }

    model_url = "file://" + str(tmp_path / "models" / "m")
    for rel in ("saved_model.pb", "variables/variables.index", "variables/variables.data-00000-of-00001"):
        store.write_bytes(join(model_url, "saved_model", rel), rel.encode())
    model = dsl.Model(uri=str(tmp_path / "kfp" / "train" / "model"))
    publish.publish_model(
        results.TrainedModel(model_url, model_url + "/saved_model", DATASET_ID, "resnet20", 3, 128),
        model,
        store,
    )
    copied = sorted(str(p.relative_to(model.path)) for p in Path(model.path).rglob("*") if p.is_file())
    assert copied == [
        "saved_model.pb",
        "variables/variables.data-00000-of-00001",
        "variables/variables.index",
    ]
    assert model.metadata["saved_model_url"] == model_url + "/saved_model"
    assert model.metadata["framework"] == "tensorflow"


def test_publish_evaluation_fills_the_kfp_metrics_artifacts(tmp_path: Path) -> None:
    result = results.Evaluation(
        scores={"accuracy": 0.75, "test_images": 4.0},
        class_names=["a", "b"],
        confusion=[[2, 0], [1, 1]],
        report_url="s3://b/report.html",
        metrics_url="s3://b/metrics.json",
        report_html=b"<html>report</html>",
    )
    metrics = dsl.Metrics(uri=str(tmp_path / "m"))
    confusion = dsl.ClassificationMetrics(uri=str(tmp_path / "c"))
    report = dsl.HTML(uri=str(tmp_path / "r"))
    publish.publish_evaluation(result, metrics=metrics, confusion=confusion, report=report)
    assert metrics.metadata == {"accuracy": 0.75, "test_images": 4.0, "metrics_url": "s3://b/metrics.json"}
    assert confusion.metadata["confusionMatrix"] == {
        "annotationSpecs": [{"displayName": "a"}, {"displayName": "b"}],
        "rows": [{"row": [2, 0]}, {"row": [1, 1]}],
    }
    assert Path(report.path).read_bytes() == b"<html>report</html>"


def test_an_unknown_backend_is_refused_inside_the_step(
    workdir: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        steps.preprocess(preprocess_request(workdir, cluster=cluster(backend="cloud")))
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: unknown backend 'cloud' (fix: use backend=local or backend=k8s)"
    )
    with pytest.raises(InputError):
        inputs.check_arguments({"backend": "cloud"})


def test_empty_parameters_defer_to_the_clusters_cifarflow_defaults(
    tmp_path: Path, submitted: Submitted, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the GKE overlay deploys: GCS workdir, no endpoint or Secret, one GPU per worker, skaffold's images.
    workdir = str(tmp_path / "gke-work")
    deploy_defaults(
        monkeypatch,
        tmp_path / "defaults",
        CIFARFLOW_WORKDIR=workdir,
        CIFARFLOW_K8S_NAMESPACE="team-a",
        CIFARFLOW_K8S_IMAGES_FROM_CLUSTER="true",
        CIFARFLOW_K8S_STORAGE__S3_ENDPOINT="null",
        CIFARFLOW_K8S_STORAGE__CREDENTIALS_SECRET="null",
        CIFARFLOW_K8S_TRAIN__GPUS="1",
    )
    deferring = cluster(namespace="", s3_endpoint="")
    steps.preprocess(preprocess_request("", spark=spark(image=""), cluster=deferring))
    info = results.describe_dataset(
        Store(), join(steps.resolve_workdir("").datasets, DATASET_ID), reused=False
    )
    trainer = TrainerResources(image="", workers=2, gpus_per_worker=-1)
    steps.train(train_request("", info.dataset_url, trainer=trainer, cluster=deferring))
    pre, train = (job["settings"] for job in submitted.jobs)
    assert info.dataset_url == "file://" + workdir + "/datasets/" + DATASET_ID
    assert pre.namespace == train.namespace == "team-a"
    assert pre.images_from_cluster and train.images_from_cluster
    assert pre.storage.s3_endpoint is None and pre.storage.credentials_secret is None
    assert train.train.gpus == 1
    # Parameters that are set win over the deployment.
    steps.train(train_request("", info.dataset_url, cluster=cluster(namespace="ml")))
    chosen = submitted.jobs[-1]["settings"]
    assert (chosen.namespace, chosen.train.gpus, chosen.images_from_cluster) == ("ml", 1, False)
    assert chosen.train.image == "registry.example/cifarflow-trainer:abc123"


def test_no_workdir_anywhere_is_one_error_line(
    submitted: Submitted, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        steps.ingest(source="cifar10", workdir="", s3_endpoint="")
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(
        "error: no workdir: the parameter is empty and no cifarflow-defaults ConfigMap sets "
    )


def test_promote_step_publishes_the_decision_with_both_models_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from serve.test_promote import fake_model

    store, models = Store(), "file://" + str(tmp_path / "models")
    gate = {"min_accuracy": 0.3, "tolerance": 0.01, "max_recall_drop": 0.1}

    def promote(name: str, accuracy: float) -> Any:
        url = fake_model(store, join(models, "ds-a", name), accuracy)
        return steps.promote(model_url=url, metrics_url=join(url, "metrics.json"), gate=gate, s3_endpoint="")

    assert promote("champ", 0.80).promoted
    decision = promote("worse", 0.50)
    metrics, summary = dsl.Metrics(uri=str(tmp_path / "d")), dsl.Markdown(uri=str(tmp_path / "s.md"))
    publish.publish_decision(decision, metrics=metrics, summary=summary)
    meta = metrics.metadata
    assert meta["promoted"] == 0.0 and meta["challenger_accuracy"] == pytest.approx(0.491)
    assert meta["champion_accuracy"] == pytest.approx(0.799)
    assert (meta["min_accuracy"], meta["tolerance"], meta["max_recall_drop"]) == (0.3, 0.01, 0.1)
    assert meta["reason"] == "test accuracy 0.4910 < champion 0.7990 - tolerance 0.0100"
    assert meta["champion"].endswith("/models/ds-a/champ") and meta["challenger"].endswith("/worse")
    text = Path(summary.path).read_text()
    assert text.startswith("**kept the champion**: test accuracy 0.4910")
    assert "| challenger |" in text and "| champion |" in text and "| class9 | 0.5300 | 0.7900 |" in text
    assert json.loads((tmp_path / "models" / "champion.json").read_text())["champion"]["model"].endswith(
        "champ"
    )

    with pytest.raises(SystemExit):
        steps.promote(model_url="x", metrics_url="x", gate={**gate, "min_accuracy": 2.0}, s3_endpoint="")
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: pipeline parameter min_accuracy=2.0 is invalid: input should be less than or equal to 1 "
        "(fix: pass a value within the bound above)"
    )


def test_preprocess_on_k8s_passes_the_image_folder_parameters(workdir: str, submitted: Submitted) -> None:
    steps.preprocess(preprocess_request(workdir, image_size=48, strict=True, partitions=4))
    (job,) = submitted.jobs
    args = job["body"]["spec"]["arguments"]
    assert args[5:] == [
        "--val-fraction",
        "0.1",
        "--seed",
        "7",
        "--partitions",
        "4",
        "--image-size",
        "48",
        "--strict",
    ]


def test_a_bad_image_size_fails_in_its_step_before_any_job(
    workdir: str, submitted: Submitted, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        steps.preprocess(preprocess_request(workdir, image_size=4))
    assert submitted.jobs == []
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: pipeline parameter image_size=4 is invalid: input should be greater than or equal to 8 "
        "(fix: pass a value within the bound above)"
    )


@pytest.fixture
def image_raw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A small image folder (3 classes, 40x40) landed by the ingest step: (workdir, raw URL)."""
    from cifarflow.data.synth_folders import write_image_folder

    monkeypatch.setenv(deployment.DEFAULTS_ENV, "/nonexistent")
    source = write_image_folder(
        str(tmp_path / "src"), classes=3, train=30, test=9, size=40, seed=0, store=Store()
    )
    workdir = str(tmp_path / "work")
    return workdir, steps.ingest(source=source, workdir=workdir, s3_endpoint="").raw_url


def test_plan_ids_differ_by_image_size(image_raw: tuple[str, str]) -> None:
    _, raw = image_raw
    planned = {
        size: steps.plan(raw_url=raw, val_fraction=0.1, seed=0, image_size=size, s3_endpoint="")
        for size in (0, 24, 32)
    }
    assert len(set(planned.values())) == 3


@pytest.mark.slow
def test_plan_names_the_dataset_the_spark_job_commits_at_an_image_size(image_raw: tuple[str, str]) -> None:
    """plan (no Spark) and the Spark job (here the local backend; on k8s the SparkApplication's driver runs the
    same `cifarflow preprocess --image-size`) agree on the id, which covers the size."""
    workdir, raw = image_raw
    planned = steps.plan(raw_url=raw, val_fraction=0.1, seed=0, image_size=24, s3_endpoint="")
    request = preprocess_request(
        workdir,
        dataset_id=planned,
        raw_url=raw,
        seed=0,
        image_size=24,
        cluster=cluster(backend="local", namespace="", s3_endpoint=""),
    )
    info = steps.preprocess(request)  # raises if the committed id is not the planned one
    assert info.dataset_id == planned and not info.reused
    manifest, _ = mf.load(Store(), info.dataset_url)
    assert (manifest.image.height, manifest.image.width) == (24, 24)
    assert manifest.class_names == info.class_names and len(manifest.class_names) == 3


def test_plan_refuses_an_image_size_for_a_cifar_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cifarflow.data.synth import write_archive

    monkeypatch.setenv(deployment.DEFAULTS_ENV, "/nonexistent")
    archive = write_archive(str(tmp_path), train=20, test=10, fmt="python", classes=10, seed=0, store=Store())
    raw = steps.ingest(source=archive, workdir=str(tmp_path / "work"), s3_endpoint="").raw_url
    with pytest.raises(SystemExit):
        steps.plan(raw_url=raw, val_fraction=0.1, seed=0, image_size=64, s3_endpoint="")
    last = capsys.readouterr().err.splitlines()[-1]
    assert (
        last.startswith("error: ")
        and "is a CIFAR archive: --image-size and --strict are for image folders" in last
    )
