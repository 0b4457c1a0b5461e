"""Pass 1's decisions over the small scan columns: exact duplicates, train/test leakage, the stratified val cut
(and, for a flat image folder, the test carve). Only counts, cut-offs and the rows of duplicate groups reach
the driver.

No step sorts or windows every row. Duplicates come from a hash aggregate (almost every key is unique, so
only the rows of the few repeated ones are collected, and the driver decides them by their content hash).
A class's cut-off, its k-th smallest (key, id), comes from a histogram of the keys' top bits (the keys are
uniform: they mix a content hash with the seed), then the rows of the one bucket that holds the k-th,
sorted on the driver.
"""

from __future__ import annotations

import math
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


def repeated_rows(scan: DataFrame, columns: list[str]) -> list[Any]:
    """The rows whose split key occurs more than once. The key is a function of the content hash, so equal
    hashes share it, and grouping by its 8 bytes costs half what the 16-byte hash does at 50x; :func:`decide`
    then groups the few rows by the hash itself. Without repeated keys (the usual case) nothing more is read."""
    from pyspark.sql import functions as F

    keys = scan.groupBy("key").count().filter(F.col("count") > 1).select("key").collect()
    if not keys:
        return []
    wanted = scan.sparkSession.createDataFrame([(row.key,) for row in keys], "key long")
    return scan.join(F.broadcast(wanted), "key", "left_semi").select(*columns).collect()


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


def histogram(pool: DataFrame, key: str, shift: int) -> Histogram:
    hist = Histogram(shift)
    for row in pool.groupBy("label", bucket(key, shift).alias("bucket")).count().collect():
        hist.add(row.label, row.bucket, row["count"])
    return hist


def smallest(pool: DataFrame, key: str, hist: Histogram, wanted: dict[int, int]) -> Cutoffs:
    """Per class ``c``, the ``wanted[c]``-th smallest (``key``, id) of ``pool`` (``hist``: its histogram): the
    rows of the one bucket that holds it are collected and sorted here."""
    from pyspark.sql import functions as F

    targets = hist.targets({c: k for c, k in wanted.items() if k > 0})
    if not targets:
        return Cutoffs({}, {})
    chosen = F.create_map(*[F.lit(x) for c in sorted(targets) for x in (c, targets[c][0])])
    in_bucket = F.element_at(chosen, F.col("label")) == bucket(key, hist.shift)
    rows = pool.filter(in_bucket).select("label", key, "id").collect()
    found: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for row in rows:
        found[row.label].append((row[key], row.id))
    cut = {c: sorted(found[c])[rank] for c, (_, rank) in targets.items()}
    return Cutoffs({c: k for c, (k, _) in cut.items()}, {c: i for c, (_, i) in cut.items()})


def below(cut: Cutoffs, key: str) -> Column:
    """Spark's form of :meth:`Cutoffs.val_mask`: the row's (``key``, id) is at or below its class's cut-off."""
    from pyspark.sql import functions as F

    kmap = F.create_map(*[F.lit(x) for c in sorted(cut.keys) for x in (c, cut.keys[c])])
    imap = F.create_map(*[F.lit(x) for c in sorted(cut.ids) for x in (c, cut.ids[c])])
    k, i = F.element_at(kmap, F.col("label")), F.element_at(imap, F.col("label"))
    return k.isNotNull() & ((F.col(key) < k) | ((F.col(key) == k) & (F.col("id") <= i)))


def plan_split(
    scan: DataFrame, val_fraction: float, rows: int, classes: int, carve_fraction: float | None = None
) -> SplitPlan:
    """Pass 1's decisions over ``scan`` (:data:`~.schema.SCAN_ARROW` rows, plus ``tkey`` for a carve; about
    ``rows`` of ``classes`` classes, which sets the histograms' resolution): the duplicates, then (a flat
    folder) the ``round(n * carve_fraction)`` kept train images per class with the smallest (tkey, id) as test,
    then the ``round(n * val_fraction)`` with the smallest (key, id) as val."""
    from pyspark.sql import functions as F

    # One query: the counts per split and class, and the train keys' histogram.
    shift = bucket_shift(rows // max(classes, 1), classes)
    train = F.col("src") == "train"
    by_split: dict[str, dict[int, int]] = {"train": {}, "test": {}}
    hist = Histogram(shift)
    counts = scan.groupBy("src", "label", F.when(train, bucket("key", shift)).alias("bucket")).count()
    for row in counts.collect():
        by_split[row.src][row.label] = by_split[row.src].get(row.label, 0) + row["count"]
        if row.src == "train":
            hist.add(row.label, row.bucket, row["count"])
    train_kept, test = by_split["train"], by_split["test"]

    repeated = repeated_rows(scan, ["id", "src", "label", "hash", "key"])
    reasons = decide(repeated)
    dups = dict.fromkeys(REASONS.values(), 0)
    dropped: dict[str, list[int]] = defaultdict(list)
    gone: list[tuple[str]] = []  # the dropped rows' ids, for the queries below
    for row in repeated:
        reason = reasons.get(row.id)
        if reason is not None:
            dups[REASONS[reason]] += 1
        if reason in ("dup", "leak"):
            train_kept[row.label] -= 1
            hist.add(row.label, row.key >> shift, -1)
            member, index = parse_id(row.id)
            dropped[member].append(index)
            gone.append((row.id,))
    train_kept = {c: n for c, n in train_kept.items() if n > 0}
    if not train_kept:
        raise InputError("no train images are left after removing duplicates", "check the archive")

    pool = scan.filter(train)
    if gone:
        pool = pool.join(F.broadcast(scan.sparkSession.createDataFrame(gone, "id string")), "id", "left_anti")
    carve = None
    if carve_fraction is not None:
        carved = {c: val_count(n, carve_fraction) for c, n in train_kept.items()}
        carve = smallest(pool, "tkey", histogram(pool, "tkey", shift), carved)
        for c, n in carved.items():
            train_kept[c] -= n
            test[c] = test.get(c, 0) + n
        if carve.keys:
            pool = pool.filter(~below(carve, "tkey"))
            hist = histogram(pool, "key", shift)
    val = {c: val_count(n, val_fraction) for c, n in train_kept.items()}
    dropped_ids = {m: np.array(sorted(v), dtype=np.int64) for m, v in dropped.items()}
    return SplitPlan(train_kept, test, dups, smallest(pool, "key", hist, val), dropped_ids, carve)
