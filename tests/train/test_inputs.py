"""The tf.data side: the in-graph augmentation and the per-worker datasets the strategy distributes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from cifarflow.errors import InputError, unmark  # noqa: E402
from cifarflow.storage import Store  # noqa: E402
from cifarflow.train import inputs, source  # noqa: E402


def all_crops(image: np.ndarray, pad: tuple[int, int]) -> list[np.ndarray]:
    """Every same-size crop of the image reflection-padded by ``pad`` (rows, columns), flipped and not."""
    (h, w), (py, px) = image.shape[:2], pad
    padded = np.pad(image, ((py, py), (px, px), (0, 0)), mode="reflect")
    crops = [padded[y : y + h, x : x + w] for y in range(2 * py + 1) for x in range(2 * px + 1)]
    return crops + [c[:, ::-1] for c in crops]


@pytest.mark.parametrize(("size", "pad"), [((32, 32), (4, 4)), ((64, 64), (8, 8)), ((48, 80), (6, 10))])
def test_augment_is_a_padded_crop_and_flip_per_image(size: tuple[int, int], pad: tuple[int, int]) -> None:
    """The padding is an eighth of the side: CIFAR's 4 pixels at 32 px, 8 at 64 px."""
    images = np.random.default_rng(1).integers(0, 256, (64, *size, 3), dtype=np.uint8)
    out = inputs.augment(tf.constant(images), tf.constant([7, 11], tf.int64)).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    assert (inputs.pad_for(size[0]), inputs.pad_for(size[1])) == pad
    used = set()
    for image, augmented in zip(images, out, strict=True):
        matches = [i for i, crop in enumerate(all_crops(image, pad)) if np.array_equal(crop, augmented)]
        assert matches, "an augmented image is not a crop of its padded original"
        used.add(matches[0])
    assert len(used) > 20  # per-image randomness, not one crop for the whole batch


def test_large_images_get_a_random_resized_crop_and_flip() -> None:
    """From 96 px: each output pixel is sampled from a crop of 25-100% of the image, resized to full size."""
    side = inputs.RESIZED_CROP_MIN
    y, x = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    coords = np.stack([y, x, np.zeros_like(y)], axis=-1).astype(np.uint8)  # each pixel names its place
    images = np.repeat(coords[None], 32, axis=0)
    out = inputs.augment(tf.constant(images), tf.constant([3, 5], tf.int64)).numpy().astype(int)
    assert out.shape == images.shape
    areas, flips = [], 0
    for image in out:
        rows, cols = image[:, :, 0], image[:, :, 1]
        assert (rows == rows[:, :1]).all() and (cols == cols[:1, :]).all()  # a resampled rectangle
        assert (np.diff(rows[:, 0]) >= 0).all()
        step = np.diff(cols[0])
        assert (step >= 0).all() or (step <= 0).all()  # left to right, or mirrored
        flips += int((step < 0).any())
        area = (np.ptp(rows) + 1) * (np.ptp(cols) + 1) / side**2
        assert 0.2 <= area <= 1.0
        areas.append(area)
    assert 0 < flips < len(out) and np.std(areas) > 0.05  # per-image randomness


def test_augment_is_reproducible_from_its_seed() -> None:
    images = tf.constant(np.random.default_rng(2).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    a = inputs.augment(images, tf.constant([1, 2], tf.int64)).numpy()
    b = inputs.augment(images, tf.constant([1, 2], tf.int64)).numpy()
    c = inputs.augment(images, tf.constant([1, 3], tf.int64)).numpy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_each_worker_gets_per_replica_batches_of_its_own_files(tiny_dataset: str) -> None:
    src = source.open_source(Store(), tiny_dataset)
    labels = []
    for worker in (0, 1):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2
        )
        ds = inputs.make_dataset(src, "train", batch_size=16, training=True, context=context)
        images, y = next(iter(ds))
        assert images.shape == (16, 32, 32, 3) and images.dtype == tf.uint8 and y.dtype == tf.int32
        labels.append(y.numpy())
    assert not np.array_equal(labels[0], labels[1])


def test_evaluation_dataset_covers_the_split(tiny_dataset: str) -> None:
    src = source.open_source(Store(), tiny_dataset)
    ds = inputs.make_dataset(src, "test", batch_size=100, training=False)
    sizes = [int(y.shape[0]) for _, y in ds]
    assert sizes == [100, 100, 56]


def test_a_corrupt_shard_surfaces_as_its_one_line_error(tiny_dataset: str, tmp_path: Path) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(tiny_dataset, copy)
    shard = next((copy / "train").glob("*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    shard.write_bytes(bytes(data))
    src = source.open_source(Store(), str(copy))
    ds = inputs.make_dataset(src, "train", batch_size=16, training=True)
    with pytest.raises(tf.errors.OpError) as caught:
        next(iter(ds))
    error = unmark(caught.value.message)
    assert isinstance(error, InputError)
    assert "does not match its manifest checksum" in error.problem


@pytest.mark.parametrize(
    ("side", "batch", "share", "expected"),
    [
        (32, 256, 195, 8),
        (32, 200, 2, 2),
        (64, 256, 195, 2),
        (96, 256, 78, 1),
        (224, 128, 31, 1),
        (224, 8, 9, 6),
    ],
)
def test_batches_per_call_are_bounded_by_bytes_and_the_share(
    side: int, batch: int, share: int, expected: int
) -> None:
    """Large images are handed over one batch a call (no unbatch copy, bounded memory); CIFAR's 8 at a time."""
    assert inputs.batches_per_call(batch * side * side * 3, share) == expected


def test_large_images_are_handed_over_a_batch_a_call(tmp_path: Path) -> None:
    from cifarflow.train import arrays

    images, labels = arrays.synthetic(320, size=96, seed=0)
    splits = {"train": (images, labels), "test": arrays.synthetic(16, size=96, seed=1)}
    url = arrays.write(Store(), str(tmp_path / "ds"), splits, class_names=[f"c{i}" for i in range(10)])
    src = source.open_source(Store(), url)
    # 4.4 MB a batch: one a call (two would fit the share), so nothing is unbatched.
    ds = inputs.make_dataset(src, "train", batch_size=160, training=True)
    known = {(int(y), x.tobytes()) for x, y in zip(images, labels, strict=True)}
    for x, y in ds.take(4):  # two passes over the share: the stream repeats
        assert x.shape == (160, 96, 96, 3) and x.dtype == tf.uint8 and y.shape == (160,)
        assert {(int(b), a.tobytes()) for a, b in zip(x.numpy(), y.numpy(), strict=True)} <= known


def test_a_share_smaller_than_eight_batches_still_trains(tiny_dataset: str) -> None:
    """Batches are handed over 8 at a time, but never more than a worker's share holds (512 images here)."""
    src = source.open_source(Store(), tiny_dataset)
    ds = inputs.make_dataset(src, "train", batch_size=200, training=True)
    batches = [int(y.shape[0]) for _, y in ds.take(5)]
    assert batches == [200] * 5
