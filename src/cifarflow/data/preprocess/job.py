"""The Spark job: raw CIFAR files -> a validated, deduplicated, split and normalised Parquet dataset.

Stages (docs/architecture.md draws them):

1. **Plan** (driver): read the raw index that ingest committed and cut the input into input ranges: one per
   python batch file (a pickle cannot be read from the middle), record-aligned byte ranges of binary files
   (:mod:`.ranges`). Their numbers, the largest range first, are the partitions: one range each (pass 2: two
   when there are many, :func:`write_partitions`), an RDD, or a DataFrame for the scans that Spark SQL reads.
2. **Scan** (tasks): with the content index ingest landed beside each CIFAR member
   (:mod:`cifarflow.data.content_index`: a label and a hash, 17 bytes an image), tasks read it and answer
   pass 1's questions themselves (:mod:`.indexes`: counts, repeated keys, one key bucket's rows), so only
   small aggregates reach the JVM; without one (an older ingest, image folders) they read the range through
   :class:`~cifarflow.storage.Store`, decode it with the vectorised decoders of :mod:`cifarflow.data.cifar`,
   hash it and return small columns (id, source split, label, content hash, split key; :mod:`.schema`),
   cached for the queries of step 3 (:mod:`.tasks`). No image bytes leave the tasks.
3. **Plan the split** (:mod:`.plan`, over either scan): exact duplicates (train duplicates dropped except the
   lowest id, train images also in test dropped as leakage, test duplicates counted and kept), then per class
   the ``round(n * val_fraction)`` train images with the smallest (key, id) go to val. Grouping by the split
   key finds repeated images and a key histogram the bucket of each cut-off: nothing sorts every row. Only
   counts, the duplicate groups' rows and one bucket's rows per class reach the driver.
4. **Write** (tasks): read and decode the range, check its hashes against the index pass 1 read (a
   disagreement fails the job), drop, assign train/val by the cut-offs, write Parquet shards to
   names derived from the range number (a retried or speculative attempt writes the same bytes to the same
   name), and return one small row per shard: checksum, per-class counts, exact per-channel pixel sums.
5. **Commit** (driver, :mod:`.commit`): combine the sums into mean/std, remove stray files, write ``stats.json``
   and then ``_manifest.json``.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cifarflow.data import manifest as mf
from cifarflow.data import spark as sparkmod
from cifarflow.data.cifar import label_names
from cifarflow.data.preprocess.commit import (
    assemble,
    check_destination,
    check_writable,
    commit,
    remove_attempt,
    user_error,
)
from cifarflow.data.preprocess.folders import (
    FLAT_TEST_FRACTION,
    IMAGE_SCAN_ARROW,
    ImageInput,
    ImageSettings,
    check_counts,
    image_input,
    image_parameters,
    image_scan_task,
    image_shape,
    plan_image_ranges,
    skipped_files,
)
from cifarflow.data.preprocess.indexes import IndexScan
from cifarflow.data.preprocess.keys import Cutoffs
from cifarflow.data.preprocess.plan import SplitPlan, plan_split
from cifarflow.data.preprocess.ranges import CifarInput, InputRange, cifar_input, plan_ranges, refuse_dataset
from cifarflow.data.preprocess.schema import SCAN_ARROW, spark_schema
from cifarflow.data.preprocess.tasks import TaskContext, scan_task, test_delay, write_task
from cifarflow.data.spark import Spark, StageProgress
from cifarflow.errors import CifarflowError, InputError
from cifarflow.storage import Store, join, normalize, redact

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

# Bump when a change to this job changes what it writes for the same input: it is part of the dataset id.
RECIPE = "cifarflow.preprocess/v2"  # v2: XXH3-128 of the CHW planes as stored (pass 1 decodes nothing)


@dataclass
class PreprocessResult:
    dataset_id: str
    dataset_url: str
    manifest_url: str
    reused: bool
    counts: dict[str, int]  # rows per split
    duplicates: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


RawInput = CifarInput | ImageInput


def read_source(store: Store, raw_url: str) -> RawInput:
    """Read ingest's commit marker (either kind) and turn it into the planner's view."""
    from cifarflow.data.ingest import read_raw

    raw_url = normalize(raw_url).rstrip("/")
    refuse_dataset(store, raw_url)
    index = read_raw(store, raw_url)
    if index.kind == "images":
        return image_input(raw_url, index)
    return cifar_input(store, raw_url)


def parameters(
    source: RawInput, val_fraction: float, seed: int, image_size: int | None = None
) -> dict[str, Any]:
    """What the dataset id depends on besides the raw checksum (not --partitions: it changes no row)."""
    if isinstance(source, ImageInput):
        return image_parameters(source, val_fraction, seed, image_size)
    return {"recipe": RECIPE, "layout": source.layout.name, "val_fraction": val_fraction, "seed": seed}


def check_options(source: RawInput, image_size: int | None, strict: bool) -> None:
    """Refuse the image-folder options for a CIFAR source (the pipeline's plan step checks it too)."""
    if isinstance(source, CifarInput) and (image_size is not None or strict):
        raise InputError(
            f"{redact(source.raw_url)} is a CIFAR archive: --image-size and --strict are for image folders",
            "drop them (CIFAR images are 32x32 and all decodable)",
        )


def plan_input(store: Store, source: RawInput, partitions: int | None) -> list[Any]:
    if isinstance(source, ImageInput):
        return plan_image_ranges(store, source, partitions)
    return plan_ranges(source.files, source.layout, partitions)


def input_summary(source: RawInput) -> tuple[str, int, int]:
    """(layout, files, bytes) for the log."""
    if isinstance(source, ImageInput):
        return f"images/{source.index.layout}", source.index.images, source.index.bytes
    return source.layout.name, len(source.files), sum(m.bytes for m in source.files)


@dataclass(frozen=True)
class Job:
    """One preprocess run, as decided on the driver before Spark starts."""

    store: Store
    source: RawInput
    ranges: list[Any]  # InputRange (CIFAR) or ImageRange
    dataset_id: str
    dataset_url: str
    out_url: str  # the datasets root
    staging_url: str  # this attempt's own folder: its tasks write here, and only it is removed on failure
    parameters: dict[str, Any]
    class_names: list[str]
    val_fraction: float
    seed: int
    image: mf.ImageSpec = field(default_factory=mf.ImageSpec)  # what the shards hold (images: after pass 1)
    settings: ImageSettings | None = None  # image folders only

    @property
    def num_classes(self) -> int:
        return self.source.num_classes


def preprocess(
    raw: str,
    out: str,
    *,
    master: str | None = None,
    partitions: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    image_size: int | None = None,
    strict: bool = False,
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
    check_options(source, image_size, strict)
    params = parameters(source, val_fraction, seed, image_size)
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
        ranges=plan_input(store, source, partitions),
        dataset_id=ds_id,
        dataset_url=dataset_url,
        out_url=out,
        staging_url=staging,
        parameters=params,
        class_names=class_names(store, source),
        val_fraction=val_fraction,
        seed=seed,
        settings=(
            ImageSettings(join(source.raw_url, source.index.folder), image_size, strict)
            if isinstance(source, ImageInput)
            else None
        ),
    )
    layout, files, size = input_summary(source)
    log.info(
        "preprocessing %s (%s, %d files, %.1f MB) into %s: %d input ranges",
        redact(source.raw_url),
        layout,
        files,
        size / 1e6,
        redact(dataset_url),
        len(job.ranges),
    )
    try:
        check_writable(store, out, staging)
        with sparkmod.session(master, app_name=f"cifarflow-preprocess-{ds_id}") as spark:
            manifest, stats = run_job(spark, job)
        manifest_url = commit(job, manifest, stats)
    except Exception as exc:
        if not isinstance(exc, CifarflowError):
            raise user_error(exc) from None
        raise
    finally:
        remove_attempt(store, staging)
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


def class_names(store: Store, source: RawInput) -> list[str]:
    if isinstance(source, ImageInput):
        return list(source.index.classes)
    return label_names(store.read_bytes(source.meta_url), source.layout)


def run_job(spark: Spark, job: Job) -> tuple[mf.Manifest, mf.Stats]:
    """Passes 1 and 2 on ``spark``; returns the manifest and stats to commit (nothing is committed here)."""
    layout = job.source.layout.name if isinstance(job.source, CifarInput) else ""
    ctx = TaskContext(
        tuple(job.ranges), job.seed, job.store, job.num_classes, layout, job.settings, delay_s=test_delay()
    )
    order = largest_first(job.ranges)

    clock = time.monotonic()
    if job.settings is None:
        plan, carve, image, skipped = cifar_pass_one(spark, ctx, order, job), None, job.image, None
    else:
        plan, carve, image, skipped = image_pass_one(spark, ctx, order, job)
    log.info(
        "pass 1: %d train images kept, %d test; duplicates %s; val cut-offs for %d classes (%.1f s)",
        sum(plan.train_kept.values()),
        sum(plan.test.values()),
        plan.duplicates,
        len(plan.cutoffs.keys),
        time.monotonic() - clock,
    )

    # Pass 2: tasks write their shards and return one small record each (an RDD job: no query to plan).
    clock = time.monotonic()
    dropped = spark.context.broadcast(plan.dropped)
    try:
        task = functools.partial(
            write_task, ctx=ctx, dataset=job.staging_url, dropped=dropped, cutoffs=plan.cutoffs, carve=carve
        )
        with StageProgress(spark.context, "pass 2/2: split and write shards"):
            partitions = write_partitions(len(order), spark.context.defaultParallelism)
            rows = spark.context.parallelize(order, partitions).mapPartitions(task).collect()
    finally:
        dropped.destroy(blocking=True)
    log.info("pass 2: %d shards written (%.1f s)", len(rows), time.monotonic() - clock)
    return assemble(replace(job, image=image), rows, plan, skipped)


def write_partitions(ranges: int, cores: int) -> int:
    """Pass 2's tasks: a range each while that keeps every core busy to the end, else two. A task costs ~15 ms
    beyond its ranges (the JVM schedules it, the worker reads its command): 0.2 s of pass 2 at 10x CIFAR."""
    return max(min(ranges, 4 * cores), (ranges + 1) // 2)


def largest_first(ranges: list[Any]) -> list[int]:
    """The range numbers, the largest range first: Spark starts partitions in order (contiguous slices), so a
    long task (a big pickle: the synthetic 50x test set is one of 500k images) runs beside the short ones
    instead of alone at the end. Shard names come from the range number, so the order changes no byte."""

    def size(part: Any) -> int:
        return part.length if isinstance(part, InputRange) else part.bytes

    return sorted(range(len(ranges)), key=lambda i: -size(ranges[i]))  # stable: ties keep input order


def range_frame(spark: SparkSession, order: list[int]) -> DataFrame:
    """``order`` as a DataFrame of one range number (``id``) per partition, for the scans that Spark SQL reads."""
    from pyspark.sql import functions as F

    numbers = spark.range(0, len(order), 1, len(order))
    return numbers.select(F.element_at(F.array(*map(F.lit, order)), F.col("id").cast("int") + 1).alias("id"))


def images(job: Job) -> int:
    """How many images the input holds: ingest counted them (an older ingest's marker has no count: the
    records' size gives about as many)."""
    if isinstance(job.source, ImageInput):
        return job.source.index.images
    return sum(part.rows or part.length // job.source.layout.record_bytes for part in job.ranges)


def cifar_pass_one(spark: Spark, ctx: TaskContext, order: list[int], job: Job) -> SplitPlan:
    """Pass 1 over CIFAR ranges: small answers only, from several small queries."""
    from pyspark import StorageLevel

    if all(part.hashes_url for part in job.ranges):
        with StageProgress(spark.context, "pass 1/2: read content indexes, deduplicate"):
            return plan_split(IndexScan(spark.context, ctx), job.val_fraction, images(job), job.num_classes)
    # Without them the scan decodes and hashes every image: once, cached.
    scan = range_frame(spark.sql, order).mapInArrow(
        functools.partial(scan_task, ctx=ctx), spark_schema(SCAN_ARROW)
    )
    scan = scan.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        with StageProgress(spark.context, "pass 1/2: decode, hash, deduplicate"):
            return plan_split(scan, job.val_fraction, images(job), job.num_classes)
    finally:
        # Blocking: a release still in flight when the session stops makes Spark print a stack trace.
        scan.unpersist(blocking=True)


def image_pass_one(
    spark: Spark, ctx: TaskContext, order: list[int], job: Job
) -> tuple[SplitPlan, Cutoffs | None, mf.ImageSpec, mf.Skipped | None]:
    """Pass 1 over image ranges: the CIFAR decisions on the decodable images, after the image-only ones
    (undecodable files, the size, a flat folder's test carve)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    assert job.settings is not None and isinstance(job.source, ImageInput)
    task = functools.partial(image_scan_task, ctx=ctx)
    scan = range_frame(spark.sql, order).mapInArrow(task, spark_schema(IMAGE_SCAN_ARROW))
    scan = scan.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        with StageProgress(spark.context, "pass 1/2: decode, resize, hash, deduplicate"):
            skipped = skipped_files(scan)
            good = scan.filter(F.col("broken").isNull()).drop("broken")
            decodable = job.source.index.images - (skipped.undecodable if skipped else 0)
            image = image_shape(good, job.settings.size, decodable)
            carve = FLAT_TEST_FRACTION if job.source.flat else None
            plan = plan_split(
                good.drop("height", "width"), job.val_fraction, images(job), job.num_classes, carve
            )
            check_counts(plan.train_kept, plan.test, job.class_names)
            return plan, plan.carve, image, skipped
    finally:
        scan.unpersist(blocking=True)
