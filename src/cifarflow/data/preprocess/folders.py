"""Image folders (ingest's ``kind == "images"``): input ranges of many files sized by bytes, the tasks that read
and decode them, and pass 1's image-only decisions (undecodable files, the image size, the test carve of a flat
folder). Everything else (duplicates, leakage, the val cut, the shards, the stats, the commit) is the CIFAR
path's, unchanged.

- **Ranges.** The index is streamed one shard (<= 1000 records) at a time and cut into ranges of about
  :data:`IMAGE_RANGE_BYTES` of image files (or ``total / --partitions``), never across an index shard: the
  driver holds a few numbers per range, not the records, and a task reads its index shard itself.
- **Rows.** Row ids are ``<index shard>:<record>`` (``part-00003:0000017``), like CIFAR's ``<member>:<record>``,
  so the dropped-duplicates plan is the same; stats.json names skipped files by their path.
"""

from __future__ import annotations

import hashlib
import logging
import math
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from cifarflow.data import manifest as mf
from cifarflow.data.cifar import row_ids
from cifarflow.data.images import UndecodableImage, decode
from cifarflow.data.ingest.marker import ImageIndex, ImageRecord, parse_shard
from cifarflow.data.preprocess.keys import HASH_BYTES, content_hashes, split_keys
from cifarflow.data.preprocess.ranges import changed, missing
from cifarflow.data.preprocess.schema import SCAN_ARROW
from cifarflow.data.preprocess.tasks import CARVE_SALT, Rows, TaskContext, guarded, scan_columns
from cifarflow.errors import InputError
from cifarflow.storage import Store, join, redact

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

# Bump when a change to the image path changes what it writes for the same input: it is part of the dataset id.
IMAGE_RECIPE = "cifarflow.preprocess-images/v2"  # v2: XXH3-128 content hashes
# Image files per range, by encoded bytes: smaller than CIFAR's ranges, as a JPEG decodes to ~10x its size.
IMAGE_RANGE_BYTES = 16 * 2**20
# A flat folder (no test/ folder): this share of each class's images becomes the test split.
FLAT_TEST_FRACTION = 0.2

# Pass 1's rows for image folders: the CIFAR columns, the carve key, the decoded size, and the path of a file
# that could not be decoded (those rows carry no hash).
IMAGE_SCAN_ARROW = pa.schema(
    [
        *SCAN_ARROW,
        pa.field("tkey", pa.int64(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("broken", pa.string(), nullable=True),
    ]
)


@dataclass(frozen=True)
class ImageRange:
    """One task's work: records ``[first_index, stop)`` of one index shard."""

    index: int
    member: str  # the index shard's name without folder and suffix: row ids are "<member>:<record>"
    url: str  # the index shard
    sha256: str  # of the index shard
    first_index: int
    stop: int
    bytes: int  # of the image files


@dataclass(frozen=True)
class ImageSettings:
    """What image tasks need besides the range."""

    folder_url: str  # DEST/raw/<folder>: a record's path is relative to it
    size: int | None  # decode to size x size, or keep each image's own size
    strict: bool  # an undecodable file stops the job


@dataclass(frozen=True)
class ImageInput:
    """An ingested image folder as the driver sees it."""

    raw_url: str
    index: ImageIndex
    checksum: str
    description: dict[str, Any]
    kind: Literal["images"] = "images"

    @property
    def num_classes(self) -> int:
        return len(self.index.classes)

    @property
    def flat(self) -> bool:
        return not self.index.has_test


def image_input(raw_url: str, index: ImageIndex) -> ImageInput:
    description = {
        "raw": redact(raw_url),
        "layout": f"images/{index.layout}",
        "source": index.source,
        "images": index.images,
        "bytes": index.bytes,
        "index_checksum": index.checksum,
    }
    return ImageInput(raw_url, index, index.checksum, description)


def image_parameters(
    source: ImageInput, val_fraction: float, seed: int, image_size: int | None
) -> dict[str, Any]:
    """What an image dataset's id depends on besides the index checksum."""
    params: dict[str, Any] = {
        "recipe": IMAGE_RECIPE,
        "layout": f"images/{source.index.layout}",
        "val_fraction": val_fraction,
        "seed": seed,
        "image_size": image_size,
        "encoding": "raw",
    }
    if source.flat:
        params["test_fraction"] = FLAT_TEST_FRACTION
    return params


def _member(shard_path: str) -> str:
    return posixpath.splitext(posixpath.basename(shard_path))[0]


def plan_image_ranges(store: Store, source: ImageInput, partitions: int | None = None) -> list[ImageRange]:
    """Cut the streamed index into ranges of about the target bytes (module docstring)."""
    index, raw_url = source.index, source.raw_url
    target = math.ceil(index.bytes / partitions) if partitions else IMAGE_RANGE_BYTES
    out: list[ImageRange] = []
    for shard, records in zip(index.shards, index.batches(store, raw_url), strict=True):
        url, member = index.shard_url(raw_url, shard), _member(shard.path)
        start, size = 0, 0
        for position, record in enumerate(records):
            size += record.bytes
            if size >= target or position == len(records) - 1:
                out.append(ImageRange(len(out), member, url, shard.sha256, start, position + 1, size))
                start, size = position + 1, 0
    return out


def range_records(store: Store, part: ImageRange) -> list[ImageRecord]:
    data = store.read_bytes(part.url)
    if hashlib.sha256(data).hexdigest() != part.sha256:
        raise changed(part.url)
    return parse_shard(data)[part.first_index : part.stop]


def decoded(ctx: TaskContext, part: ImageRange) -> Iterator[tuple[int, ImageRecord, np.ndarray | None]]:
    """``(record number, record, pixels)`` for each file of the range; pixels ``None`` when undecodable."""
    settings: ImageSettings = ctx.image
    for position, record in enumerate(range_records(ctx.store, part), start=part.first_index):
        url = join(settings.folder_url, record.path)
        try:
            data = ctx.store.read_bytes(url)
        except FileNotFoundError as exc:
            raise missing(url) from exc
        if len(data) != record.bytes or hashlib.sha256(data).hexdigest() != record.sha256:
            raise changed(url)
        try:
            yield position, record, decode(data, settings.size, name=record.path)
        except UndecodableImage as exc:
            if settings.strict:
                # A plain InputError: the type that survives the trip through Spark (errors.unmark).
                raise InputError(
                    f"{exc.problem} (--strict)", "fix or remove the file, or drop --strict"
                ) from None
            yield position, record, None


def image_rows(ctx: TaskContext, part: ImageRange) -> Rows:
    """The decodable images of a range, all of one size (pass 1 made sure)."""
    good = [(p, r, a) for p, r, a in decoded(ctx, part) if a is not None]
    positions = np.array([p for p, _, _ in good], dtype=np.int64)
    return Rows(
        ids=row_ids(part.member, positions),
        positions=positions,
        src=np.array([r.split for _, r, _ in good], dtype=str),
        labels=np.array([r.label for _, r, _ in good], dtype=np.int32),
        content=np.stack([a.reshape(-1) for _, _, a in good]) if good else np.zeros((0, 3), np.uint8),
    )


@guarded
def image_scan_task(ctx: TaskContext, part: ImageRange) -> Iterator[pa.RecordBatch]:
    good: list[tuple[int, ImageRecord, np.ndarray]] = []
    broken: list[tuple[int, ImageRecord]] = []
    for position, record, pixels in decoded(ctx, part):
        if pixels is None:
            broken.append((position, record))
        else:
            good.append((position, record, pixels))
    hashes = content_hashes([a for _, _, a in good]) if good else np.zeros((0, HASH_BYTES), np.uint8)
    ids = row_ids(part.member, np.array([p for p, _, _ in good], dtype=np.int64))
    columns = scan_columns(
        ids,
        pa.array([r.split for _, r, _ in good], pa.string()),
        [r.label for _, r, _ in good],
        hashes,
        ctx.seed,
    )
    yield pa.RecordBatch.from_arrays(
        [
            *columns,
            pa.array(split_keys(hashes, ctx.seed ^ CARVE_SALT), pa.int64()),
            pa.array([a.shape[0] for _, _, a in good], pa.int32()),
            pa.array([a.shape[1] for _, _, a in good], pa.int32()),
            pa.nulls(len(good), pa.string()),
        ],
        schema=IMAGE_SCAN_ARROW,
    )
    if broken:
        n = len(broken)
        yield pa.RecordBatch.from_pydict(
            {
                "id": [f"{part.member}:{p:07d}" for p, _ in broken],
                "src": [r.split for _, r in broken],
                "label": [r.label for _, r in broken],
                "hash": [b""] * n,
                "key": [0] * n,
                "tkey": [0] * n,
                "height": [0] * n,
                "width": [0] * n,
                "broken": [r.path for _, r in broken],
            },
            schema=IMAGE_SCAN_ARROW,
        )


def skipped_files(scan: DataFrame) -> mf.Skipped | None:
    """The undecodable files pass 1 met (one warning line), or ``None``."""
    from pyspark.sql import functions as F

    paths = sorted(r.broken for r in scan.filter(F.col("broken").isNotNull()).select("broken").collect())
    if not paths:
        return None
    log.warning(
        "skipped %d undecodable image file(s) (listed in stats.json), e.g. %s",
        len(paths),
        ", ".join(paths[:3]),
    )
    return mf.Skipped(undecodable=len(paths), paths=paths)


def image_shape(good: DataFrame, size: int | None, total: int) -> mf.ImageSpec:
    """The one size every decoded image has; mixed sizes without --image-size is an error."""
    if total == 0:
        raise InputError(
            "no image could be decoded (every file is broken or not an image)",
            "check the source folder; `cifarflow ingest` lands what it finds",
        )
    if size is not None:
        return mf.ImageSpec(height=size, width=size)
    sizes = sorted((r.height, r.width) for r in good.select("height", "width").distinct().limit(3).collect())
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sizes[:2])
        raise InputError(
            f"the images have different sizes ({shown}, ...)",
            "pass --image-size N to resize every image to NxN (shorter side to N, then centre crop)",
        )
    return mf.ImageSpec(height=sizes[0][0], width=sizes[0][1])


def check_counts(train_kept: dict[int, int], test: dict[int, int], classes: list[str]) -> None:
    """Every class keeps train images, and the test split is not empty."""
    empty = [name for c, name in enumerate(classes) if not train_kept.get(c)]
    if empty:
        raise InputError(
            f"class {empty[0]!r} has no decodable train images left"
            + (f" (nor {len(empty) - 1} other classes)" if len(empty) > 1 else ""),
            "add images to that class folder, or remove the folder",
        )
    if not sum(test.values()):
        raise InputError(
            "the test split has no decodable images", "add images under test/ (or val/), or use a flat layout"
        )
