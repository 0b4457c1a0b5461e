"""What the steps return: plain, typed facts that the publishers turn into KFP artifacts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cifarflow.storage import Store, join


@dataclass(frozen=True)
class Ingested:
    raw_url: str
    identity: str  # the archive's sha256, or an image folder's listing fingerprint


@dataclass(frozen=True)
class CommittedDataset:
    dataset_id: str
    dataset_url: str
    manifest_url: str
    counts: dict[str, int]  # rows per split
    class_names: list[str]
    reused: bool


@dataclass(frozen=True)
class TrainedModel:
    model_url: str
    saved_model_url: str
    dataset_id: str
    model: str
    epochs: int
    batch_size: int


@dataclass(frozen=True)
class Evaluation:
    scores: dict[str, float]  # what the Metrics artifact shows, in this order
    class_names: list[str]
    confusion: list[list[int]]  # [true class][predicted class]
    report_url: str
    metrics_url: str
    report_html: bytes = field(repr=False, default=b"")


def describe_dataset(store: Store, dataset_url: str, *, reused: bool) -> CommittedDataset:
    """What the Dataset artifact shows, read back from the committed manifest (the one source of truth)."""
    from cifarflow.data import manifest as mf

    manifest, base = mf.load(store, dataset_url)
    counts = {name: split.rows for name, split in manifest.splits.items()}
    return CommittedDataset(
        manifest.dataset_id, base, join(base, mf.MANIFEST), counts, list(manifest.class_names), reused
    )


def evaluation(result: Any, store: Store) -> Evaluation:
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
