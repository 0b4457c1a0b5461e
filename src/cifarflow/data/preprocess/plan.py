"""Pass 1's decisions over the small scan columns: exact duplicates, train/test leakage, the stratified val cut
(and, for a flat image folder, the test carve). Only counts, cut-offs and the rows of duplicate groups reach
the driver.

No step sorts or windows every row. Duplicates come from grouping by the split key (almost every key is
unique, so only the rows of the few repeated ones are collected, and the driver decides them by their content
hash). A class's cut-off, its k-th smallest (key, id), comes from a histogram of the keys' top bits (the keys
are uniform: they mix a content hash with the seed), then the rows of the one bucket that holds the k-th,
sorted on the driver.

:func:`plan_split` asks its questions of a :class:`Scan`: :class:`FrameScan` answers them in Spark SQL over a
DataFrame of scan rows; :class:`~.indexes.IndexScan` in Python tasks over ingest's content indexes.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cifarflow.data.preprocess.keys import Cutoffs, parse_id, val_count
from cifarflow.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

# Rows a cut-off's bucket holds on average (what the driver sorts per class), and the most histogram rows
# collected for one cut (classes x buckets).
BUCKET_ROWS = 256
MAX_HISTOGRAM = 1 << 16
REASONS = {"dup": "train_duplicates", "leak": "train_in_test", "test_dup": "test_duplicates"}


@dataclass
class SplitPlan:
    """What pass 1 decided: expected counts, duplicates, cut-offs and the ids to drop."""

    train_kept: dict[int, int]  # per class, train images left after dropping duplicates and leaks (and carve)
    test: dict[int, int]
    duplicates: dict[str, int]
    cutoffs: Cutoffs
    dropped: dict[str, np.ndarray]  # member -> sorted record numbers
    carve: Cutoffs | None = None  # a flat image folder's test carve

    def expected(self, val_fraction: float, num_classes: int) -> dict[str, list[int]]:
        val = [val_count(self.train_kept.get(c, 0), val_fraction) for c in range(num_classes)]
        train = [self.train_kept.get(c, 0) - v for c, v in enumerate(val)]
        return {"train": train, "val": val, "test": [self.test.get(c, 0) for c in range(num_classes)]}


def decide(rows: list[Any]) -> dict[str, str]:
    """The rows of duplicate groups (``id``, ``src``, ``hash``) -> id: ``dup`` (train duplicate, dropped),
    ``leak`` (train image also in test, dropped) or ``test_dup`` (test duplicate, counted, kept). A train
    group not in test keeps its lowest id."""
    groups: dict[bytes, dict[str, list[str]]] = defaultdict(lambda: {"train": [], "test": []})
    for row in rows:
        groups[bytes(row.hash)][row.src].append(row.id)
    reasons: dict[str, str] = {}
    for group in groups.values():
        train, test = sorted(group["train"]), sorted(group["test"])
        for position, row_id in enumerate(train):
            if test:
                reasons[row_id] = "leak"
            elif position:
                reasons[row_id] = "dup"
        reasons.update((row_id, "test_dup") for row_id in test[1:])
    return reasons


def bucket_shift(rows: int, classes: int) -> int:
    """How far to shift a key right for its bucket: about :data:`BUCKET_ROWS` of a class's ``rows`` a bucket,
    at most :data:`MAX_HISTOGRAM` buckets over all classes, and at least 2 buckets (a shift by 64 is none)."""
    bits = math.ceil(math.log2(rows / BUCKET_ROWS)) if rows > BUCKET_ROWS else 1
    cap = max(1, int(math.log2(max(1, MAX_HISTOGRAM // max(classes, 1)))))
    return 64 - max(1, min(bits, cap, 63))


@dataclass
class Histogram:
    """Per class, how many rows fall in each bucket of a key's top bits (Spark's ``shiftright`` and Python's
    ``>>`` are both arithmetic, so buckets keep the keys' order)."""

    shift: int
    counts: dict[int, dict[int, int]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, label: int, bucket: int, n: int) -> None:
        self.counts[label][bucket] = self.counts[label].get(bucket, 0) + n

    def targets(self, wanted: dict[int, int]) -> dict[int, tuple[int, int]]:
        """Per class, the bucket holding its ``wanted``-th smallest key and that row's rank in it (from 0)."""
        found: dict[int, tuple[int, int]] = {}
        for label, k in wanted.items():
            before = 0
            for bucket in sorted(self.counts[label]):
                if before + self.counts[label][bucket] >= k:
                    found[label] = (bucket, k - before - 1)
                    break
                before += self.counts[label][bucket]
        return found


def bucket(key: str, shift: int) -> Column:
    """Spark's form of a key's bucket (``key >> shift`` in Python)."""
    from pyspark.sql import functions as F

    return F.shiftright(F.col(key), shift)


def smallest(scan: Scan, key: str, hist: Histogram, wanted: dict[int, int]) -> Cutoffs:
    """Per class ``c``, the ``wanted[c]``-th smallest (``key``, id) of the scan's train pool (``hist``: its
    histogram): the rows of the one bucket that holds it are collected and sorted here."""
    targets = hist.targets({c: k for c, k in wanted.items() if k > 0})
    if not targets:
        return Cutoffs({}, {})
    found: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for label, value, row_id in scan.bucket_rows(key, hist.shift, {c: b for c, (b, _) in targets.items()}):
        found[label].append((value, row_id))
    cut = {c: sorted(found[c])[rank] for c, (_, rank) in targets.items()}
    return Cutoffs({c: k for c, (k, _) in cut.items()}, {c: i for c, (_, i) in cut.items()})


def below(cut: Cutoffs, key: str) -> Column:
    """Spark's form of :meth:`Cutoffs.val_mask`: the row's (``key``, id) is at or below its class's cut-off."""
    from pyspark.sql import functions as F

    kmap = F.create_map(*[F.lit(x) for c in sorted(cut.keys) for x in (c, cut.keys[c])])
    imap = F.create_map(*[F.lit(x) for c in sorted(cut.ids) for x in (c, cut.ids[c])])
    k, i = F.element_at(kmap, F.col("label")), F.element_at(imap, F.col("label"))
    return k.isNotNull() & ((F.col(key) < k) | ((F.col(key) == k) & (F.col("id") <= i)))


class Scan(ABC):
    """What pass 1 asks of the scan rows (:data:`~.schema.SCAN_ARROW`); answers are small (counts, the rows
    of repeated keys, one key bucket's rows per class), whatever the number of images."""

    @abstractmethod
    def counts(self, shift: int) -> list[tuple[str, int, int | None, int]]:
        """(src, label, train key bucket or None for test, images), one tuple per group."""

    @abstractmethod
    def repeated(self) -> list[Any]:
        """The rows (``id``, ``src``, ``label``, ``hash``, ``key``) whose split key occurs more than once. The key
        is a function of the content hash, so equal hashes share it; :func:`decide` then groups the few rows
        by the hash itself."""

    @abstractmethod
    def without(self, gone: list[str]) -> Scan:
        """The same scan whose train pool leaves out the rows with these ids (duplicates dropped)."""

    @abstractmethod
    def bucket_rows(self, key: str, shift: int, targets: dict[int, int]) -> list[tuple[int, int, str]]:
        """(label, ``key``, id) of the train pool's rows whose ``key >> shift`` is their class's target."""


class FrameScan(Scan):
    """:class:`Scan` over a DataFrame of scan rows, in Spark SQL (decoded images, image folders; ``tkey`` too
    for a flat folder's carve)."""

    def __init__(self, frame: DataFrame) -> None:
        from pyspark.sql import functions as F

        self.frame, self.pool = frame, frame.filter(F.col("src") == "train")

    def counts(self, shift: int) -> list[tuple[str, int, int | None, int]]:
        from pyspark.sql import functions as F

        train = F.col("src") == "train"
        grouped = self.frame.groupBy(
            "src", "label", F.when(train, bucket("key", shift)).alias("bucket")
        ).count()
        return [(r.src, r.label, r.bucket, r["count"]) for r in grouped.collect()]

    def repeated(self) -> list[Any]:
        # Grouping by the 8-byte key costs half what the 16-byte hash does at 50x.
        from pyspark.sql import functions as F

        keys = self.frame.groupBy("key").count().filter(F.col("count") > 1).select("key").collect()
        if not keys:
            return []
        wanted = self.frame.sparkSession.createDataFrame([(row.key,) for row in keys], "key long")
        repeated = self.frame.join(F.broadcast(wanted), "key", "left_semi")
        return repeated.select("id", "src", "label", "hash", "key").collect()

    def _with_pool(self, pool: DataFrame) -> FrameScan:
        other = copy.copy(self)
        other.pool = pool
        return other

    def without(self, gone: list[str]) -> FrameScan:
        from pyspark.sql import functions as F

        if not gone:
            return self
        ids = self.frame.sparkSession.createDataFrame([(i,) for i in gone], "id string")
        return self._with_pool(self.pool.join(F.broadcast(ids), "id", "left_anti"))

    def carved(self, cut: Cutoffs) -> FrameScan:
        """The train pool without the rows at or below a flat folder's test carve."""
        return self._with_pool(self.pool.filter(~below(cut, "tkey")))

    def histogram(self, key: str, shift: int) -> Histogram:
        hist = Histogram(shift)
        for row in self.pool.groupBy("label", bucket(key, shift).alias("bucket")).count().collect():
            hist.add(row.label, row.bucket, row["count"])
        return hist

    def bucket_rows(self, key: str, shift: int, targets: dict[int, int]) -> list[tuple[int, int, str]]:
        from pyspark.sql import functions as F

        chosen = F.create_map(*[F.lit(x) for c in sorted(targets) for x in (c, targets[c])])
        in_bucket = F.element_at(chosen, F.col("label")) == bucket(key, shift)
        return [
            (r.label, r[key], r.id) for r in self.pool.filter(in_bucket).select("label", key, "id").collect()
        ]


def plan_split(
    scan: Scan | DataFrame,
    val_fraction: float,
    rows: int,
    classes: int,
    carve_fraction: float | None = None,
) -> SplitPlan:
    """Pass 1's decisions over ``scan`` (:data:`~.schema.SCAN_ARROW` rows, plus ``tkey`` for a carve; about
    ``rows`` of ``classes`` classes, which sets the histograms' resolution): the duplicates, then (a flat
    folder) the ``round(n * carve_fraction)`` kept train images per class with the smallest (tkey, id) as test,
    then the ``round(n * val_fraction)`` with the smallest (key, id) as val."""
    reads = scan if isinstance(scan, Scan) else FrameScan(scan)
    # The counts per split and class, and the train keys' histogram, from one query.
    shift = bucket_shift(rows // max(classes, 1), classes)
    by_split: dict[str, dict[int, int]] = {"train": {}, "test": {}}
    hist = Histogram(shift)
    for src, label, cell, n in reads.counts(shift):
        by_split[src][label] = by_split[src].get(label, 0) + n
        if cell is not None:  # train
            hist.add(label, cell, n)
    train_kept, test = by_split["train"], by_split["test"]

    repeated = reads.repeated()
    reasons = decide(repeated)
    dups = dict.fromkeys(REASONS.values(), 0)
    dropped: dict[str, list[int]] = defaultdict(list)
    gone: list[str] = []  # the dropped rows' ids, left out of the pool below
    for row in repeated:
        reason = reasons.get(row.id)
        if reason is not None:
            dups[REASONS[reason]] += 1
        if reason in ("dup", "leak"):
            train_kept[row.label] -= 1
            hist.add(row.label, row.key >> shift, -1)
            member, index = parse_id(row.id)
            dropped[member].append(index)
            gone.append(row.id)
    train_kept = {c: n for c, n in train_kept.items() if n > 0}
    if not train_kept:
        raise InputError("no train images are left after removing duplicates", "check the archive")

    reads = reads.without(gone)
    carve = None
    if carve_fraction is not None:
        assert isinstance(reads, FrameScan), "a carve needs its tkey column"
        carved = {c: val_count(n, carve_fraction) for c, n in train_kept.items()}
        carve = smallest(reads, "tkey", reads.histogram("tkey", shift), carved)
        for c, n in carved.items():
            train_kept[c] -= n
            test[c] = test.get(c, 0) + n
        if carve.keys:
            reads = reads.carved(carve)
            hist = reads.histogram("key", shift)
    val = {c: val_count(n, val_fraction) for c, n in train_kept.items()}
    dropped_ids = {m: np.array(sorted(v), dtype=np.int64) for m, v in dropped.items()}
    return SplitPlan(train_kept, test, dups, smallest(reads, "key", hist, val), dropped_ids, carve)
