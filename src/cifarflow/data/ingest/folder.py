"""Ingest of a class-per-folder image dataset: a folder, a bucket prefix, or a ``.tar``/``.tar.gz``/``.zip`` of one.

The layout rules are :mod:`cifarflow.data.folders`'. The source is listed once to find the layout (nothing is
written when it is refused), then read once more to land every image byte for byte under
``DEST/raw/<folder>/<path relative to the dataset root>``. The records (path, label, split, bytes, sha256) go to
JSON-lines shards of :data:`BATCH` images under ``DEST/raw/<folder>/_index/``; a shard is written after its
images, so it is also the batch's completion record: a rerun skips every image whose shard already lists it and
whose landed file has the recorded size (a folder source is not even read again). Reads and writes go in groups
(one concurrent request per group on buckets), so a million small files cost no million round trips of
bookkeeping. ``_ingest.json`` (:class:`ImageIndex`) is written last.

``<folder>`` is named by what identifies the source: an archive's md5, or for a folder the digest of its listing
(every image's path, size and modification time or ETag), so a changed source lands in a folder of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tarfile
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from cifarflow.data import folders
from cifarflow.data.folders import Entry, Layout, Listed
from cifarflow.data.ingest.decompress import UNREADABLE, Expanded, Truncated, bad_archive, too_big
from cifarflow.data.ingest.marker import (
    ArchiveInfo,
    ImageIndex,
    ImageRecord,
    IndexShard,
    parse_shard,
    shard_bytes,
)
from cifarflow.data.ingest.source import ArchiveSource, HashingReader, open_archive
from cifarflow.data.ingest.stream import archive_path, layout_of_root
from cifarflow.errors import InputError
from cifarflow.storage import TMP_INFIX, Store, join, redact, translate

log = logging.getLogger(__name__)

BATCH = 1000  # images per index shard (one completion record per batch, not per file)
GROUP_BYTES = 32 << 20  # bytes read and written per group (one concurrent request on buckets)
CACHED_NAMES = 1 << 20  # landed file names whose sizes are kept (bucket listings), ~100 MB at most
INDEX = "_index"
CIFAR_ROOTS = "no cifar-10-batches-py/, cifar-10-batches-bin/, cifar-100-python/ or cifar-100-binary/ folder"


class Digest:
    """An order-independent digest of a set of tuples (the sum of their sha256s), so that two listings of the
    same files in another order agree."""

    def __init__(self) -> None:
        self._sum = 0

    def add(self, *parts: object) -> None:
        line = "\0".join(str(p) for p in parts).encode("utf-8", "surrogateescape")
        self._sum = (self._sum + int.from_bytes(hashlib.sha256(line).digest(), "big")) % (1 << 256)

    def hexdigest(self) -> str:
        return f"{self._sum:064x}"


@dataclass
class Item:
    """An image to land; ``data`` is already read when the source is a stream (a tar)."""

    entry: Entry
    data: bytes | None = None


class ImageSource(Protocol):
    @property
    def shown(self) -> str: ...

    def listing(self) -> Iterable[Listed]: ...

    def items(self, layout: Layout) -> Iterator[Item]: ...

    def read(self, entries: list[Entry]) -> list[bytes]: ...

    def close(self) -> None: ...


@dataclass
class StoreFolder:
    """A local folder or a bucket prefix."""

    store: Store
    url: str
    shown: str

    def listing(self) -> Iterable[Listed]:
        return folders.store_listing(self.store, self.url)

    def items(self, layout: Layout) -> Iterator[Item]:
        return (Item(e) for e in folders.entries(self.listing(), layout))

    def close(self) -> None:
        pass

    def read(self, entries: list[Entry]) -> list[bytes]:
        with translate(self.url):
            fs, base = self.store.fs(self.url)
            paths = [base.rstrip("/") + "/" + e.path for e in entries]
            try:
                # One concurrent batch of GETs on buckets (no glob expansion of names holding "[" or "*").
                return [bytes(b) for b in fs.cat_ranges(paths, None, None, on_error="raise")]
            except FileNotFoundError as exc:
                raise InputError(
                    f"a file of {self.shown} disappeared while it was ingested ({exc})",
                    "leave the source unchanged while it is ingested, then rerun",
                ) from exc


@dataclass
class ZipArchive:
    """A local ``.zip`` (its central directory lists every member without reading them)."""

    path: str
    src: ArchiveSource
    zf: zipfile.ZipFile

    @property
    def shown(self) -> str:
        return self.src.shown

    def listing(self) -> Iterable[Listed]:
        return folders.archive_listing(self.zf.infolist())

    def items(self, layout: Layout) -> Iterator[Item]:
        return (Item(e) for e in folders.entries(self.listing(), layout))

    def close(self) -> None:
        self.zf.close()

    def read(self, entries: list[Entry]) -> list[bytes]:
        try:
            return [self.zf.read(e.path) for e in entries]
        except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
            # CRC errors, truncation, encrypted members, unknown compression
            raise InputError(
                f"the archive {self.shown} is corrupt or unreadable ({type(exc).__name__}: {str(exc)[:120]})",
                "fetch the archive again, or re-create it",
            ) from exc


@dataclass
class TarArchive:
    """A local ``.tar``/``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz``, read as a stream (twice: list, land)."""

    path: str
    src: ArchiveSource
    max_bytes: int

    @property
    def shown(self) -> str:
        return self.src.shown

    def _members(self) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
        try:
            with open(self.path, "rb", buffering=0) as raw:
                expanded = Expanded(raw, self.max_bytes)
                with tarfile.open(fileobj=expanded, mode="r|") as tar:
                    for info in tar:
                        yield tar, info
                expanded.drain()  # the gzip trailer (CRC-32, length) is checked at the end
        except UNREADABLE as exc:
            raise bad_archive(self.src, exc) from exc

    def listing(self) -> Iterable[Listed]:
        return folders.archive_listing(info for _, info in self._members())

    def items(self, layout: Layout) -> Iterator[Item]:
        for tar, info in self._members():
            (listed,) = folders.archive_listing([info])
            entry = layout.entry(listed)
            if entry is None:
                continue
            handle = tar.extractfile(info)
            assert handle is not None  # a regular file: links and folders are never entries
            try:
                data = handle.read()
                if len(data) != info.size:
                    raise Truncated(f"unexpected end of data in {info.name}")
            except UNREADABLE as exc:
                raise bad_archive(self.src, exc) from exc
            yield Item(entry, data)

    def read(self, entries: list[Entry]) -> list[bytes]:
        raise AssertionError("a tar's images are read with its stream")

    def close(self) -> None:
        pass


def open_image_archive(path: str, src: ArchiveSource, max_bytes: int) -> ImageSource:
    if zipfile.is_zipfile(path):
        try:
            return ZipArchive(path, src, zipfile.ZipFile(path))
        except (zipfile.BadZipFile, OSError) as exc:
            raise InputError(
                f"the archive {src.shown} is not a readable zip ({type(exc).__name__}: {str(exc)[:120]})",
                "fetch the archive again, or re-create it",
            ) from exc
    return TarArchive(path, src, max_bytes)


# -- pass one: the layout ------------------------------------------------------------------------------------


def survey(source: ImageSource, *, folder_source: bool) -> tuple[Layout, str]:
    """The layout and the listing's fingerprint (every image's path, size and version)."""
    found = folders.Survey()
    fingerprint = Digest()
    for listed in source.listing():
        found.add(listed)
        if not listed.path.endswith("/") and listed.path.lower().endswith(folders.IMAGE_EXTENSIONS):
            fingerprint.add(listed.path, listed.size, listed.version or "")
    try:
        return found.layout(), fingerprint.hexdigest()
    except folders.NoImages as exc:
        if folder_source:
            raise InputError(
                f"source {source.shown} is a folder, not an archive, and holds no class folders of images "
                f"({exc.problem})",
                "pass a CIFAR .tar.gz, or a folder laid out as <class>/<image> or train/<class>/<image>",
            ) from exc
        raise _not_cifar(source, exc) from exc
    except InputError as exc:
        if folder_source or isinstance(source, ZipArchive):
            raise
        raise _not_cifar(source, exc) from exc


def _not_cifar(source: ImageSource, exc: InputError) -> InputError:
    """A tar that is no CIFAR archive was read as an image folder: say both."""
    return InputError(
        f"the archive {source.shown} is not a CIFAR-10/100 archive ({CIFAR_ROOTS}), nor an image folder: "
        f"{exc.problem}",
        exc.fix,
    )


# -- pass two: landing ---------------------------------------------------------------------------------------


@dataclass
class ImageLanding:
    """One run's writes into ``DEST/raw/<folder>/``: what a previous run finished (its shards), what to undo."""

    store: Store
    folder_url: str
    shards: set[str] = field(default_factory=set)  # shard paths already there
    written: list[str] = field(default_factory=list)
    landed: int = 0  # images written by this run
    _listed: OrderedDict[str, dict[str, int]] = field(default_factory=OrderedDict)  # folder -> name -> size
    _cached: int = 0  # names held in _listed

    def load(self) -> None:
        prefix = join(self.folder_url, INDEX) + "/"
        self.shards = {INDEX + "/" + u[len(prefix) :] for u in self.store.list(join(self.folder_url, INDEX))}

    def previous(self, path: str) -> list[ImageRecord] | None:
        if path not in self.shards:
            return None
        with contextlib.suppress(Exception):  # a damaged shard just means "not done"
            return parse_shard(self.store.read_bytes(join(self.folder_url, path)))
        return None

    def size(self, path: str) -> int | None:
        """The landed file's size: a stat on a local disk; on a bucket, from one listing per folder, kept for
        the folders seen last (archives interleave classes), up to :data:`CACHED_NAMES` names."""
        if self.folder_url.startswith("file://"):
            try:
                return os.stat(join(self.folder_url, path)[len("file://") :]).st_size
            except FileNotFoundError:
                return None
        folder, _, name = path.rpartition("/")
        sizes = self._listed.get(folder)
        if sizes is None:
            sizes = self._list(folder)
            self._listed[folder] = sizes
            self._cached += len(sizes)
            while self._cached > CACHED_NAMES and len(self._listed) > 1:
                self._cached -= len(self._listed.popitem(last=False)[1])
        self._listed.move_to_end(folder)
        return sizes.get(name)

    def _list(self, folder: str) -> dict[str, int]:
        url = join(self.folder_url, folder) if folder else self.folder_url
        sizes: dict[str, int] = {}
        with translate(url):
            fs, base = self.store.fs(url)
            with contextlib.suppress(FileNotFoundError):
                for info in fs.ls(base, detail=True, refresh=True):
                    if info.get("type") == "file":
                        sizes[str(info["name"]).rstrip("/").rsplit("/", 1)[-1]] = int(info["size"])
        return sizes

    def write(self, files: dict[str, bytes]) -> None:
        urls = {join(self.folder_url, path): data for path, data in files.items()}
        self.written.extend(urls)
        if self.folder_url.startswith("file://"):
            for url, data in urls.items():
                self.store.write_bytes(url, data)
        else:
            with translate(self.folder_url):
                fs, _ = self.store.fs(self.folder_url)
                fs.pipe({fs._strip_protocol(u): d for u, d in urls.items()})  # concurrent PUTs
        self.landed += len(files)
        for path, data in files.items():  # keep the cached listings true
            folder, _, name = path.rpartition("/")
            if folder in self._listed:
                self._listed[folder][name] = len(data)

    def write_shard(self, path: str, data: bytes) -> None:
        url = join(self.folder_url, path)
        self.written.append(url)
        self.store.write_bytes(url, data)

    def undo(self) -> None:
        for url in reversed(self.written):
            with contextlib.suppress(Exception):
                self.store.remove(url)
        with contextlib.suppress(Exception):
            if not self.shards:  # this run created everything in the folder
                self.store.remove(self.folder_url, recursive=True)

    def remove_stale_tmp(self) -> None:
        """Local atomic writes cut short by SIGKILL leave ``<name>.tmp-<uuid>``; the commit removes them."""
        if not self.folder_url.startswith("file://"):
            return
        for folder, _, names in os.walk(self.folder_url[len("file://") :]):
            for name in names:
                if TMP_INFIX in name:
                    os.remove(os.path.join(folder, name))


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


def intact(store: Store, raw_url: str, index: ImageIndex) -> bool:
    """Whether every indexed image is still landed with its recorded size (one listing per folder)."""
    landing = ImageLanding(store, join(raw_url, index.folder))
    try:
        for records in index.batches(store, raw_url):
            for rec in records:
                if landing.size(rec.path) != rec.bytes:
                    log.warning("%s is missing or has changed: landing the images again", rec.path)
                    return False
    except (InputError, FileNotFoundError):
        log.warning(
            "an index shard of %s is missing or has changed: landing the images again", redact(raw_url)
        )
        return False
    return True


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


# -- which kind of archive -----------------------------------------------------------------------------------

SNIFF_MEMBERS = 64  # CIFAR archives name their folder first; a few junk members before it are tolerated


def sniff(src: ArchiveSource, store: Store, max_bytes: int) -> Literal["cifar", "images"]:
    """Whether an archive is a CIFAR archive or an image folder, from its first bytes and members.

    A zip is an image folder (CIFAR ships no zips); a tar is CIFAR when one of its first members sits in a
    CIFAR root folder. Anything unreadable is left to the CIFAR path, whose error lines say what is wrong.
    """
    with open_archive(src, store) as (stream, _):
        buffered = io.BufferedReader(HashingReader(stream))
        try:
            if buffered.peek(4)[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
                return "images"
            seen = 0
            expanded = Expanded(buffered, max_bytes)  # type: ignore[arg-type]
            with tarfile.open(fileobj=expanded, mode="r|") as tar:
                for info in tar:
                    root = archive_path(info.name).partition("/")[0]
                    if layout_of_root(root) is not None:
                        return "cifar"
                    seen += 1
                    if seen >= SNIFF_MEMBERS:
                        break
        except (*UNREADABLE, InputError, OSError):
            return "cifar"
    return "images" if seen else "cifar"
