"""Ingest of a class-per-folder image dataset: a folder, a bucket prefix, or a ``.tar``/``.tar.gz``/``.zip`` of one.

The layout rules are :mod:`cifarflow.data.folders`'. The source is listed once to find the layout (nothing is
written when it is refused), then read once more to land every image byte for byte under
``DEST/raw/<folder>/<path relative to the dataset root>``. The records (path, label, split, bytes, sha256) go to
JSON-lines shards of :data:`BATCH` images under ``DEST/raw/<folder>/_index/``; a shard is written after its
images, so it is also the batch's completion record: a rerun skips every image whose shard already lists it and
whose landed file has the recorded size (a folder source is not even read again). Reads and writes go in groups
(one concurrent request per group on buckets), so a million small files cost no million round trips of
bookkeeping. ``_ingest.json`` (:class:`ImageIndex`) is written last.

``<folder>`` is named by what identifies the source: an archive's checksum (its md5 when one was given to check
it against, else its sha256), or for a folder the digest of its listing
(every image's path, size and modification time or ETag), so a changed source lands in a folder of its own.

Here: pass two, the images landed in batches with their index shards (:func:`land`), and the index built from
them (:func:`build_index`). Beside it: :mod:`.image_sources` (folder/prefix, zip, tar), :mod:`.survey` (pass
one: :func:`sniff`, the layout and fingerprint) and :mod:`.image_landing` (one run's writes; :func:`intact`
reads a committed index back).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cifarflow.data.folders import Entry, Layout
from cifarflow.data.ingest.decompress import too_big
from cifarflow.data.ingest.image_landing import INDEX, ImageLanding, intact
from cifarflow.data.ingest.image_sources import (
    ImageSource,
    Item,
    StoreFolder,
    TarArchive,
    ZipArchive,
    open_image_archive,
)
from cifarflow.data.ingest.marker import ArchiveInfo, ImageIndex, ImageRecord, IndexShard, shard_bytes
from cifarflow.data.ingest.survey import Digest, sniff, survey
from cifarflow.errors import InputError

# The step (``cifarflow.data.ingest``) and the tests reach every part through this module.
__all__ = [
    "BATCH",
    "GROUP_BYTES",
    "ImageLanding",
    "ImageSource",
    "Item",
    "Landed",
    "Layout",
    "StoreFolder",
    "TarArchive",
    "ZipArchive",
    "build_index",
    "intact",
    "land",
    "open_image_archive",
    "sniff",
    "survey",
]

BATCH = 1000  # images per index shard (one completion record per batch, not per file)
GROUP_BYTES = 32 << 20  # bytes read and written per group (one concurrent request on buckets)


@dataclass
class Landed:
    shards: list[IndexShard] = field(default_factory=list)
    checksum: Digest = field(default_factory=Digest)
    images: int = 0
    bytes: int = 0


@dataclass
class _Batcher:
    """Groups items into shards of :data:`BATCH`, reading and writing in groups of :data:`GROUP_BYTES`."""

    source: ImageSource
    landing: ImageLanding
    max_bytes: int
    landed: Landed = field(default_factory=Landed)
    records: list[ImageRecord] = field(default_factory=list)
    pending: list[Item] = field(default_factory=list)
    pending_bytes: int = 0
    before: list[ImageRecord] | None = None  # what the current shard held after a previous run
    seen: set[int] = field(default_factory=set)  # hashes of landed paths: a path twice is refused

    def __post_init__(self) -> None:
        self.before = self.landing.previous(self._shard_path())

    def _shard_path(self) -> str:
        return f"{INDEX}/part-{len(self.landed.shards):05d}.jsonl"

    def add(self, item: Item) -> None:
        key = hash(item.entry.key)
        if key in self.seen:
            raise InputError(
                f"{self.source.shown} holds {_shown(item.entry.key)} twice (the second as {_shown(item.entry.path)})",
                "re-create the source with each image once",
            )
        self.seen.add(key)
        size = len(item.data) if item.data is not None else item.entry.size
        if size is not None and size > self.max_bytes:
            raise too_big(f"{_shown(item.entry.path)} holds {size} bytes", self.max_bytes)
        self.pending.append(item)
        self.pending_bytes += size or 0
        if len(self.records) + len(self.pending) >= BATCH or self.pending_bytes >= GROUP_BYTES:
            self.flush()

    def flush(self) -> None:
        """Land the pending group; close the shard when it is full."""
        start = len(self.records)
        group: list[ImageRecord | None] = [self._reusable(start + i, it) for i, it in enumerate(self.pending)]
        todo = [i for i, rec in enumerate(group) if rec is None]
        unread = [i for i in todo if self.pending[i].data is None]
        if unread:
            fetched = self.source.read([self.pending[i].entry for i in unread])
            for i, data in zip(unread, fetched, strict=True):
                self.pending[i].data = data
        files: dict[str, bytes] = {}
        for i in todo:
            item = self.pending[i]
            assert item.data is not None
            group[i] = _record(item.entry, item.data)
            files[item.entry.key] = item.data
        if files:
            self.landing.write(files)
        for rec in group:
            assert rec is not None
            self._count(rec)
        self.pending, self.pending_bytes = [], 0
        if len(self.records) >= BATCH:
            self.close()

    def _reusable(self, position: int, item: Item) -> ImageRecord | None:
        """The previous run's record for this image, when it matches and the landed file is intact."""
        before = self.before[position] if self.before and position < len(self.before) else None
        entry = item.entry
        if (
            before is None
            or (before.path, before.label, before.split) != (entry.key, entry.label, entry.split)
            or (entry.size is not None and before.bytes != entry.size)
            or (item.data is not None and hashlib.sha256(item.data).hexdigest() != before.sha256)
        ):
            return None
        return before if self.landing.size(before.path) == before.bytes else None

    def _count(self, rec: ImageRecord) -> None:
        self.records.append(rec)
        self.landed.checksum.add(rec.path, rec.label, rec.split, rec.sha256)
        self.landed.images += 1
        self.landed.bytes += rec.bytes
        if self.landed.bytes > self.max_bytes:
            raise too_big(
                f"the images of {self.source.shown} hold more than {self.max_bytes} bytes", self.max_bytes
            )

    def finish(self) -> Landed:
        if self.pending:
            self.flush()
        if self.records:
            self.close()
        return self.landed

    def close(self) -> None:
        """Write the shard (after its images: it is the batch's completion record), unless it is there."""
        path = self._shard_path()
        data = shard_bytes(self.records)
        if self.before != self.records:
            self.landing.write_shard(path, data)
        total = sum(r.bytes for r in self.records)
        shard = IndexShard(
            path=path, images=len(self.records), bytes=total, sha256=hashlib.sha256(data).hexdigest()
        )
        self.landed.shards.append(shard)
        self.records = []
        self.before = self.landing.previous(self._shard_path())


def _record(entry: Entry, data: bytes) -> ImageRecord:
    return ImageRecord(
        path=entry.key,
        label=entry.label,
        split=entry.split,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _shown(name: str) -> str:
    text = name.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 100 else f"{text[:60]}...{text[-20:]} ({len(name)} characters)"


def land(source: ImageSource, layout: Layout, landing: ImageLanding, max_bytes: int) -> Landed:
    """Pass two: every image of ``layout`` landed, its records in shards."""
    if layout.size is not None and layout.size > max_bytes:
        raise too_big(f"the images of {source.shown} hold {layout.size} bytes", max_bytes)
    batcher = _Batcher(source, landing, max_bytes)
    for item in source.items(layout):
        batcher.add(item)
    return batcher.finish()


def build_index(
    layout: Layout,
    landed: Landed,
    *,
    source: str,
    folder: str,
    archive: ArchiveInfo | None = None,
    fingerprint: str | None = None,
) -> ImageIndex:
    return ImageIndex(
        layout=layout.kind,
        root="/".join(layout.root),
        test_folder=layout.test_folder,
        classes=list(layout.classes),
        train_counts=list(layout.train_counts),
        test_counts=list(layout.test_counts),
        images=landed.images,
        bytes=landed.bytes,
        skipped=dict(layout.skipped),
        source=source,
        archive=archive,
        fingerprint=fingerprint,
        folder=folder,
        checksum=landed.checksum.hexdigest(),
        shards=landed.shards,
    )
