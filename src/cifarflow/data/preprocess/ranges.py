"""The CIFAR input as the planner sees it: the data files ingest landed, cut into input ranges (one Spark task
each), and how a task reads and decodes its range.

A python batch file is one range (a pickle cannot be read from the middle); a binary file is cut into
record-aligned byte ranges of about :data:`RANGE_BYTES`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cifarflow.data import content_index
from cifarflow.data import manifest as mf
from cifarflow.data.cifar import LAYOUTS, Batch, Layout, decode_binary, decode_python
from cifarflow.errors import InputError
from cifarflow.storage import Store, join, redact

log = logging.getLogger(__name__)

# Binary files are cut into ranges of about this size when --partitions is not given. It depends on the data
# only, not on the cluster: the same input gives the same shards (and manifest) on a laptop and a cluster.
# A task costs ~30 ms of fixed CPU (Python worker and JVM), so ranges are large: 16 MiB spent 12% more CPU at
# 10x; with 64 MiB the two Python workers peak at 0.88-0.91 GB together at 10x-50x (0.6 GB at 10x with 16 MiB).
RANGE_BYTES = 64 * 2**20


@dataclass(frozen=True)
class InputFile:
    """One data file of the raw folder, as the planner needs it."""

    name: str  # short member name used in row ids, e.g. data_batch_1
    url: str
    split: str  # train | test
    bytes: int
    sha256: str | None = None
    rows: int = 0
    hashes_url: str | None = None  # its content index (cifarflow.data.content_index), when ingest wrote one
    hashes_sha256: str | None = None


@dataclass(frozen=True)
class InputRange:
    """One task's work: a whole python batch file, or a record-aligned byte range of a binary file."""

    index: int
    member: str
    url: str
    split: str
    offset: int
    length: int
    first_index: int  # record number of the first image (row ids count from it)
    sha256: str | None = None  # whole-file checksum, checked when the range is the whole file
    rows: int = 0  # images in the range
    hashes_url: str | None = None  # the member's content index, when it has one
    hashes_sha256: str | None = None  # the index's checksum, checked when the range is the whole file


def plan_ranges(files: list[InputFile], layout: Layout, partitions: int | None = None) -> list[InputRange]:
    """Cut the data files into input ranges (module docstring); ``partitions`` asks for about that many."""
    if layout.kind == "python":
        if partitions:
            log.debug("--partitions is ignored for python batches: a pickle is read by one task")
        return [
            InputRange(
                i, m.name, m.url, m.split, 0, m.bytes, 0, m.sha256, m.rows, m.hashes_url, m.hashes_sha256
            )
            for i, m in enumerate(files)
        ]
    size = layout.record_bytes
    total = sum(m.bytes for m in files)
    out: list[InputRange] = []
    for m in files:
        if m.bytes % size:
            raise InputError(
                f"{m.name}: {m.bytes} bytes is not a whole number of {size}-byte records "
                "(truncated or wrong variant)",
                "fetch the archive again and re-run `cifarflow ingest`",
            )
        records = m.bytes // size
        if records == 0:
            raise InputError(f"{m.name}: holds no images", "the archive is empty or truncated")
        wanted = round(partitions * m.bytes / total) if partitions else math.ceil(m.bytes / RANGE_BYTES)
        pieces = min(max(1, wanted), records)
        bounds = [records * i // pieces for i in range(pieces + 1)]
        whole = pieces == 1
        checksum, index_checksum = (m.sha256, m.hashes_sha256) if whole else (None, None)
        for a, b in itertools.pairwise(bounds):
            out.append(
                InputRange(
                    len(out),
                    m.name,
                    m.url,
                    m.split,
                    a * size,
                    (b - a) * size,
                    a,
                    checksum,
                    b - a,
                    m.hashes_url,
                    index_checksum,
                )
            )
    return out


@dataclass(frozen=True)
class CifarInput:
    """An ingested CIFAR archive as the driver sees it."""

    raw_url: str
    layout: Layout
    checksum: str
    description: dict[str, Any]
    files: list[InputFile]
    meta_url: str
    kind: Literal["cifar"] = "cifar"

    @property
    def num_classes(self) -> int:
        return self.layout.num_classes


def cifar_input(store: Store, raw_url: str) -> CifarInput:
    """Turn ingest's CIFAR marker into the planner's view."""
    from cifarflow.data.ingest import load_raw

    index = load_raw(store, raw_url)
    layout = LAYOUTS[index.layout]
    files = [
        InputFile(
            m.path,
            index.url(raw_url, m),
            m.split,
            m.bytes,
            m.sha256,
            m.rows,
            index.hashes_url(raw_url, m),
            m.hashes,
        )
        for m in index.members
        if m.split in ("train", "test")
    ]
    meta = [m for m in index.members if m.path == layout.meta]
    for split in ("train", "test"):
        if not any(m.split == split for m in files):
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
        "archive_sha256": index.archive.sha256,
        "archive_bytes": index.archive.bytes,
    }
    if index.archive.md5 is not None:  # the md5 it was checked against (ingest --md5, a named dataset)
        description["archive_md5"] = index.archive.md5
    # Train files first, then test, each in the index's (archive) order: this fixes the shard numbers.
    files.sort(key=lambda m: 0 if m.split == "train" else 1)
    meta_url = index.url(raw_url, meta[0])
    return CifarInput(raw_url, layout, index.archive.sha256, description, files, meta_url)


def read_range(store: Store, layout: Layout, part: InputRange, sha256: bool = True) -> Batch:
    """Read and decode one input range (whole pickle, or a byte range of binary records); ``sha256``: check
    the file's sha256 when the range is the whole file (a caller that checks every image against the
    content index instead passes False)."""
    data = read_checked(store, part.url, part.offset, part.length, part.sha256 if sha256 else None)
    if layout.kind == "python":
        return decode_python(data, layout, part.member)
    return decode_binary(data, layout, part.member, part.first_index)


def read_hashes(store: Store, part: InputRange) -> tuple[np.ndarray, np.ndarray]:
    """The range's content-index records: (labels, hashes), 17 bytes an image instead of 3073."""
    assert part.hashes_url is not None
    size = content_index.RECORD_BYTES
    data = read_checked(store, part.hashes_url, part.first_index * size, part.rows * size, part.hashes_sha256)
    return content_index.decode(data)


def read_checked(store: Store, url: str, offset: int, length: int, sha256: str | None) -> bytes:
    """``length`` bytes of a landed file from ``offset``, as ingest recorded them (``sha256``: of the whole file,
    given when the read is the whole file)."""
    try:
        with store.open(url, "rb", cache_type="none") as handle:
            handle.seek(offset)
            data = handle.read(length)
    except FileNotFoundError as exc:
        raise missing(url) from exc
    if len(data) != length or (sha256 and hashlib.sha256(data).hexdigest() != sha256):
        raise changed(url)
    return data


def check_hashes(store: Store, part: InputRange, labels: np.ndarray, hashes: np.ndarray) -> None:
    """Pass 2: the images just read are what pass 1 decided on (their index records), image for image."""
    want_labels, want_hashes = read_hashes(store, part)
    if not (np.array_equal(want_labels, labels) and np.array_equal(want_hashes, hashes)):
        raise InputError(
            f"raw file {redact(part.url)} and its content index disagree (one changed after ingest)",
            "re-run `cifarflow ingest` into a fresh folder",
        )


def missing(url: str) -> InputError:
    return InputError(
        f"raw file {redact(url)} is missing",
        "re-run the same `cifarflow ingest --source ... --dest ...`: it lands missing files again",
    )


def changed(url: str) -> InputError:
    return InputError(
        f"raw file {redact(url)} does not match what ingest recorded (changed or truncated)",
        "re-run `cifarflow ingest` into a fresh folder",
    )


def refuse_dataset(store: Store, raw_url: str) -> None:
    """A dataset folder passed as --raw is a common slip: say what it is."""
    if store.exists(join(raw_url, mf.MANIFEST)) or raw_url.endswith("/" + mf.MANIFEST):
        raise InputError(
            f"--raw {redact(raw_url)} is a dataset that `cifarflow preprocess` wrote, not ingest's raw folder",
            "pass --raw DEST/raw (the folder `cifarflow ingest --dest DEST` wrote); "
            "train on this dataset with `cifarflow train --data` instead",
        )
