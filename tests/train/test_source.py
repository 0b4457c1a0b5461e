"""The dataset reader (no TensorFlow): zero-copy decoding, checks, shuffling, batching and sharding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from cifarflow.errors import InputError
from cifarflow.storage import Store
from cifarflow.train import arrays, source

from .conftest import CLASSES


def numbered(n: int) -> arrays.Split:
    """Images whose first three bytes spell their index, so every image can be traced through the reader."""
    images = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) // 65536
    images[:, 0, 0, 1] = (np.arange(n) // 256) % 256
    images[:, 0, 0, 2] = np.arange(n) % 256
    return images, (np.arange(n) % 10).astype(np.int32)


def index_of(images: np.ndarray) -> np.ndarray:
    px = images[:, 0, 0].astype(np.int64)
    return px[:, 0] * 65536 + px[:, 1] * 256 + px[:, 2]


@pytest.fixture(scope="module")
def numbered_source(tmp_path_factory: pytest.TempPathFactory) -> source.DataSource:
    url = str(tmp_path_factory.mktemp("numbered") / "ds")
    split = numbered(5000)
    arrays.write(Store(), url, {"train": split, "test": split}, class_names=CLASSES, files_per_split=5)
    return source.open_source(Store(), url)


def test_row_groups_decode_zero_copy_in_hwc(numbered_source: source.DataSource) -> None:
    images, labels = next(numbered_source.chunks("test"))
    assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8
    assert not images.flags.owndata  # a view of the Arrow buffer, not a copy
    expected, expected_labels = numbered(5000)
    n = len(labels)
    np.testing.assert_array_equal(images, expected[:n])
    np.testing.assert_array_equal(labels, expected_labels[:n])


def test_evaluation_reads_every_image_once_in_order(numbered_source: source.DataSource) -> None:
    seen = [index_of(x) for x, _ in source.batches(numbered_source, "test", 512, training=False)]
    assert sum(map(len, seen)) == 5000
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(5000))


def test_training_batches_are_shuffled_full_and_consistent(numbered_source: source.DataSource) -> None:
    stream = source.batches(numbered_source, "train", 100, training=True, shuffle_buffer=2500, seed=3)
    drawn = []
    for _ in range(25):  # one pass minus the buffer: no image can come twice yet
        images, labels = next(stream)
        assert images.shape == (100, 32, 32, 3)
        ids = index_of(images)
        np.testing.assert_array_equal(labels, ids % 10)  # labels travel with their images
        drawn.append(ids)
    ids = np.concatenate(drawn)
    assert len(np.unique(ids)) == len(ids)
    assert not np.array_equal(ids[:100], np.sort(ids[:100]))  # shuffled
    # Open files are read a row group at a time in turn (here a file is one group of 1000 images), so the
    # buffer holds several files from the first batch on.
    assert len(np.unique(ids[:100] // 1000)) >= 3


def test_workers_read_disjoint_files(numbered_source: source.DataSource) -> None:
    firsts = []
    for worker in (0, 1):
        stream = source.batches(
            numbered_source, "train", 100, training=True, shard=(worker, 2), shuffle_buffer=500
        )
        firsts.append(set(np.concatenate([index_of(next(stream)[0]) for _ in range(15)]) // 1000))
    # 5 files over 2 workers: files 0, 2, 4 and 1, 3.
    assert firsts[0] <= {0, 2, 4} and firsts[1] <= {1, 3}


def test_more_workers_than_files_shards_images(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    arrays.write(Store(), url, {"train": numbered(400)}, class_names=CLASSES, files_per_split=1)
    src = source.open_source(Store(), url)
    got = [
        index_of(next(source.batches(src, "train", 190, training=True, shard=(w, 2), shuffle_buffer=200))[0])
        for w in (0, 1)
    ]
    assert set(got[0] % 2) == {0} and set(got[1] % 2) == {1}


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (160, 160)])
def test_any_image_size_is_read_at_the_manifest_size(tmp_path: Path, size: tuple[int, int]) -> None:
    images, labels = arrays.synthetic(40, classes=5, size=size)
    url = str(tmp_path / "ds")
    arrays.write(Store(), url, {"train": (images, labels)}, class_names=CLASSES[:5], files_per_split=2)
    src = source.open_source(Store(), url)
    assert src.shape == (*size, 3) and src.num_classes == 5
    got = np.concatenate([x for x, _ in src.chunks("train")])
    assert got.shape == (40, *size, 3)
    np.testing.assert_array_equal(got, images)


@pytest.mark.parametrize(
    ("image", "shown"),
    [({"channels": 1}, "32x32x1 HWC uint8"), ({"channels": 4}, "32x32x4"), ({"height": 4}, "4x32x3")],
)
def test_images_that_are_not_rgb_of_a_usable_size_are_one_line(
    tmp_path: Path, image: dict[str, int], shown: str
) -> None:
    url = str(tmp_path / "ds")
    arrays.write(Store(), url, {"train": numbered(20)}, class_names=CLASSES, files_per_split=1)
    manifest = tmp_path / "ds" / "_manifest.json"
    record = json.loads(manifest.read_text())
    record["image"].update(image)
    manifest.write_text(json.dumps(record))
    with pytest.raises(InputError, match=f"holds {shown}.* images, the models take HWC uint8 RGB") as err:
        source.open_source(Store(), url)
    assert "\n" not in str(err.value)


def test_shards_with_wrong_image_size_are_refused() -> None:
    images = pa.array([b"\x00" * 64 * 64 * 3] * 4, pa.binary())
    batch = pa.record_batch([images, pa.array([0, 1, 2, 3], pa.int32())], names=["image", "label"])
    with pytest.raises(InputError, match=r"holds images of \[12288\] bytes, its manifest says 3072"):
        source.decode_batch(batch, (32, 32, 3), 10, "s3://b/ds/train/part-0.parquet")


def test_labels_outside_the_classes_are_refused() -> None:
    images = arrays.binary_column(np.zeros((2, 3072), np.uint8))
    batch = pa.record_batch([images, pa.array([0, 10], pa.int32())], names=["image", "label"])
    with pytest.raises(InputError, match=r"labels outside 0\.\.9"):
        source.decode_batch(batch, (32, 32, 3), 10, "x")


def test_a_batch_larger_than_the_shard_is_refused(tiny_dataset: str) -> None:
    src = source.open_source(Store(), tiny_dataset)
    with pytest.raises(InputError, match="has 512 images, less than a batch of 600"):
        next(source.batches(src, "train", 600, training=True))
