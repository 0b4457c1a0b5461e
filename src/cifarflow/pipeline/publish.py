"""Publishing step results to KFP output artifacts.

KFP records an output artifact at the URI it assigned under the run's pipeline root, and its launcher refuses
any other URI, so the artifacts hold copies (a manifest, a SavedModel: small) and say in their metadata where
the originals live. A Model artifact is thus a complete SavedModel in KFP's store, servable from there.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Protocol

from cifarflow.pipeline.results import CommittedDataset, Evaluation, TrainedModel
from cifarflow.storage import Store

if TYPE_CHECKING:
    from cifarflow.serve.promote import Decision


class Artifact(Protocol):
    """The part of ``kfp.dsl.Artifact`` the publishers use (structural, so tests need no KFP)."""

    uri: str
    metadata: dict[str, Any]

    @property
    def path(self) -> str: ...


def publish_dataset(info: CommittedDataset, artifact: Artifact, store: Store) -> None:
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


def publish_model(info: TrainedModel, artifact: Artifact, store: Store) -> None:
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


def publish_decision(decision: Decision, *, metrics: Artifact, summary: Artifact) -> None:
    """The gate's answer in the KFP UI: both models' scores and the thresholds as Metrics (``promoted`` is 1 or
    0), the verdict, its reason and the per-class recalls as Markdown."""
    scores = {"promoted": float(decision.promoted), "challenger_accuracy": decision.challenger.accuracy}
    if decision.champion is not None:
        scores["champion_accuracy"] = decision.champion.accuracy
    for name, value in {**scores, **decision.thresholds}.items():
        metrics.log_metric(name, value)  # type: ignore[attr-defined]
    metrics.metadata.update(
        {
            "reason": decision.reason,
            "dataset_id": decision.challenger.dataset_id,
            "challenger": decision.challenger.model,
            "champion": decision.champion.model if decision.champion is not None else "",
            "champion_reevaluated": decision.reevaluated,
            "record_url": decision.record_url,
        }
    )
    _write(summary.path, decision.markdown().encode())


def copy_tree(store: Store, url: str, local: str) -> None:
    """Copy every file under ``url`` into the local folder ``local``."""
    fs, path = store.fs(url)
    os.makedirs(local, exist_ok=True)
    fs.get(path.rstrip("/") + "/", local.rstrip("/") + "/", recursive=True)


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
