"""Evaluation metrics against an independent implementation, and the report page."""

from __future__ import annotations

import base64
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from cifarflow.storage import Store
from cifarflow.train import arrays, evaluate, report, source

from .conftest import CLASSES, train_tiny
from .test_bad_input import run


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 10, 2000)
    # Mostly right, with class 9 never predicted (precision 0/0 must be 0, like zero_division=0).
    y_pred = np.where(rng.random(2000) < 0.7, y_true, rng.integers(0, 9, 2000))
    y_pred[y_pred == 9] = 8
    got = evaluate.classification_metrics(y_true, y_pred, CLASSES)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=range(10), zero_division=0
    )
    np.testing.assert_array_equal(got["confusion_matrix"], confusion_matrix(y_true, y_pred, labels=range(10)))
    np.testing.assert_allclose([c["precision"] for c in got["per_class"]], precision)
    np.testing.assert_allclose([c["recall"] for c in got["per_class"]], recall)
    np.testing.assert_allclose([c["f1"] for c in got["per_class"]], f1)
    assert [c["support"] for c in got["per_class"]] == support.tolist()
    assert got["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert got["macro_recall"] == pytest.approx(recall.mean())


def report_metrics(labels: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict[str, Any]:
    """What evaluate hands the report: test metrics of these answers and a three-epoch history."""
    history = [
        {
            "epoch": e,
            "loss": 2.0 / e,
            "accuracy": 0.3 * e,
            "val_loss": 2.1 / e,
            "val_accuracy": 0.28 * e,
            "seconds": 1,
        }
        for e in (1, 2, 3)
    ]
    return {
        "model": "s3://bucket/model",
        "dataset": {"id": "ds-1", "url": "s3://bucket/ds"},
        "class_names": names,
        "test": evaluate.classification_metrics(labels, predicted, names),
        "history": history,
        "training": {"architecture": {"model": "resnet20"}, "job": {"workers": 2, "replicas": 2}},
    }


def pngs(page: str) -> list[tuple[int, int]]:
    """(width, height) of every embedded PNG, in page order."""
    sizes = []
    for encoded in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page):
        header = base64.b64decode(encoded[:64])
        sizes.append(struct.unpack(">II", header[16:24]))
    return sizes


def test_report_is_one_self_contained_page(tiny_dataset: str) -> None:
    src = source.open_source(Store(), tiny_dataset)
    images, labels = next(src.chunks("test"))
    predicted = labels.copy()
    predicted[:3] = (labels[:3] + 1) % 10
    metrics = report_metrics(labels, predicted, CLASSES)
    page = report.render(
        metrics, source=src, sample=images[:48], sample_labels=labels[:48], sample_pred=predicted[:48]
    )
    assert page.count("data:image/png;base64,") == 3  # curves, confusion matrix, image grid
    assert "2 worker(s), 2 replica(s)" in page and "class9" in page and "<script" not in page
    assert "Test images (32x32 px)" in page and "Most confused classes" in page


def test_report_of_many_classes_and_larger_images(tmp_path: Path) -> None:
    """100 classes at 64 px: every class keeps a readable row in the confusion matrix, the most confused pairs
    are listed by name, and the sample images are shown larger than CIFAR's."""
    names = [f"species {i:03d} with a long name" for i in range(100)]
    splits = {"train": arrays.synthetic(200, classes=100, size=64), "test": arrays.synthetic(300, 100, 1, 64)}
    src = source.open_source(Store(), arrays.write(Store(), str(tmp_path / "ds"), splits, class_names=names))
    images, labels = splits["test"]
    predicted = labels.copy()
    predicted[labels == 7] = 42  # one pair confused every time
    page = report.render(
        report_metrics(labels, predicted, names),
        source=src,
        sample=images[:48],
        sample_labels=labels[:48],
        sample_pred=predicted[:48],
    )
    _, confusion, grid = pngs(page)
    assert confusion[1] / 100 >= 12  # pixels per class row: room for a 6 pt name each
    assert "Test images (64x64 px)" in page
    pairs = page.split("Most confused classes", 1)[1].split("</table>", 1)[0]
    assert "<td>species 007 with a long name</td><td>species 042 with a long name</td><td>3</td>" in pairs

    cifar = report._grid(images[:48, ::2, ::2], labels[:48], predicted[:48], names)
    (cifar_grid,) = pngs("data:image/png;base64," + base64.b64encode(cifar).decode())
    assert grid[0] * grid[1] > 1.5 * cifar_grid[0] * cifar_grid[1]  # 64 px images shown larger than 32 px


@pytest.fixture(scope="module")
def cifar10_model(tiny_dataset: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A (barely) trained 10-class model."""
    return train_tiny(tiny_dataset, str(tmp_path_factory.mktemp("c10") / "model"), 64, "--no-evaluate")


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        (100, [f"fine{i}" for i in range(100)], 32, "predicts 10 classes, dataset ds-other has 100"),
        (10, [*CLASSES[:3], "cat", *CLASSES[4:]], 32, "(class 3: 'class3' there, 'cat' here)"),
        (10, CLASSES, 64, "takes 32x32 images, dataset ds-other holds 64x64"),
    ],
)
def test_a_model_is_not_scored_on_other_classes_or_sizes(
    cifar10_model: str,
    case: tuple[int, list[str], int, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A CIFAR-10 model on CIFAR-100 used to exit 0 with accuracy 0.026; other class names are as wrong, and
    images of another size do not fit the model's signature."""
    classes, names, size, expected = case
    splits = {s: arrays.synthetic(200, classes, i, size) for i, s in enumerate(("train", "test"))}
    data = arrays.write(Store(), str(tmp_path / "ds"), splits, class_names=names, dataset_id="ds-other")
    out = tmp_path / "eval"
    line = run(["evaluate", "--data", data, "--model", cifar10_model, "--out", str(out)], capsys)
    assert line.startswith(f"error: the model at {cifar10_model} ") and expected in line
    fix = "dataset with the classes it was trained on" if size == 32 else "dataset preprocessed to its size"
    assert f"(fix: evaluate it on a {fix}" in line
    assert not out.exists()
