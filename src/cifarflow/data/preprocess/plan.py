"""Pass 1's decisions in Spark SQL over the small scan columns: exact duplicates, train/test leakage, the
stratified val cut (and, for a flat image folder, the test carve). Only counts, cut-offs and the dropped ids
reach the driver."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cifarflow.data.preprocess.keys import Cutoffs, parse_id, val_count
from cifarflow.errors import InputError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame


@dataclass
class SplitPlan:
    """What pass 1 decided: expected counts, duplicates, cut-offs and the ids to drop."""

    train_kept: dict[int, int]  # per class, train images left after dropping duplicates and leaks
    test: dict[int, int]
    duplicates: dict[str, int]
    cutoffs: Cutoffs
    dropped: dict[str, np.ndarray]  # member -> sorted record numbers

    def expected(self, val_fraction: float, num_classes: int) -> dict[str, list[int]]:
        val = [val_count(self.train_kept.get(c, 0), val_fraction) for c in range(num_classes)]
        train = [self.train_kept.get(c, 0) - v for c, v in enumerate(val)]
        return {"train": train, "val": val, "test": [self.test.get(c, 0) for c in range(num_classes)]}


def annotate(scan: DataFrame) -> DataFrame:
    """Add ``reason``: ``dup`` (train duplicate, dropped), ``leak`` (train image also in test, dropped),
    ``test_dup`` (test duplicate, kept) or null. The first copy of a train duplicate (lowest id) is kept."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_hash = Window.partitionBy("hash")
    first = Window.partitionBy("hash", "src").orderBy("id")
    is_train, is_test = F.col("src") == "train", F.col("src") == "test"
    return (
        scan.withColumn("in_test", F.max(is_test.cast("int")).over(by_hash) == 1)
        .withColumn("rank", F.row_number().over(first))
        .withColumn(
            "reason",
            F.when(is_train & F.col("in_test"), F.lit("leak"))
            .when(is_train & (F.col("rank") > 1), F.lit("dup"))
            .when(is_test & (F.col("rank") > 1), F.lit("test_dup")),
        )
        .drop("in_test", "rank")
    )


def cutoffs(annotated: DataFrame, val: dict[int, int]) -> Cutoffs:
    """Per class, the (key, id) of the ``val[class]``-th kept train image in (key, id) order."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    wanted = {c: k for c, k in val.items() if k > 0}
    if not wanted:
        return Cutoffs({}, {})
    kmap = F.create_map(*[F.lit(x) for c, k in sorted(wanted.items()) for x in (c, k)])
    order = Window.partitionBy("label").orderBy("key", "id")
    rows = (
        annotated.filter((F.col("src") == "train") & F.col("reason").isNull())
        .withColumn("k", F.element_at(kmap, F.col("label")))
        .filter(F.col("k").isNotNull())
        .withColumn("r", F.row_number().over(order))
        .filter(F.col("r") == F.col("k"))
        .select("label", "key", "id")
        .collect()
    )
    return Cutoffs({r.label: r.key for r in rows}, {r.label: r.id for r in rows})


def plan_split(annotated: DataFrame, val_fraction: float, num_classes: int) -> SplitPlan:
    """Pass 1's decisions, computed in Spark; only counts, cut-offs and dropped ids are collected."""
    from pyspark.sql import functions as F

    train_kept: dict[int, int] = {}
    test: dict[int, int] = {}
    dups = {"train_duplicates": 0, "train_in_test": 0, "test_duplicates": 0}
    names = {"dup": "train_duplicates", "leak": "train_in_test", "test_dup": "test_duplicates"}
    for row in annotated.groupBy("src", "label", "reason").count().collect():
        if row.reason in names:
            dups[names[row.reason]] += row["count"]
        if row.src == "test":
            test[row.label] = test.get(row.label, 0) + row["count"]
        elif row.reason is None:
            train_kept[row.label] = row["count"]
    if not train_kept:
        raise InputError("no train images are left after removing duplicates", "check the archive")
    val = {c: val_count(n, val_fraction) for c, n in train_kept.items()}
    cut = cutoffs(annotated, val)
    dropped: dict[str, list[int]] = {}
    if dups["train_duplicates"] or dups["train_in_test"]:
        for row in annotated.filter(F.col("reason").isin("dup", "leak")).select("id").collect():
            member, index = parse_id(row.id)
            dropped.setdefault(member, []).append(index)
    return SplitPlan(
        train_kept, test, dups, cut, {m: np.array(sorted(v), dtype=np.int64) for m, v in dropped.items()}
    )


def carve_test(annotated: DataFrame, test_fraction: float, key: str = "tkey") -> tuple[DataFrame, Cutoffs]:
    """A flat folder's test split: per class, the ``round(n * test_fraction)`` kept train images with the
    smallest (``key``, id) become test, exactly as the val cut picks val. Duplicates are dropped before the
    carve, so it cannot create leakage. Returns the relabelled rows and the carve's cut-offs."""
    from pyspark.sql import functions as F

    kept = annotated.filter((F.col("src") == "train") & F.col("reason").isNull())
    counts = {r.label: r["count"] for r in kept.groupBy("label").count().collect()}
    cut = cutoffs(
        annotated.withColumnRenamed("key", "vkey").withColumnRenamed(key, "key"),
        {c: val_count(n, test_fraction) for c, n in counts.items()},
    )
    if not cut.keys:
        return annotated, cut
    kmap = F.create_map(*[F.lit(x) for c in sorted(cut.keys) for x in (c, cut.keys[c])])
    imap = F.create_map(*[F.lit(x) for c in sorted(cut.ids) for x in (c, cut.ids[c])])
    k, i = F.element_at(kmap, F.col("label")), F.element_at(imap, F.col("label"))
    below = k.isNotNull() & ((F.col(key) < k) | ((F.col(key) == k) & (F.col("id") <= i)))
    carved = (F.col("src") == "train") & F.col("reason").isNull() & below
    return annotated.withColumn("src", F.when(carved, F.lit("test")).otherwise(F.col("src"))), cut
