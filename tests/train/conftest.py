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
