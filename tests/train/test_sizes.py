"""Datasets that are not CIFAR-shaped: a 96 px, 5-class dataset trained, exported, evaluated and served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cifarflow.storage import Store
from cifarflow.train import arrays, export

from .conftest import SIZED_CLASSES, SIZED_SIDE
from .test_bad_input import run

tf = pytest.importorskip("tensorflow")


def test_a_96px_five_class_model_trains_exports_and_evaluates(sized_model: str) -> None:
    model = Path(sized_model)
    training = json.loads((model / "training.json").read_text())
    assert training["architecture"] == {
        "model": "resnet20", "width": 4, "num_classes": 5, "depth": 8, "stem": "imagenet"
    }  # fmt: skip
    assert training["dataset"]["class_names"] == SIZED_CLASSES

    images, _ = arrays.synthetic(7, classes=5, seed=9, size=SIZED_SIDE)
    with export.downloaded(Store(), sized_model) as local:
        fn = export.load_signature(local)
        spec = fn.structured_input_signature[1]["images"]
        assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, SIZED_SIDE, SIZED_SIDE, 3]
        out = fn(images=tf.constant(images))
    assert out["probabilities"].shape == (7, 5) and out["logits"].shape == (7, 5)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)
    names = [n.decode() for n in out["class_name"].numpy()]
    assert names == [SIZED_CLASSES[i] for i in out["class_id"].numpy()]

    metrics = json.loads((model / "metrics.json").read_text())  # written by train's own evaluation
    assert metrics["class_names"] == SIZED_CLASSES and metrics["test"]["images"] == 60
    assert np.array(metrics["test"]["confusion_matrix"]).shape == (5, 5)
    page = (model / "report.html").read_text()
    assert f"Test images ({SIZED_SIDE}x{SIZED_SIDE} px)" in page and "<td>dolphin</td>" in page


def test_cifarflow_evaluate_scores_it_on_its_own_size(
    sized_model: str, sized_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cifarflow.cli import main

    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--data", sized_dataset, "--model", sized_model, "--out", str(tmp_path / "eval")])
    assert done.value.code == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["test"]["images"] == 60

    # The same classes at CIFAR's size do not fit this model: one line, nothing written.
    splits = {s: arrays.synthetic(50, 5, i) for i, s in enumerate(("train", "test"))}
    small = arrays.write(
        Store(), str(tmp_path / "ds32"), splits, class_names=SIZED_CLASSES, dataset_id="ds-32"
    )
    line = run(["evaluate", "--data", small, "--model", sized_model, "--out", str(tmp_path / "e32")], capsys)
    assert "takes 96x96 images, dataset ds-32 holds 32x32" in line
    assert not (tmp_path / "e32").exists()
