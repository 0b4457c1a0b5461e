"""The Spark job: raw CIFAR files -> a validated, deduplicated, split and normalised Parquet dataset.

Stages (docs/architecture.md draws them):

1. **Plan** (driver): read the raw index that ingest committed and cut the input into splits: one per
   python batch file (a pickle cannot be read from the middle), record-aligned byte ranges of binary files.
   The splits become a DataFrame of split numbers, one per partition.
2. **Scan** (tasks): read the split through :class:`~cifarflow.storage.Store`, decode it with the vectorised
   decoders of :mod:`cifarflow.data.cifar`, and return small columns only (id, source split, label, content
   hash, split key); no image bytes leave the tasks.
3. **Plan the split** (Spark SQL over the small columns): exact duplicates (train duplicates dropped except
   the lowest id, train images also in test dropped as leakage, test duplicates counted and kept), then per
   class the ``round(n * val_fraction)`` train images with the smallest (key, id) go to val. Only per-class
   cut-offs, the counts and the (duplicate-only) dropped ids reach the driver.
4. **Write** (tasks): re-read the split, drop, assign train/val by the cut-offs, write Parquet shards to
   names derived from the split number (a retried or speculative attempt writes the same bytes to the same
   name), and return one small row per shard: checksum, per-class counts, exact per-channel pixel sums.
5. **Commit** (driver): combine the sums into mean/std, remove stray files, write ``stats.json`` and then
   ``_manifest.json``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import logging
import math
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from cifarflow.data import manifest as mf
from cifarflow.data import spark as sparkmod
from cifarflow.data.cifar import (
    IMAGE_BYTES,
    LAYOUTS,
    Batch,
    Layout,
    decode_binary,
    decode_python,
    label_names,
)
from cifarflow.errors import (
    CifarflowError,
    ConflictError,
    InputError,
    JobError,
    StorageError,
    marked,
    unmark,
)
from cifarflow.storage import Store, join, normalize, redact

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# Bump when a change to this job changes what it writes for the same input: it is part of the dataset id.
RECIPE = "cifarflow.preprocess/v1"
# Binary files are cut into ranges of about this size when --partitions is not given. It depends on the data
# only, not on the cluster: the same input gives the same shards (and manifest) on a laptop and a cluster.
SPLIT_BYTES = 16 * 2**20
# Images per Parquet shard (~30 MB); a task writes several when its split is larger.
SHARD_ROWS = 10_000
TEST_DELAY_ENV = "CIFARFLOW_TASK_DELAY_S"

HASH_BYTES = 16  # blake2b-128 of the 3072 HWC bytes: the content address used for exact-duplicate detection
_INT64_MIN = np.iinfo(np.int64).min

# -- results -------------------------------------------------------------------------------------------------


@dataclass
class PreprocessResult:
    dataset_id: str
    dataset_url: str
    manifest_url: str
    reused: bool
    counts: dict[str, int]  # rows per split
    duplicates: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


# -- planning ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawMember:
    """One data file of the raw folder, as the planner needs it."""

    name: str  # short member name used in row ids, e.g. data_batch_1
    url: str
    split: str  # train | test
    bytes: int
    sha256: str | None = None


@dataclass(frozen=True)
class InputSplit:
    """One task's work: a whole python batch file, or a record-aligned byte range of a binary file."""

    index: int
    member: str
    url: str
    split: str
    offset: int
    length: int
    first_index: int  # record number of the first image (row ids count from it)
    sha256: str | None = None  # whole-file checksum, checked when the split is the whole file


def plan_splits(members: list[RawMember], layout: Layout, partitions: int | None = None) -> list[InputSplit]:
    """Cut the data files into input splits (module docstring); ``partitions`` asks for about that many."""
    if layout.kind == "python":
        if partitions:
            log.debug("--partitions is ignored for python batches: a pickle is read by one task")
        return [InputSplit(i, m.name, m.url, m.split, 0, m.bytes, 0, m.sha256) for i, m in enumerate(members)]
    size = layout.record_bytes
    total = sum(m.bytes for m in members)
    out: list[InputSplit] = []
    for m in members:
        if m.bytes % size:
            raise InputError(
                f"{m.name}: {m.bytes} bytes is not a whole number of {size}-byte records "
                "(truncated or wrong variant)",
                "fetch the archive again and re-run `cifarflow ingest`",
            )
        records = m.bytes // size
        if records == 0:
            raise InputError(f"{m.name}: holds no images", "the archive is empty or truncated")
        wanted = round(partitions * m.bytes / total) if partitions else math.ceil(m.bytes / SPLIT_BYTES)
        pieces = min(max(1, wanted), records)
        bounds = [records * i // pieces for i in range(pieces + 1)]
        checksum = m.sha256 if pieces == 1 else None
        for a, b in itertools.pairwise(bounds):
            out.append(InputSplit(len(out), m.name, m.url, m.split, a * size, (b - a) * size, a, checksum))
    return out


def val_count(n: int, val_fraction: float) -> int:
    """How many of a class's ``n`` train images go to val: ``n * val_fraction`` rounded half up."""
    return math.floor(n * val_fraction + 0.5)


# -- per-image keys (vectorised) -----------------------------------------------------------------------------


def content_hashes(images: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 blake2b-128 digests of each image's 3072 bytes."""
    digests = b"".join(hashlib.blake2b(row, digest_size=HASH_BYTES).digest() for row in images)
    return np.frombuffer(digests, dtype=np.uint8).reshape(-1, HASH_BYTES)


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: a bijection of uint64 that spreads every input bit over the output.
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def split_keys(hashes: np.ndarray, seed: int) -> np.ndarray:
    """int64 sort keys from content hashes and the seed: a seeded, uniform, content-addressed order."""
    words = np.ascontiguousarray(hashes).view("<u8").reshape(-1, 2)
    salt = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) ^ np.uint64(0x9E3779B97F4A7C15))
    return _mix(words[:, 0] ^ _mix(words[:, 1] ^ salt)).view(np.int64)


def channel_moments(images: np.ndarray, rows: int = 2048) -> tuple[list[int], list[int]]:
    """Exact per-channel (R, G, B) pixel sums and sums of squares, from 256-bin histograms."""
    hist = np.zeros((3, 256), dtype=np.int64)
    for start in range(0, len(images), rows):
        pixels = images[start : start + rows].reshape(-1, 3)
        for channel in range(3):
            hist[channel] += np.bincount(pixels[:, channel], minlength=256)
    values = np.arange(256, dtype=np.int64)
    return (hist @ values).tolist(), (hist @ (values * values)).tolist()


def parse_id(row_id: str) -> tuple[str, int]:
    member, _, index = row_id.rpartition(":")
    return member, int(index)


# -- Spark schemas (Arrow types must match them exactly) -----------------------------------------------------

SCAN_ARROW = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("src", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("hash", pa.binary(), nullable=False),
        pa.field("key", pa.int64(), nullable=False),
    ]
)


def _longs() -> pa.DataType:
    return pa.list_(pa.field("element", pa.int64(), nullable=False))


SHARD_ARROW = pa.schema(
    [
        pa.field("split", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("counts", _longs(), nullable=False),
        pa.field("sums", _longs(), nullable=False),
        pa.field("squares", _longs(), nullable=False),
    ]
)


def spark_schema(schema: pa.Schema) -> Any:
    """The Spark StructType that ``schema`` maps to (one definition for both sides)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


# -- tasks (run on executors) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskContext:
    """What every task needs; pickled into the task closures (small)."""

    layout_name: str
    splits: tuple[InputSplit, ...]
    seed: int
    store: Store
    num_classes: int

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.layout_name]


def read_split(ctx: TaskContext, split: InputSplit) -> Batch:
    """Read and decode one input split (whole pickle, or a byte range of binary records)."""
    delay = float(os.environ.get(TEST_DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)
    try:
        if ctx.layout.kind == "python":
            data = ctx.store.read_bytes(split.url)
        else:
            with ctx.store.open(split.url, "rb", cache_type="none") as handle:
                handle.seek(split.offset)
                data = handle.read(split.length)
    except FileNotFoundError as exc:
        raise InputError(
            f"raw file {redact(split.url)} is missing",
            "re-run the same `cifarflow ingest --source ... --dest ...`: it lands missing files again",
        ) from exc
    if len(data) != split.length or (split.sha256 and hashlib.sha256(data).hexdigest() != split.sha256):
        raise InputError(
            f"raw file {redact(split.url)} does not match what ingest recorded (changed or truncated)",
            "re-run `cifarflow ingest` into a fresh folder",
        )
    if ctx.layout.kind == "python":
        return decode_python(data, ctx.layout, split.member)
    return decode_binary(data, ctx.layout, split.member, split.first_index)


def _guarded(body: Callable[..., Iterator[pa.RecordBatch]]) -> Callable[..., Iterator[pa.RecordBatch]]:
    """Run ``body`` for each split number in the task's input; carry cifarflow errors through Spark."""

    @functools.wraps(body)
    def task(batches: Iterator[pa.RecordBatch], ctx: TaskContext, **kwargs: Any) -> Iterator[pa.RecordBatch]:
        try:
            for batch in batches:
                for index in batch.column(0).to_pylist():
                    yield from body(ctx, ctx.splits[index], **kwargs)
        except CifarflowError as exc:
            raise RuntimeError(marked(exc)) from None

    return task


@_guarded
def scan_task(ctx: TaskContext, split: InputSplit) -> Iterator[pa.RecordBatch]:
    batch = read_split(ctx, split)
    hashes = content_hashes(batch.images)
    n = len(batch)
    yield pa.RecordBatch.from_arrays(
        [
            pa.array(batch.ids(), pa.string()),
            pa.array([split.split] * n, pa.string()),
            pa.array(batch.labels, pa.int32()),
            pa.FixedSizeBinaryArray.from_buffers(pa.binary(HASH_BYTES), n, [None, pa.py_buffer(hashes)]).cast(
                pa.binary()
            ),
            pa.array(split_keys(hashes, ctx.seed), pa.int64()),
        ],
        schema=SCAN_ARROW,
    )


@dataclass(frozen=True)
class Cutoffs:
    """Per class, the largest (key, id) that goes to val; classes without val images are absent."""

    keys: dict[int, int]
    ids: dict[int, str]

    def val_mask(self, labels: np.ndarray, keys: np.ndarray, ids: np.ndarray, num_classes: int) -> np.ndarray:
        has = np.zeros(num_classes, dtype=bool)
        tkey = np.full(num_classes, _INT64_MIN, dtype=np.int64)
        tid = np.full(num_classes, "", dtype=object)
        for label, key in self.keys.items():
            has[label], tkey[label], tid[label] = True, key, self.ids[label]
        lk, lid = tkey[labels], tid[labels].astype(ids.dtype)
        return has[labels] & ((keys < lk) | ((keys == lk) & (ids <= lid)))


def image_column(images: np.ndarray) -> pa.Array:
    """A binary Arrow column over the (n, 3072) image rows without copying them."""
    n = images.shape[0]
    offsets = np.arange(0, (n + 1) * IMAGE_BYTES, IMAGE_BYTES, dtype=np.int32)
    return pa.BinaryArray.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(images))]
    )


def shard_table(ids: np.ndarray, labels: np.ndarray, images: np.ndarray) -> pa.Table:
    return pa.Table.from_arrays(
        [pa.array(ids.tolist(), pa.string()), pa.array(labels, pa.int32()), image_column(images)],
        schema=mf.SCHEMA,
    )


def _write_task(
    ctx: TaskContext, split: InputSplit, dataset: str, dropped: Any, cutoffs: Cutoffs
) -> Iterator[pa.RecordBatch]:
    batch = read_split(ctx, split)
    n = len(batch)
    ids = np.array(batch.ids())
    keep = np.ones(n, dtype=bool)
    gone = dropped.value.get(split.member)
    if gone is not None:
        keep &= ~np.isin(np.arange(split.first_index, split.first_index + n), gone)
    if split.split == "test":
        parts = {"test": keep}
    else:
        val = keep & cutoffs.val_mask(
            batch.labels, split_keys(content_hashes(batch.images), ctx.seed), ids, ctx.num_classes
        )
        parts = {"train": keep & ~val, "val": val}
    for name, mask in parts.items():
        rows = np.flatnonzero(mask)
        for chunk, start in enumerate(range(0, len(rows), SHARD_ROWS)):
            take = rows[start : start + SHARD_ROWS]
            images, labels = batch.images[take], batch.labels[take]
            relpath = f"{name}/part-{split.index:05d}-{chunk:03d}.parquet"
            entry = mf.write_shard(ctx.store, dataset, relpath, shard_table(ids[take], labels, images))
            sums, squares = channel_moments(images) if name == "train" else ([0, 0, 0], [0, 0, 0])
            counts = np.bincount(labels, minlength=ctx.num_classes).tolist()
            yield pa.RecordBatch.from_pylist(
                [
                    {
                        "split": name,
                        "path": relpath,
                        "rows": entry.rows,
                        "bytes": entry.bytes,
                        "sha256": entry.sha256,
                        "counts": counts,
                        "sums": sums,
                        "squares": squares,
                    }
                ],
                schema=SHARD_ARROW,
            )


write_task = _guarded(_write_task)


# -- the driver ----------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Source:
    """The raw input as the driver sees it."""

    raw_url: str
    layout: Layout
    checksum: str
    description: dict[str, Any]
    members: list[RawMember]
    meta_url: str


def read_source(store: Store, raw_url: str) -> Source:
    """Read ingest's commit marker and turn it into the planner's view."""
    from cifarflow.data.ingest import load_raw

    raw_url = normalize(raw_url).rstrip("/")
    if store.exists(join(raw_url, mf.MANIFEST)) or raw_url.endswith("/" + mf.MANIFEST):
        raise InputError(
            f"--raw {redact(raw_url)} is a dataset that `cifarflow preprocess` wrote, not ingest's raw folder",
            "pass --raw DEST/raw (the folder `cifarflow ingest --dest DEST` wrote); "
            "train on this dataset with `cifarflow train --data` instead",
        )
    index = load_raw(store, raw_url)
    layout = LAYOUTS[index.layout]
    members = [
        RawMember(m.path, index.url(raw_url, m), m.split, m.bytes, m.sha256)
        for m in index.members
        if m.split in ("train", "test")
    ]
    meta = [m for m in index.members if m.path == layout.meta]
    for split in ("train", "test"):
        if not any(m.split == split for m in members):
            raise InputError(
                f"{redact(raw_url)} holds no {split} files",
                "the archive is empty or not a whole CIFAR archive",
            )
    if not meta:
        raise InputError(f"{redact(raw_url)} has no {layout.meta}", "re-run `cifarflow ingest`")
    description = {
        "raw": redact(raw_url),
        "layout": layout.name,
        "archive": index.archive.source,
        "archive_md5": index.archive.md5,
        "archive_sha256": index.archive.sha256,
        "archive_bytes": index.archive.bytes,
    }
    # Train files first, then test, each in the index's (archive) order: this fixes the shard numbers.
    members.sort(key=lambda m: 0 if m.split == "train" else 1)
    meta_url = index.url(raw_url, meta[0])
    return Source(raw_url, layout, index.archive.sha256, description, members, meta_url)


def parameters(source: Source, val_fraction: float, seed: int) -> dict[str, Any]:
    """What the dataset id depends on besides the raw checksum (not --partitions: it changes no row)."""
    return {"recipe": RECIPE, "layout": source.layout.name, "val_fraction": val_fraction, "seed": seed}


def check_destination(store: Store, out: str, dataset_url: str, ds_id: str, params: dict[str, Any]) -> bool:
    """True when the dataset is committed already (a no-op); ConflictError if ``out`` holds something else."""
    if store.exists(join(out, mf.MANIFEST)):
        raise ConflictError(
            f"{redact(out)} is itself a dataset folder (it holds {mf.MANIFEST}), not a datasets root",
            "pass its parent (or a new folder) as --out; datasets land in OUT/<dataset-id>/",
        )
    if not store.exists(join(dataset_url, mf.MANIFEST)):
        return False
    remove = f"remove {redact(dataset_url)} or pick another --out"
    try:
        existing, base = mf.load(store, dataset_url)
    except InputError as exc:
        raise ConflictError(f"{redact(dataset_url)} holds a damaged dataset: {exc.problem}", remove) from None
    if existing.dataset_id != ds_id or existing.parameters != params:
        raise ConflictError(
            f"{redact(dataset_url)} holds a different dataset ({existing.dataset_id}, parameters "
            f"{existing.parameters})",
            remove,
        )
    try:
        mf.verify(store, existing, base)
    except InputError as exc:
        raise ConflictError(f"{redact(dataset_url)} holds a damaged dataset: {exc.problem}", remove) from None
    return True


@dataclass(frozen=True)
class Job:
    """One preprocess run, as decided on the driver before Spark starts."""

    store: Store
    source: Source
    splits: list[InputSplit]
    dataset_id: str
    dataset_url: str
    out_url: str  # the datasets root
    staging_url: str  # this attempt's own folder: its tasks write here, and only it is removed on failure
    parameters: dict[str, Any]
    class_names: list[str]
    val_fraction: float
    seed: int

    @property
    def num_classes(self) -> int:
        return self.source.layout.num_classes


def preprocess(
    raw: str,
    out: str,
    *,
    master: str | None = None,
    partitions: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    store: Store,
) -> PreprocessResult:
    """Turn ingest's raw folder into a committed dataset under ``OUT/<dataset-id>/`` (module docstring)."""
    started = time.monotonic()
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"val fraction {val_fraction} is outside [0, 1)", "pass a --val-fraction below 1")
    if partitions is not None and partitions < 1:
        raise InputError(f"--partitions {partitions} must be at least 1", "leave it out or pass 1 or more")
    sparkmod.check_master(master)
    out = normalize(out).rstrip("/")
    source = read_source(store, raw)
    params = parameters(source, val_fraction, seed)
    ds_id = mf.dataset_id(source.checksum, params)
    dataset_url = join(out, ds_id)
    store.check_reachable(out)
    if check_destination(store, out, dataset_url, ds_id, params):
        existing, base = mf.load(store, dataset_url)
        stats = mf.load_stats(store, existing, base)
        log.info("dataset %s is already committed at %s: nothing to do", ds_id, redact(dataset_url))
        counts = {name: s.rows for name, s in existing.splits.items()}
        manifest_url = join(dataset_url, mf.MANIFEST)
        return PreprocessResult(
            ds_id, dataset_url, manifest_url, True, counts, dict(stats.duplicates), time.monotonic() - started
        )
    # Concurrent runs of the same input share OUT/<id>/; each writes under its own attempt folder until commit.
    staging = join(out, f"_attempt-{ds_id}-{uuid.uuid4().hex[:12]}")
    job = Job(
        store=store,
        source=source,
        splits=plan_splits(source.members, source.layout, partitions),
        dataset_id=ds_id,
        dataset_url=dataset_url,
        out_url=out,
        staging_url=staging,
        parameters=params,
        class_names=label_names(store.read_bytes(source.meta_url), source.layout),
        val_fraction=val_fraction,
        seed=seed,
    )
    log.info(
        "preprocessing %s (%s, %d files, %.1f MB) into %s: %d input splits",
        redact(source.raw_url),
        source.layout.name,
        len(source.members),
        sum(m.bytes for m in source.members) / 1e6,
        redact(dataset_url),
        len(job.splits),
    )
    try:
        check_writable(store, out, staging)
        with sparkmod.session(master, app_name=f"cifarflow-preprocess-{ds_id}") as spark:
            manifest, stats = run_job(spark, job)
        manifest_url = commit(job, manifest, stats)
    except Exception as exc:
        if not isinstance(exc, CifarflowError):
            raise _user_error(exc) from None
        raise
    finally:
        _remove_attempt(store, staging)
    counts = {name: s.rows for name, s in manifest.splits.items()}
    seconds = time.monotonic() - started
    log.info(
        "committed %s: train %d, val %d, test %d images; duplicates %s (%.1f s)",
        ds_id,
        counts["train"],
        counts["val"],
        counts["test"],
        stats.duplicates,
        seconds,
    )
    return PreprocessResult(ds_id, dataset_url, manifest_url, False, counts, dict(stats.duplicates), seconds)


def run_job(spark: SparkSession, job: Job) -> tuple[mf.Manifest, mf.Stats]:
    """Passes 1 and 2 on ``spark``; returns the manifest and stats to commit (nothing is committed here)."""
    from pyspark import StorageLevel

    from cifarflow.data.spark import StageProgress

    ctx = TaskContext(job.source.layout.name, tuple(job.splits), job.seed, job.store, job.num_classes)
    inputs = spark.range(0, len(job.splits), 1, len(job.splits))  # one split number per partition

    # Pass 1: small columns only; cached because three queries read them.
    clock = time.monotonic()
    scan = inputs.mapInArrow(functools.partial(scan_task, ctx=ctx), spark_schema(SCAN_ARROW))
    annotated = annotate(scan).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        with StageProgress(spark, "pass 1/2: decode, hash, deduplicate"):
            plan = plan_split(annotated, job.val_fraction, job.num_classes)
    finally:
        # Blocking: a release still in flight when the session stops makes Spark print a stack trace.
        annotated.unpersist(blocking=True)
    log.info(
        "pass 1: %d train images kept, %d test; duplicates %s; val cut-offs for %d classes (%.1f s)",
        sum(plan.train_kept.values()),
        sum(plan.test.values()),
        plan.duplicates,
        len(plan.cutoffs.keys),
        time.monotonic() - clock,
    )

    # Pass 2: tasks write their shards and return one small row each.
    clock = time.monotonic()
    dropped = spark.sparkContext.broadcast(plan.dropped)
    try:
        task = functools.partial(
            write_task, ctx=ctx, dataset=job.staging_url, dropped=dropped, cutoffs=plan.cutoffs
        )
        with StageProgress(spark, "pass 2/2: split and write shards"):
            rows = inputs.mapInArrow(task, spark_schema(SHARD_ARROW)).collect()
    finally:
        dropped.destroy(blocking=True)
    log.info("pass 2: %d shards written (%.1f s)", len(rows), time.monotonic() - clock)
    return assemble(job, rows, plan)


def assemble(job: Job, rows: list[Any], plan: SplitPlan) -> tuple[mf.Manifest, mf.Stats]:
    """Combine the shard rows into the manifest and stats (sums of small partials: no images here)."""
    files: dict[str, list[mf.FileEntry]] = {s: [] for s in mf.SPLITS}
    counts = {s: [0] * job.num_classes for s in mf.SPLITS}
    sums, squares = [0, 0, 0], [0, 0, 0]
    for row in rows:
        entry = mf.FileEntry(path=row.path, rows=row.rows, bytes=row.bytes, sha256=row.sha256)
        files[row.split].append(entry)
        counts[row.split] = [a + b for a, b in zip(counts[row.split], row.counts, strict=True)]
        sums = [a + b for a, b in zip(sums, row.sums, strict=True)]
        squares = [a + b for a, b in zip(squares, row.squares, strict=True)]
    if counts != plan.expected(job.val_fraction, job.num_classes):
        raise JobError(
            "pass 2 wrote other per-class counts than pass 1 planned (did the raw files change mid-job?)",
            "re-run `cifarflow preprocess`; if it persists, re-run `cifarflow ingest` into a fresh folder",
        )
    mean, std = mean_std(sums, squares, sum(counts["train"]) * (IMAGE_BYTES // 3))
    splits = {
        s: mf.SplitInfo(rows=sum(counts[s]), files=sorted(files[s], key=lambda f: f.path)) for s in mf.SPLITS
    }
    manifest = mf.Manifest(
        dataset_id=job.dataset_id,
        num_classes=job.num_classes,
        class_names=job.class_names,
        splits=splits,
        stats=mf.FileEntry(path=mf.STATS, bytes=0, sha256=""),  # filled in by commit
        source=job.source.description,
        parameters=job.parameters,
    )
    return manifest, mf.Stats(mean=mean, std=std, counts=counts, duplicates=plan.duplicates)


def mean_std(sums: list[int], squares: list[int], pixels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std on the [0, 1] scale from exact integer sums over ``pixels``."""
    if pixels == 0:
        return [0.0] * 3, [0.0] * 3
    mean = [s / pixels / 255.0 for s in sums]
    # Integer arithmetic up to the last division: no cancellation however many pixels.
    std = [
        math.sqrt((q * pixels - s * s) / (pixels * pixels)) / 255.0
        for s, q in zip(sums, squares, strict=True)
    ]
    return mean, std


def _remove_strays(store: Store, dataset_url: str, files: dict[str, list[mf.FileEntry]]) -> None:
    """Delete what the manifest will not list: temp files of killed writers, shards of older crashed runs."""
    for split, entries in files.items():
        keep = {posixpath.basename(e.path) for e in entries}
        for url in store.list(join(dataset_url, split)):
            if posixpath.basename(url.rstrip("/")) not in keep:
                log.info("removing stray file %s", redact(url))
                store.remove(url, recursive=True)


def _remove_attempt(store: Store, staging: str) -> None:
    """Remove this attempt's own folder, and nothing else: another run of the same input may be filling
    OUT/<id>/ (or its own attempt folder) right now."""
    with contextlib.suppress(Exception):
        store.remove(staging, recursive=True)


def check_writable(store: Store, out: str, staging: str) -> None:
    """Write and delete a probe in this attempt's folder: an unwritable --out fails here, before Spark starts."""
    probe = join(staging, "_probe")
    try:
        store.write_bytes(probe, b"")
        store.remove(probe)
    except (StorageError, OSError) as exc:
        problem = exc.problem if isinstance(exc, StorageError) else f"{type(exc).__name__}: {exc}"
        fix = (
            exc.fix
            if isinstance(exc, StorageError) and "://" in out and not out.startswith("file:")
            else None
        )
        raise StorageError(
            f"cannot write to --out {redact(out)} ({problem})",
            fix or "pass an --out folder you can write to (check its permissions and free space)",
        ) from None


def commit(job: Job, manifest: mf.Manifest, stats: mf.Stats) -> str:
    """Move this attempt's shards into OUT/<id>/, check every listed shard's checksum there, then write the
    manifest (the commit). Returns the manifest URL."""
    store, dataset = job.store, job.dataset_url
    if check_destination(store, job.out_url, dataset, job.dataset_id, job.parameters):
        log.info("another run committed %s meanwhile: keeping its files", job.dataset_id)
        return join(dataset, mf.MANIFEST)
    files = {name: split.files for name, split in manifest.splits.items()}
    for entry in itertools.chain.from_iterable(files.values()):
        mf.move(store, join(job.staging_url, entry.path), join(dataset, entry.path))
    _remove_strays(store, dataset, files)
    try:
        mf.verify(store, manifest, dataset)
    except InputError as exc:
        raise JobError(
            f"{exc.problem}, just before the commit: did another run or tool change {redact(dataset)}?",
            "re-run `cifarflow preprocess` (nothing was committed)",
        ) from None
    return mf.commit(store, dataset, manifest, stats)


def _user_error(exc: Exception) -> CifarflowError:
    """The one-line error for an exception out of Spark: a task's own cifarflow error if it carried one."""
    text = str(exc)
    found = unmark(text)
    if found is not None:
        return found
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = next((x for x in lines if "Exception:" in x or "Error:" in x), lines[0] if lines else "")
    return JobError(
        f"the Spark job failed: {detail[:300]}",
        "re-run with -v for Spark's log (on a cluster, also see the executors' logs)",
    )
