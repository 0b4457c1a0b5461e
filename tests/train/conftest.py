"""Fixtures for the training tests: small committed datasets, written directly (no Spark) in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifarflow.storage import Store
from cifarflow.train import arrays

CLASSES = [f"class{i}" for i in range(10)]


def write_dataset(path: Path, train: int, val: int, test: int, files: int) -> str:
    """A committed dataset of ``cifarflow synth``'s learnable images (a grating per class)."""
    splits = {
        "train": arrays.synthetic(train, seed=0),
        "val": arrays.synthetic(val, seed=1),
        "test": arrays.synthetic(test, seed=2),
    }
    return arrays.write(Store(), str(path), splits, class_names=CLASSES, files_per_split=files)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """512/128/256 images in 4 files per split: enough for two workers to shard by file."""
    return write_dataset(tmp_path_factory.mktemp("tiny") / "ds", 512, 128, 256, files=4)


@pytest.fixture(scope="session")
def learn_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3000/300/600 images: a small ResNet learns them to high accuracy in a few CPU epochs."""
    return write_dataset(tmp_path_factory.mktemp("learn") / "ds", 3000, 300, 600, files=3)


# A dataset that is not CIFAR-shaped: 96 px (the strided stem, random-resized crops) and 5 named classes.
SIZED_SIDE = 96
SIZED_CLASSES = ["apple", "bear", "castle", "dolphin", "elephant"]


@pytest.fixture(scope="session")
def sized_dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """160/40/60 images of 96x96 in 5 classes, as a class-per-folder source preprocessed to 96 px would be."""
    splits = {
        split: arrays.synthetic(n, classes=len(SIZED_CLASSES), seed=seed, size=SIZED_SIDE)
        for seed, (split, n) in enumerate((("train", 160), ("val", 40), ("test", 60)))
    }
    url = str(tmp_path_factory.mktemp("sized") / "ds")
    return arrays.write(
        Store(), url, splits, class_names=SIZED_CLASSES, files_per_split=2, dataset_id="ds-96"
    )


def train_tiny(data: str, out: str, batch_size: int, *extra: str) -> str:
    """One epoch of a tiny ResNet (depth 8, width 4) on ``data`` into ``out``, in-process; returns ``out``."""
    pytest.importorskip("tensorflow")
    from cifarflow.cli import main

    args = ["train", "--data", data, "--out", out, "--epochs", "1", "--batch-size", str(batch_size)]
    with pytest.raises(SystemExit) as done:
        main([*args, "--depth", "8", "--width", "4", *extra])
    assert done.value.code == 0
    return out


@pytest.fixture(scope="session")
def sized_model(sized_dataset: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One epoch of a tiny ResNet on the 96 px dataset, exported and evaluated by `cifarflow train`."""
    return train_tiny(sized_dataset, str(tmp_path_factory.mktemp("sized-model") / "model"), 32)
