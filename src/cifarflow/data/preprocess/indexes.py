"""Pass 1 over ingest's content indexes: what :func:`~.plan.plan_split` asks of the scan, answered by Python
tasks that aggregate before anything leaves them.

Read as DataFrame rows, the indexes cost the JVM more than the tasks do (600k rows at 10x: ~5 CPU-s to
convert, hash and shuffle; a query over them ~1-2 s on a cold JVM, an RDD job ~0.1 s). So these are RDD jobs
whose tasks read their ranges' records (17 bytes an image) and return only what the decision needs:

- **counts and repeated keys**, from one job: per task, images per (class, key bucket) of train and per class
  of test in dense arrays (at most :data:`~.plan.MAX_HISTOGRAM` cells), and per range its keys packed into
  one bytes object per key group; the groups are shuffled (a few records, not one per image, the counts with
  group 0) and a reducer sums the counts, sorts its group's keys and keeps the repeated;
- **rows** of the repeated keys, and of the one key bucket per class that holds its val cut-off.

Every answer is the one :class:`~.plan.FrameScan` gives over the same rows (a test runs both).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from cifarflow.data.cifar import row_ids
from cifarflow.data.preprocess.keys import split_keys
from cifarflow.data.preprocess.plan import Scan
from cifarflow.data.preprocess.ranges import changed, read_hashes
from cifarflow.data.preprocess.tasks import TaskContext, guarded, over_ranges, pause

if TYPE_CHECKING:
    from pyspark import RDD, SparkContext


class ScanRow(NamedTuple):
    """One image's scan columns (:data:`~.schema.SCAN_ARROW`)."""

    id: str
    src: str
    label: int
    hash: bytes
    key: int


def records(ctx: TaskContext, part: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A range's (labels, (n, 16) hashes, split keys) from its content index."""
    pause(ctx)
    labels, hashes = read_hashes(ctx.store, part)
    if labels.size and int(labels.max()) >= ctx.num_classes:  # ingest wrote valid labels only: not its index
        raise changed(part.hashes_url)
    return labels, hashes, split_keys(hashes, ctx.seed)


def bucket_width(shift: int) -> int:
    """How many buckets a class's keys fall in: ``key >> shift`` lies in [-width/2, width/2)."""
    return 1 << (64 - shift)


def ids(part: Any, mask: np.ndarray) -> list[str]:
    return row_ids(part.member, part.first_index + np.flatnonzero(mask)).to_pylist()


Counts = tuple[np.ndarray, np.ndarray]  # train images per (class, key bucket), test images per class


class Summary(NamedTuple):
    """A reducer's answer: its group's repeated keys, and the counts when they came to its group."""

    repeated: list[int]
    counts: Counts | None


@over_ranges
def summary_task(
    ctx: TaskContext, parts: Iterator[Any], *, shift: int, groups: int
) -> Iterator[tuple[int, Any]]:
    """Each range's keys, packed per group (equal keys share a group); then, for group 0, the task's train
    images per (class, key bucket) and test images per class."""
    width = bucket_width(shift)
    train = np.zeros(ctx.num_classes * width, dtype=np.int64)
    test = np.zeros(ctx.num_classes, dtype=np.int64)
    for part in parts:
        labels, _, keys = records(ctx, part)
        if part.split == "test":
            test += np.bincount(labels, minlength=ctx.num_classes)
        else:
            slots = labels.astype(np.int64) * width + (keys >> shift) + width // 2
            train += np.bincount(slots, minlength=train.size)
        group = keys.view(np.uint64) % np.uint64(groups)
        for g in range(groups):
            yield g, keys[group == g].tobytes()
    yield 0, (train, test)


def add(one: Counts, two: Counts) -> Counts:
    return one[0] + two[0], one[1] + two[1]


def summarize(pairs: Iterable[tuple[int, Any]]) -> Iterator[Summary]:
    """A reducer: the keys that occur more than once among its partition's packed keys, and the sum of the
    counts that came with them."""
    blobs: list[bytes] = []
    counts: list[Counts] = []
    for _, item in pairs:
        if isinstance(item, bytes):
            blobs.append(item)
        else:
            counts.append(item)
    keys = np.sort(np.frombuffer(b"".join(blobs), dtype=np.int64))
    repeated = np.unique(keys[1:][keys[1:] == keys[:-1]]).tolist()
    yield Summary(repeated, functools.reduce(add, counts) if counts else None)


@guarded
def repeated_task(ctx: TaskContext, part: Any, *, keys: Any) -> Iterator[ScanRow]:
    """The scan rows of the range's images whose key is in ``keys``."""
    labels, hashes, all_keys = records(ctx, part)
    mask = np.isin(all_keys, keys.value)
    for row_id, label, digest, key in zip(
        ids(part, mask), labels[mask].tolist(), hashes[mask], all_keys[mask].tolist(), strict=True
    ):
        yield ScanRow(row_id, part.split, label, digest.tobytes(), key)


@guarded
def bucket_task(
    ctx: TaskContext, part: Any, *, shift: int, targets: dict[int, int]
) -> Iterator[tuple[int, int, str]]:
    """The train rows (label, key, id) in their class's target bucket."""
    if part.split == "test":
        return
    labels, _, keys = records(ctx, part)
    # A class without a target gets int64's minimum, which no key >> shift (shift >= 1) reaches.
    wanted = np.full(ctx.num_classes, np.iinfo(np.int64).min, dtype=np.int64)
    for label, bucket in targets.items():
        wanted[label] = bucket
    mask = (keys >> shift) == wanted[labels]
    yield from zip(labels[mask].tolist(), keys[mask].tolist(), ids(part, mask), strict=True)


class IndexScan(Scan):
    """:class:`~.plan.Scan` over CIFAR ranges that all have a content index: one task per core reads many
    ranges (an index read is small; a task's fixed cost is ~0.1 s). :meth:`counts` finds the repeated keys in
    the same job (:meth:`repeated` then reads their rows), as :func:`~.plan.plan_split` asks in that order."""

    def __init__(self, context: SparkContext, ctx: TaskContext) -> None:
        self.context, self.ctx = context, ctx
        self.cores = max(1, min(len(ctx.ranges), self.context.defaultParallelism))
        self.numbers = self.context.parallelize(range(len(ctx.ranges)), self.cores)
        self.gone: frozenset[str] = frozenset()
        self._repeated: list[int] | None = None  # found by counts(), with them

    def _map(self, task: Any, **kwargs: Any) -> RDD[Any]:
        return self.numbers.mapPartitions(functools.partial(task, ctx=self.ctx, **kwargs))

    def counts(self, shift: int) -> list[tuple[str, int, int | None, int]]:
        groups = self.cores
        packed = self._map(summary_task, shift=shift, groups=groups).partitionBy(groups, lambda group: group)
        summaries = packed.mapPartitions(summarize).collect()
        self._repeated = sorted(key for summary in summaries for key in summary.repeated)
        train, test = functools.reduce(add, [s.counts for s in summaries if s.counts is not None])
        width = bucket_width(shift)
        cells = np.flatnonzero(train)
        found: list[tuple[str, int, int | None, int]] = [
            ("train", c // width, c % width - width // 2, n)
            for c, n in zip(cells.tolist(), train[cells].tolist(), strict=True)
        ]
        return found + [("test", c, None, int(test[c])) for c in np.flatnonzero(test).tolist()]

    def repeated(self) -> list[Any]:
        if self._repeated is None:  # not an assert: under -O it would pass as "no duplicates"
            raise RuntimeError("IndexScan.counts() finds the repeated keys: call it first")
        if not self._repeated:
            return []
        wanted = self.context.broadcast(np.array(self._repeated, dtype=np.int64))
        try:
            return self._map(repeated_task, keys=wanted).collect()
        finally:
            wanted.destroy(blocking=True)

    def without(self, gone: list[str]) -> IndexScan:
        other = copy.copy(self)
        other.gone = frozenset(gone)
        return other

    def bucket_rows(self, key: str, shift: int, targets: dict[int, int]) -> list[tuple[int, int, str]]:
        assert key == "key", "content indexes hold the split key only"
        rows = self._map(bucket_task, shift=shift, targets=targets).collect()
        return [row for row in rows if row[2] not in self.gone]
