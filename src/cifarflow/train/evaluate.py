"""Evaluation: the exported SavedModel, through its serving signature, on the test split.

What is scored is what will be served: raw uint8 images into ``serving_default``, normalisation inside. Writes
``OUT/metrics.json`` (per-epoch training history, test accuracy, per-class precision/recall, confusion matrix,
class names) and ``OUT/report.html``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cifarflow.errors import InputError
from cifarflow.storage import Store, join, redact
from cifarflow.train.source import DataSource, open_source

log = logging.getLogger(__name__)

METRICS = "metrics.json"
REPORT = "report.html"
GRID = 48  # test images shown in the report
PREDICT_BATCH = 1024


@dataclass
class EvalResult:
    metrics_url: str
    report_url: str
    accuracy: float
    metrics: dict[str, Any]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[true, predicted]`` counts."""
    flat = y_true.astype(np.int64) * num_classes + y_pred.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix (a class never predicted has precision
    0, as scikit-learn's ``zero_division=0``)."""
    k = len(class_names)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0
    )
    per_class = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]
    return {
        "images": len(y_true),
        "accuracy": float(tp.sum() / max(len(y_true), 1)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }


def predict(fn: Any, source: DataSource, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, predicted class ids, the first GRID images)`` of a split, streamed a row group at a time."""
    import tensorflow as tf

    labels: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
    sample: list[np.ndarray] = []
    for images, y in source.chunks(split):
        for start in range(0, len(y), PREDICT_BATCH):
            batch = images[start : start + PREDICT_BATCH]
            predicted.append(fn(images=tf.constant(batch))["class_id"].numpy())
        labels.append(y)
        if sum(map(len, sample)) < GRID:
            sample.append(images[:GRID].copy())
    if not labels:
        raise InputError(f"the {split} split of {source.manifest.dataset_id} is empty", "re-run preprocess")
    return np.concatenate(labels), np.concatenate(predicted), np.concatenate(sample)[:GRID]


def evaluate(data: str, model: str, out: str, *, store: Store) -> EvalResult:
    """Score ``MODEL/saved_model`` on the test split of ``data``; write metrics.json and report.html."""
    source = open_source(store, data)
    if not source.has("test"):
        raise InputError(f"dataset {source.manifest.dataset_id} has no test images", "re-run preprocess")
    from cifarflow.train import tfenv
    from cifarflow.train.trainer import check_output

    check_output(store, out)
    tfenv.load()  # quietly, before export imports it
    from cifarflow.train import export, report

    training = _training_record(store, model)
    with export.downloaded(store, model) as local:
        fn = export.load_signature(local)
        check_image_size(export.input_size(fn), source, model)
        check_classes(fn, training, source, model)
        started = time.perf_counter()
        y_true, y_pred, sample = predict(fn, source, "test")
        seconds = time.perf_counter() - started
    test = classification_metrics(y_true, y_pred, source.class_names)
    test["images_per_second"] = len(y_true) / seconds if seconds else 0.0
    metrics: dict[str, Any] = {
        "model": redact(model),
        "dataset": {"id": source.manifest.dataset_id, "url": redact(source.base)},
        "class_names": source.class_names,
        "test": test,
        "history": training.get("history", []),
        "training": {k: training[k] for k in ("config", "architecture", "job") if k in training},
    }
    metrics_url, report_url = join(out, METRICS), join(out, REPORT)
    html = report.render(
        metrics,
        source=source,
        sample=sample,
        sample_labels=y_true[: len(sample)],
        sample_pred=y_pred[: len(sample)],
    )
    store.write_text(metrics_url, json.dumps(metrics, indent=2) + "\n")
    store.write_text(report_url, html)
    log.info(
        "test accuracy %.4f on %d images (%.0f images/s through the SavedModel); report: %s",
        test["accuracy"], test["images"], test["images_per_second"], redact(report_url),
    )  # fmt: skip
    return EvalResult(
        metrics_url=metrics_url, report_url=report_url, accuracy=test["accuracy"], metrics=metrics
    )


def check_image_size(size: tuple[int, int], source: DataSource, model: str) -> None:
    """A model takes images of the size it was trained on: refuse a dataset of another size (resizing here
    would score something other than what the dataset holds)."""
    if size != source.shape[:2]:
        raise InputError(
            f"the model at {redact(model)} takes {size[0]}x{size[1]} images, dataset "
            f"{source.manifest.dataset_id} holds {source.shape[0]}x{source.shape[1]}",
            "evaluate it on a dataset preprocessed to its size (or train a model on this one)",
        )


def check_classes(fn: Any, training: dict[str, Any], source: DataSource, model: str) -> None:
    """A model scores only the classes it was trained on: refuse a dataset with other classes (a CIFAR-10
    model on CIFAR-100 would otherwise "score" a meaningless accuracy)."""
    trained = int(fn.structured_outputs["logits"].shape[-1])
    names = list(training.get("dataset", {}).get("class_names") or [])
    wanted = source.class_names
    if trained != len(wanted):
        problem = f"predicts {trained} classes, dataset {source.manifest.dataset_id} has {len(wanted)}"
    elif names and names != wanted:
        first = next(i for i, (a, b) in enumerate(zip(names, wanted, strict=True)) if a != b)
        problem = (
            f"was trained on other classes than dataset {source.manifest.dataset_id} has "
            f"(class {first}: {names[first]!r} there, {wanted[first]!r} here)"
        )
    else:
        return
    raise InputError(
        f"the model at {redact(model)} {problem}",
        "evaluate it on a dataset with the classes it was trained on (or train a model on this one)",
    )


def _training_record(store: Store, model: str) -> dict[str, Any]:
    from cifarflow.train.trainer import TRAINING_JSON

    url = join(model, TRAINING_JSON)
    if not store.exists(url):
        log.warning("no %s next to the model: the report will have no training curves", TRAINING_JSON)
        return {}
    record: dict[str, Any] = json.loads(store.read_text(url))
    return record
