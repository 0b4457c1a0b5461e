"""Versioned datasets: Parquet shards + ``stats.json`` + ``_manifest.json`` (written last: the commit).

Layout under a datasets root::

    DATASETS/<dataset-id>/train/part-00000-000.parquet ...
                         /val/part-00000-000.parquet ...
                         /test/part-00005-000.parquet ...
                         /stats.json
                         /_manifest.json      <- the commit; readers trust only the files it lists

A shard is named ``part-<input range>-<chunk>``: the range of the raw input that Spark task read (numbered
over the train files first, then the test files, so test numbers continue where train's end) and the chunk
of at most ``SHARD_ROWS`` images it wrote from that range. Train and val shards of one range share its number.

Every shard has the schema :data:`SCHEMA`: ``id`` (string, unique within the dataset), ``label`` (int32) and
``image`` (height x width x 3 uint8 bytes in HWC order, raw: the manifest's ``image`` gives the size and
``encoding``; 32x32x3 for CIFAR).
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from typing import IO, Any, Final, Literal, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cifarflow import __version__
from cifarflow.errors import InputError
from cifarflow.storage import Store, join, redact, translate

M = TypeVar("M", bound=BaseModel)

FORMAT: Final = "cifarflow.dataset/v1"
MANIFEST = "_manifest.json"
STATS = "stats.json"
SPLITS = ("train", "val", "test")
SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("label", pa.int32(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
    ]
)
# Row groups of this many images keep readers' batches large without holding a whole shard in memory.
ROW_GROUP_ROWS = 2048


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FileEntry(_Model):
    path: str  # relative to the dataset folder
    rows: int = 0
    bytes: int
    sha256: str


class SplitInfo(_Model):
    rows: int
    files: list[FileEntry]


class ImageSpec(_Model):
    height: int = 32
    width: int = 32
    channels: int = 3
    layout: Literal["HWC"] = "HWC"
    dtype: Literal["uint8"] = "uint8"
    # How the ``image`` column holds it: raw HWC bytes at every size (docs/benchmarks.md, "Dataset storage").
    encoding: Literal["raw"] = "raw"


class Skipped(_Model):
    """Image files preprocess left out because they cannot be decoded (image folders only)."""

    undecodable: int
    paths: list[str]  # under the raw folder, sorted


class Stats(_Model):
    """Per-channel mean/std (RGB, pixel values scaled to [0, 1]) over the train split, counts, duplicates, and
    (image folders) the files skipped."""

    mean: list[float]
    std: list[float]
    counts: dict[str, list[int]]  # split -> images per class index
    duplicates: dict[str, int] = Field(default_factory=dict)
    skipped: Skipped | None = None  # absent for CIFAR (its stats.json is unchanged)


class Manifest(_Model):
    format: Literal["cifarflow.dataset/v1"] = FORMAT
    dataset_id: str
    num_classes: int
    class_names: list[str]
    image: ImageSpec = Field(default_factory=ImageSpec)
    columns: dict[str, str] = Field(default_factory=lambda: {f.name: str(f.type) for f in SCHEMA})
    splits: dict[str, SplitInfo]
    stats: FileEntry
    source: dict[str, Any]
    parameters: dict[str, Any]
    code_version: str = __version__

    def files(self, split: str) -> list[FileEntry]:
        if split not in self.splits:
            raise InputError(
                f"dataset {self.dataset_id} has no {split!r} split", f"use one of {sorted(self.splits)}"
            )
        return self.splits[split].files

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def dataset_id(source_checksum: str, parameters: dict[str, Any]) -> str:
    """Content address of a dataset: same raw input + same parameters + same format => same id."""
    key = canonical_json({"format": FORMAT, "source": source_checksum, "parameters": parameters})
    return "ds-" + sha256(key.encode())[:16]


# How shards are written (the scale benchmark's floor writes with the same): images barely compress, so the
# writer is kept cheap; only the label column gets a dictionary and statistics.
WRITER_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "compression_level": 1,
    "use_dictionary": ["label"],
    "write_statistics": ["label"],
}


def write_table(table: pa.Table, sink: Any) -> None:
    """Serialise a shard deterministically (same rows => same bytes, so retried tasks write identical files)."""
    pq.write_table(table.cast(SCHEMA), sink, row_group_size=ROW_GROUP_ROWS, **WRITER_OPTIONS)


def table_bytes(table: pa.Table) -> bytes:
    """A shard's bytes (:func:`write_table`)."""
    sink = io.BytesIO()
    write_table(table, sink)
    return sink.getvalue()


class _Hashing(io.RawIOBase):
    """A write-only file that passes what is written on to ``handle``, hashing it on the way (while it is
    still in cache: no second pass over a shard, and no copy of it in memory)."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.digest.update(data)
        self.handle.write(data)
        size = memoryview(data).nbytes
        self.size += size
        return size


def write_shard(store: Store, dataset: str, relpath: str, table: pa.Table) -> FileEntry:
    """Write one shard atomically and describe it for the manifest."""
    with store.write_atomic(join(dataset, relpath)) as handle:
        sink = _Hashing(handle)
        write_table(table, sink)
    return FileEntry(path=relpath, rows=table.num_rows, bytes=sink.size, sha256=sink.digest.hexdigest())


def commit(store: Store, dataset: str, manifest: Manifest, stats: Stats) -> str:
    """Write ``stats.json`` then ``_manifest.json`` (the commit). Returns the manifest URL."""
    stats_data = canonical_json(stats.model_dump(mode="json", exclude_none=True)).encode()
    store.write_bytes(join(dataset, STATS), stats_data)
    manifest.stats = FileEntry(path=STATS, bytes=len(stats_data), sha256=sha256(stats_data))
    url = join(dataset, MANIFEST)
    store.write_text(url, manifest.to_json())
    return url


def resolve(url: str) -> tuple[str, str]:
    """``(dataset folder, manifest URL)`` for a URL naming either."""
    url = url.rstrip("/")
    if url.endswith("/" + MANIFEST) or url == MANIFEST:
        return url[: -len(MANIFEST)].rstrip("/"), url
    return url, join(url, MANIFEST)


def load(store: Store, url: str) -> tuple[Manifest, str]:
    """Read and check a dataset's manifest. Returns ``(manifest, dataset folder URL)``.

    A folder that holds shards but no manifest is a dataset whose commit never happened (a crashed or running
    preprocess); it is refused just like a missing one.
    """
    base, murl = resolve(url)
    if not store.exists(murl):
        half = store.exists(join(base, "train")) or store.exists(join(base, STATS))
        if half:
            raise InputError(
                f"{redact(base)} holds shards but no {MANIFEST}: the dataset was never committed",
                "rerun `cifarflow preprocess`; readers only trust committed datasets",
            )
        raise InputError(f"no dataset at {redact(base)} (no {MANIFEST})", "run `cifarflow preprocess` first")
    manifest = read_model(
        store,
        murl,
        Manifest,
        what="cifarflow dataset manifest",
        fix="point --data at a folder written by `cifarflow preprocess`",
    )
    return manifest, base


def read_model(store: Store, url: str, model: type[M], *, what: str, fix: str) -> M:
    """Read a committed JSON record (manifest, ingest marker) into its model; anything else is one error line."""
    try:
        return model.model_validate_json(store.read_bytes(url))
    except ValidationError as exc:
        raise InputError(f"{redact(url)} is not a {what} ({exc.error_count()} problems)", fix) from exc


def load_stats(store: Store, manifest: Manifest, base: str) -> Stats:
    data = read_checked(store, base, manifest.stats)
    return Stats.model_validate_json(data)


def read_checked(store: Store, base: str, entry: FileEntry) -> bytes:
    """Read a file the manifest lists, refusing it if its size or checksum differ from the commit."""
    url = join(base, entry.path)
    try:
        data = store.read_bytes(url)
    except FileNotFoundError as exc:
        raise InputError(f"{redact(url)} is listed in the manifest but missing", "re-run preprocess") from exc
    if len(data) != entry.bytes or sha256(data) != entry.sha256:
        raise InputError(
            f"{redact(url)} does not match its manifest checksum (modified or corrupt)",
            "re-run `cifarflow preprocess` into a fresh folder",
        )
    return data


def verify(store: Store, manifest: Manifest, base: str) -> None:
    """Check that every listed shard exists with its committed checksum (reads them all: a flipped byte keeps
    the size)."""
    for split in manifest.splits.values():
        for entry in split.files:
            read_checked(store, base, entry)


def move(store: Store, src: str, dst: str) -> None:
    """Move one file: a rename on a local disk (atomic), a server-side copy and delete on object stores."""
    with translate(dst):
        fs, src_path = store.fs(src)
        _, dst_path = store.fs(dst)
        fs.makedirs(posixpath.dirname(dst_path), exist_ok=True)
        fs.mv(src_path, dst_path)
