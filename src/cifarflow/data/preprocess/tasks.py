"""What runs on the executors: read a range, hash it (pass 1), split and write it (pass 2).

Tasks take a :class:`TaskContext` (small, pickled into their closures) and range numbers (Arrow batches of
them, or an RDD's ints); they return small results only (scan rows, one :class:`~.schema.ShardRow` a shard),
never image bytes. Pass 1 over content indexes has its own tasks (:mod:`.indexes`).
"""

from __future__ import annotations

import functools
import gc
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from cifarflow.data import manifest as mf
from cifarflow.data.cifar import IMAGE_BYTES, LAYOUTS, Layout, chw_to_hwc, row_ids
from cifarflow.data.preprocess.keys import HASH_BYTES, Cutoffs, channel_moments, content_hashes, split_keys
from cifarflow.data.preprocess.ranges import InputRange, check_hashes, read_hashes, read_range
from cifarflow.data.preprocess.schema import SCAN_ARROW, ShardRow, numeric_column, shard_table
from cifarflow.errors import CifarflowError, marked
from cifarflow.storage import Store

# Images per Parquet shard at CIFAR's size (~30 MB); larger images get proportionally fewer (shard_rows).
SHARD_ROWS = 10_000
# Fault injection for tests only: every task sleeps this long before reading (interruption and concurrency
# tests need tasks that are still running). Read once on the driver, so production reads never look at it.
TEST_DELAY_ENV = "CIFARFLOW_TEST_TASK_DELAY_S"
# Flat image folders: the seed of the test carve is the split seed mixed with this (independent of val's keys).
CARVE_SALT = 0x7E57


def test_delay() -> float:
    """The test-only task delay (:data:`TEST_DELAY_ENV`), 0 when unset."""
    return float(os.environ.get(TEST_DELAY_ENV, "0") or 0)


@dataclass(frozen=True)
class TaskContext:
    """What every task needs; pickled into the task closures (small)."""

    ranges: tuple[Any, ...]  # InputRange (CIFAR) or ImageRange (image folders), by range number
    seed: int
    store: Store
    num_classes: int
    layout_name: str = ""  # CIFAR: the layout of the raw files
    image: Any = None  # image folders: an ImageSettings (decode size, strictness, layout)
    delay_s: float = 0.0  # test-only fault injection (TEST_DELAY_ENV)

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.layout_name]


@dataclass
class Rows:
    """A range's decoded images, uniformly for CIFAR and image folders."""

    ids: pa.StringArray  # "member:record" (cifar.row_ids), unique in the dataset
    positions: np.ndarray  # int64 record numbers within the member (what pass 1's dropped lists name)
    src: np.ndarray  # str: train | test (where the raw input put the image)
    labels: np.ndarray  # int32
    # (n, bytes) uint8: what each image's content hash covers, the pixels as the source holds them (CIFAR:
    # the CHW planes, so that pass 1 never reorders them; image folders: the decoded HWC pixels).
    content: np.ndarray
    # (content, positions) -> those rows' HWC images; None: the content is HWC already
    to_images: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @functools.cached_property
    def hashes(self) -> np.ndarray:
        """(n, 16) uint8 content hashes of :attr:`content`."""
        return content_hashes(self.content)

    def images_at(self, take: np.ndarray) -> np.ndarray:
        """(len(take), image bytes) uint8, HWC: what the shards hold, of the rows at ``take`` (CIFAR: gathered
        and interleaved in one pass)."""
        return self.content[take] if self.to_images is None else self.to_images(self.content, take)

    @property
    def image_bytes(self) -> int:
        """Bytes an image (CIFAR's size when there are no rows)."""
        return int(self.content.shape[1]) if len(self) else IMAGE_BYTES


def cifar_rows(ctx: TaskContext, part: InputRange) -> Rows:
    """A CIFAR range's images. With a content index, each image's label and hash are checked against it:
    that covers every byte the dataset takes from the file, so the file's sha256 (~1 s of CPU at 10x) is not
    computed as well; without one, the sha256 is."""
    batch = read_range(ctx.store, ctx.layout, part, sha256=part.hashes_url is None)
    n = len(batch)
    rows = Rows(
        ids=batch.ids(),
        positions=np.arange(part.first_index, part.first_index + n, dtype=np.int64),
        src=np.full(n, part.split),
        labels=batch.labels,
        content=batch.planes,
        to_images=chw_to_hwc,
    )
    if part.hashes_url is not None:
        check_hashes(ctx.store, part, rows.labels, rows.hashes)
    return rows


def pause(ctx: TaskContext) -> None:
    if ctx.delay_s > 0:
        time.sleep(ctx.delay_s)


def read_rows(ctx: TaskContext, part: Any) -> Rows:
    """The decoded images of one range (image folders: undecodable files left out)."""
    pause(ctx)
    if ctx.image is not None:
        from cifarflow.data.preprocess.folders import image_rows

        return image_rows(ctx, part)
    return cifar_rows(ctx, part)


@functools.cache  # once a process: gc.get_freeze_count() walks the frozen objects (~3 ms a call)
def freeze_worker_heap() -> None:
    """PySpark's daemon runs a full ``gc.collect()`` after every task of a reused worker: with numpy, pyarrow
    and pyspark loaded that walks ~100k objects, ~40-65 ms a task (7 CPU-s of 29 at 10x). What the first task
    leaves alive (modules, caches) is frozen once, so later collections walk only a task's own objects."""
    gc.collect()
    gc.freeze()


def over_ranges(body: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """A task from ``body(ctx, parts, **kwargs)``, which gets all the task's ranges at once (to aggregate over
    them). Its input is range numbers: Arrow batches of them (``mapInArrow``) or plain ints (an RDD's
    ``mapPartitions``). cifarflow errors are carried through Spark."""

    @functools.wraps(body)
    def task(numbers: Iterator[Any], ctx: TaskContext, **kwargs: Any) -> Iterator[Any]:
        parts = (ctx.ranges[index] for item in numbers for index in _numbers(item))
        try:
            yield from body(ctx, parts, **kwargs)
        except CifarflowError as exc:
            raise RuntimeError(marked(exc)) from None
        freeze_worker_heap()

    return task


def _numbers(item: pa.RecordBatch | int) -> list[int]:
    return item.column(0).to_pylist() if isinstance(item, pa.RecordBatch) else [item]


def guarded(body: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """A task (:func:`over_ranges`) that runs ``body(ctx, part, **kwargs)`` for each range in its input."""

    @functools.wraps(body)
    def each(ctx: TaskContext, parts: Iterator[Any], **kwargs: Any) -> Iterator[Any]:
        for part in parts:
            yield from body(ctx, part, **kwargs)

    return over_ranges(each)


def hash_column(hashes: np.ndarray) -> pa.Array:
    n = hashes.shape[0]
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(HASH_BYTES), n, [None, pa.py_buffer(hashes)]).cast(
        pa.binary()
    )


def scan_columns(
    ids: pa.StringArray, src: pa.StringArray, labels: Any, hashes: np.ndarray, seed: int
) -> list[pa.Array]:
    """Pass 1's columns (:data:`~.schema.SCAN_ARROW`, in order)."""
    return [
        ids,
        src,
        numeric_column(labels, np.int32),
        hash_column(hashes),
        numeric_column(split_keys(hashes, seed), np.int64),
    ]


def indexed(ctx: TaskContext, part: Any) -> bool:
    """Whether the range is a CIFAR member with a content index (pass 1 then reads no image)."""
    return ctx.image is None and part.hashes_url is not None


@guarded
def scan_task(ctx: TaskContext, part: Any) -> Iterator[pa.RecordBatch]:
    if indexed(ctx, part):
        pause(ctx)
        labels, hashes = read_hashes(ctx.store, part)
        ids = row_ids(part.member, np.arange(part.first_index, part.first_index + len(labels)))
        src = pa.repeat(pa.scalar(part.split), len(labels))
    else:
        rows = read_rows(ctx, part)
        ids, src, labels, hashes = rows.ids, pa.array(rows.src, pa.string()), rows.labels, rows.hashes
    yield pa.RecordBatch.from_arrays(scan_columns(ids, src, labels, hashes, ctx.seed), schema=SCAN_ARROW)


def shard_rows(image_bytes: int) -> int:
    """Images per shard: :data:`SHARD_ROWS` at CIFAR's size, the same ~30 MB for any other."""
    return max(1, SHARD_ROWS * IMAGE_BYTES // max(1, image_bytes))


def assign(
    ctx: TaskContext, rows: Rows, keep: np.ndarray, cuts: Cutoffs, carve: Cutoffs | None
) -> dict[str, Any]:
    """Which kept rows go to train, val and test: test as the input says (or, for a flat folder, the rows
    below the test carve's cut-offs), then val by the val cut-offs among the rest."""
    test = rows.src == "test"
    train = ~test
    val = np.zeros(len(rows), dtype=bool)
    if train.any():
        hashes = rows.hashes
        if carve is not None:
            carved = train & carve.val_mask(
                rows.labels, split_keys(hashes, ctx.seed ^ CARVE_SALT), rows.ids, ctx.num_classes
            )
            test, train = test | carved, train & ~carved
        val = train & cuts.val_mask(rows.labels, split_keys(hashes, ctx.seed), rows.ids, ctx.num_classes)
    return {"train": keep & train & ~val, "val": keep & val, "test": keep & test}


def _write_task(
    ctx: TaskContext, part: Any, *, dataset: str, dropped: Any, cutoffs: Cutoffs, carve: Cutoffs | None = None
) -> Iterator[ShardRow]:
    rows = read_rows(ctx, part)
    keep = np.ones(len(rows), dtype=bool)
    gone = dropped.value.get(part.member)
    if gone is not None:
        keep &= ~np.isin(rows.positions, gone)
    per_shard = shard_rows(rows.image_bytes)
    for name, mask in assign(ctx, rows, keep, cutoffs, carve).items():
        chosen = np.flatnonzero(mask)
        for chunk, start in enumerate(range(0, len(chosen), per_shard)):
            take = chosen[start : start + per_shard]
            images, labels = rows.images_at(take), rows.labels[take]
            relpath = f"{name}/part-{part.index:05d}-{chunk:03d}.parquet"
            table = shard_table(rows.ids.take(numeric_column(take, np.int64)), labels, images)
            entry = mf.write_shard(ctx.store, dataset, relpath, table)
            sums, squares = channel_moments(images) if name == "train" else ([0, 0, 0], [0, 0, 0])
            counts = np.bincount(labels, minlength=ctx.num_classes).tolist()
            yield ShardRow(name, relpath, entry.rows, entry.bytes, entry.sha256, counts, sums, squares)


write_task = guarded(_write_task)
