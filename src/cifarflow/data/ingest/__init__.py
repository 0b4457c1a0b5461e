"""Ingest: stream a CIFAR archive, or a class-per-folder image dataset, into a bucket; checked, committed.

Image folders (a folder, a bucket prefix, or a ``.tar``/``.tar.gz``/``.zip`` that is not a CIFAR archive) are
:mod:`.folder`'s; read their marker with :func:`read_raw`. What follows is the CIFAR path.

Layout under ``DEST/raw/``::

    DEST/raw/<id[:16]>/data_batch_1 ...     the archive's data and meta members, byte for byte
    DEST/raw/<id[:16]>/_hashes/<member>     each data member's content index (cifarflow.data.content_index)
    DEST/raw/<id[:16]>/_done/<member>.json  per-member completion records (what a crashed run already landed)
    DEST/raw/_ingest.json                   the commit: layout, archive checksums, members; written last

``<id>`` is the checksum known when landing starts: the md5 the archive is checked against (``--md5``, a named
dataset's published sum), else its sha256. The archive is read once, as a stream (never whole in memory),
hashing on the way: its sha256, and its md5 only when there is one to check (md5 is the slower of the two,
~2.4 CPU-s a 1.7 GB archive). Without a known md5 the sha256 comes from a pre-pass, or, for a local archive
landing on a local disk for the first time, from the landing pass itself: the members land under
``_landing-<key>/``, renamed to the sha256 after that pass, instead of the archive being read twice. Every data
member is decoded with :mod:`cifarflow.data.cifar`
before it lands, so unsafe pickles, wrong image sizes and labels out of range fail here, in seconds, rather
than inside a Spark job, and each image's label and content hash go to its content index. Readers trust only
``_ingest.json``.

- Idempotent: when ``_ingest.json`` already records the same archive (the md5 to check, a bucket object's md5
  or version, else the sha256 of a pre-pass), nothing is written.
- Resumable: a rerun after a crash skips members whose completion record matches what it streams.
- Atomic: bad input removes what the run wrote; the marker is written only after the archive's checksums
  check out.

The modules: :mod:`.marker` (the commit marker and its reader), :mod:`.source` (resolving, downloading and
hashing the archive), :mod:`.decompress` (bounded, checked decompression), :mod:`.stream` (the walk over the
tar stream and each member's validation), :mod:`.land` (one run's writes and local spools), :mod:`.folder` (image
folders); the step is here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from cifarflow.data import cifar, content_index
from cifarflow.data.allocator import freed_memory_kept
from cifarflow.data.ingest import folder as images
from cifarflow.data.ingest.decompress import DEFAULT_MAX_BYTES, UNREADABLE, bad_archive
from cifarflow.data.ingest.land import Landing, remove_stale_spools, spool_folder
from cifarflow.data.ingest.marker import (
    MARKER,
    PROVISIONAL,
    ArchiveInfo,
    ImageIndex,
    ImageRecord,
    IndexShard,
    LandedMember,
    MemberRole,
    RawIndex,
    committed,
    load_raw,
    read_raw,
)
from cifarflow.data.ingest.source import (
    ArchiveSource,
    HashingReader,
    SourceFailed,
    hash_stream,
    identify,
    open_archive,
    resolve_source,
    spool,
)
from cifarflow.data.ingest.stream import stream_members
from cifarflow.errors import InputError, StorageError
from cifarflow.progress import progress
from cifarflow.storage import Store, join, normalize, redact

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MARKER",
    "ArchiveInfo",
    "ImageIndex",
    "ImageRecord",
    "IndexShard",
    "IngestResult",
    "LandedMember",
    "MemberRole",
    "RawIndex",
    "ingest",
    "load_raw",
    "read_raw",
]

log = logging.getLogger(__name__)


Index = RawIndex | ImageIndex


@dataclass
class IngestResult:
    raw_url: str
    identity: str  # the archive's sha256, or an image folder's listing fingerprint
    layout: str  # a CIFAR layout, or images-split / images-flat
    reused: bool
    members: int = 0  # members (CIFAR) or images
    bytes: int = 0
    written: int = 0  # members written by this run (0 when reused or everything was already landed)


@dataclass(frozen=True)
class Checksums:
    """What is known of the archive before it is read: the md5 to check it against, the sha256 of a pre-pass."""

    md5: str | None = None
    sha256: str | None = None

    @property
    def name(self) -> str | None:
        """What names the landed folder (module docstring); ``None``: nothing yet (a provisional folder)."""
        return self.md5 or self.sha256

    def folder(self, read: ArchiveInfo) -> str:
        """The landed folder's name once the archive has been read (:meth:`check`)."""
        return (self.name or read.sha256)[:16]

    def matches(self, held: ArchiveInfo) -> bool:
        """Whether ``held`` is this archive, by a checksum both know."""
        return (self.md5 is not None and self.md5 == held.md5) or (
            self.sha256 is not None and self.sha256 == held.sha256
        )

    def check(self, src: ArchiveSource, reader: HashingReader) -> ArchiveInfo:
        """What was read, checked against what was known; bad input raises."""
        got = ArchiveInfo(
            md5=reader.md5.hexdigest() if self.md5 is not None else None,
            sha256=reader.sha256.hexdigest(),
            bytes=reader.bytes,
            source=src.shown,
            version=src.version,
        )
        if self.md5 is not None and got.md5 != self.md5:
            raise InputError(
                f"md5 mismatch for {src.shown}: expected {self.md5}, got {got.md5} (corrupt, or another archive)",
                "fetch the archive again, or pass the right --md5",
            )
        if self.sha256 is not None and got.sha256 != self.sha256:
            raise InputError(
                f"{src.shown} changed while it was read (sha256 {self.sha256[:16]}... first, then "
                f"{got.sha256[:16]}...)",
                "rerun once nothing writes to the archive",
            )
        return got

    def reader(self, stream: IO[bytes], tick: Callable[[int], None]) -> HashingReader:
        return HashingReader(stream, tick, md5=self.md5 is not None)


def ingest(
    source: str, dest: str, *, store: Store, md5: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> IngestResult:
    """Stream ``source`` (cifar10, cifar100, an http(s) URL, a bucket URL or a path; an archive, a folder or a
    prefix) into ``DEST/raw/``."""
    with freed_memory_kept():  # each member's buffers reuse the last one's memory (allocator.py)
        return _ingest(source, dest, store, md5, max_bytes)


def _ingest(source: str, dest: str, store: Store, md5: str | None, max_bytes: int) -> IngestResult:
    if max_bytes < 1:
        raise InputError(f"--max-bytes {max_bytes} is not a size", "pass a positive number of bytes")
    src = resolve_source(source, md5)
    dest = normalize(dest).rstrip("/")
    raw_url = join(dest, "raw")
    store.check_folder(dest, "--dest")
    store.check_reachable(dest)
    previous = committed(store, raw_url)
    if src.kind == "store" and store.is_dir(src.url):
        return _ingest_folder(src, raw_url, store, previous, max_bytes)
    fresh = previous is None  # no commit here yet: nothing to reuse or resume by a checksum's folder
    if previous is not None and not _intact(store, raw_url, previous):
        previous = None  # nothing to reuse: land again (the members still there are skipped)
    held = _archive_of(previous)

    remove_stale_spools()
    with spool_folder() as tmpdir:
        sums = Checksums(md5=src.md5)
        if sums.md5 is None:
            known, version = identify(src, store)
            src = dataclasses.replace(src, version=version)
            if (
                previous is not None
                and held is not None
                and (
                    (known is not None and known == held.md5)
                    or (version and (held.source, held.version) == (src.shown, version))
                )
            ):
                return _reused(raw_url, previous)
            if fresh and _one_pass(src, raw_url, store, max_bytes):
                # Nothing to reuse, and a local folder renames for free: land under a provisional name and
                # name the folder by the sha256 the landing pass computes (one read of the archive, not two).
                return _land(src, sums, raw_url, store, tmpdir, max_bytes=max_bytes)
            # The folder is named by the sha256, so it must be known before anything lands: hash a local file
            # in place; spool anything remote to local disk once (one download, not two).
            src, sums = _prepare_unknown(src, store, tmpdir)
        if previous is not None and held is not None and sums.matches(held):
            return _reused(raw_url, previous)
        if previous is not None:
            log.info("%s held %s; replacing it with %s", redact(raw_url), _identity(previous), sums.name)
        if src.dataset is None and images.sniff(src, store, max_bytes) == "images":
            return _land_image_archive(src, sums, raw_url, store, tmpdir, max_bytes=max_bytes)
        return _land(src, sums, raw_url, store, tmpdir, max_bytes=max_bytes)


def _archive_of(index: Index | None) -> ArchiveInfo | None:
    return index.archive if index is not None else None


def _identity(index: Index) -> str:
    """What the commit holds: the archive's sha256, or an image folder's listing fingerprint."""
    if index.archive is not None:
        return index.archive.sha256
    assert isinstance(index, ImageIndex) and index.fingerprint is not None
    return index.fingerprint


def _reused(raw_url: str, index: Index) -> IngestResult:
    result = _result(raw_url, index, reused=True)
    log.info("%s already holds %s (%s): nothing to do", redact(raw_url), result.identity, result.layout)
    return result


def _result(raw_url: str, index: Index, *, reused: bool, written: int = 0) -> IngestResult:
    if isinstance(index, ImageIndex):
        layout = f"images-{index.layout}"
        return IngestResult(raw_url, _identity(index), layout, reused, index.images, index.bytes, written)
    total = sum(m.bytes for m in index.members)
    return IngestResult(
        raw_url, index.archive.sha256, index.layout, reused, len(index.members), total, written
    )


def _intact(store: Store, raw_url: str, index: Index) -> bool:
    """Whether every committed member (and content index) is still there with its recorded size (one deleted by
    hand is re-landed)."""
    if isinstance(index, ImageIndex):
        return images.intact(store, raw_url, index)
    for member in index.members:
        files = [(index.url(raw_url, member), member.bytes)]
        if (hashes := index.hashes_url(raw_url, member)) is not None:
            files.append((hashes, member.rows * content_index.RECORD_BYTES))
        for url, size in files:
            try:
                if store.size(url) == size:
                    continue
            except FileNotFoundError:
                pass
            log.warning("%s is missing or has changed: landing the archive's members again", redact(url))
            return False
    return True


def _one_pass(src: ArchiveSource, raw_url: str, store: Store, max_bytes: int) -> bool:
    """A local CIFAR archive landing on a local disk (an image archive is listed before it lands)."""
    local = src.kind == "store" and src.url.startswith("file://") and raw_url.startswith("file://")
    return local and images.sniff(src, store, max_bytes) == "cifar"


def _provisional(src: ArchiveSource) -> str:
    """The landing folder's name until the sha256 is known: the same file (path, size, mtime) resumes in it."""
    stat = os.stat(src.url[len("file://") :])
    key = f"{src.url}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    return f"{PROVISIONAL}{hashlib.sha256(key).hexdigest()[:16]}"


def _prepare_unknown(src: ArchiveSource, store: Store, tmpdir: str) -> tuple[ArchiveSource, Checksums]:
    """The archive's sha256 before it lands: a local file hashed in place, anything else spooled to local disk
    (one download, not two) and landed from there."""
    if src.kind == "store" and src.url.startswith("file://"):
        with (
            open_archive(src, store) as (stream, size),
            _bytes_progress(f"hash {os.path.basename(src.url)}", size) as tick,
        ):
            digest, _ = hash_stream(stream, tick)
        return src, Checksums(sha256=digest)
    path = os.path.join(tmpdir, "archive")
    with open_archive(src, store) as (stream, size), _bytes_progress("download", size) as tick:
        digest, copied = spool(stream, path, tick)
    log.info("downloaded %s (%d bytes) to a local spool", src.shown, copied)
    return dataclasses.replace(src, kind="store", url="file://" + path), Checksums(sha256=digest)


@contextlib.contextmanager
def _bytes_progress(what: str, total: int | None) -> Iterator[Callable[[int], None]]:
    with progress() as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _land(
    src: ArchiveSource, sums: Checksums, raw_url: str, store: Store, tmpdir: str, *, max_bytes: int
) -> IngestResult:
    """Land the archive's members under the folder ``sums`` names, or when nothing names it yet
    (:func:`_one_pass`) under a provisional folder renamed to the sha256 once the landing pass has computed it."""
    folder = sums.name[:16] if sums.name is not None else _provisional(src)
    started = time.perf_counter()
    landing: Landing | None = None

    def landing_for(layout: cifar.Layout) -> Landing:
        nonlocal landing
        landing = Landing(store, join(raw_url, folder))
        landing.load_done()
        return landing

    log.info("ingesting %s into %s", src.shown, redact(raw_url))
    try:
        with open_archive(src, store) as (stream, size), _bytes_progress("ingest", size) as tick:
            reader = sums.reader(stream, tick)
            try:
                layout, members = stream_members(reader, landing_for, tmpdir, max_bytes)
                reader.drain()
            except SourceFailed as exc:
                raise StorageError(
                    f"reading {src.shown} failed mid-way ({exc.problem})",
                    "check the network or bucket and rerun (it resumes)",
                ) from exc
            except UNREADABLE as exc:
                raise bad_archive(src, exc) from exc
        archive = sums.check(src, reader)
        assert landing is not None
        landing.settle()  # every member is in place before the commit
    except InputError:
        # Bad input: leave nothing behind. Crashes and storage failures keep their work for the rerun.
        if landing is not None:
            landing.undo()
        raise
    except BaseException:
        if landing is not None:
            with contextlib.suppress(BaseException):
                landing.settle()  # no upload outlives the run (the first failure is the one raised)
        raise

    assert landing is not None
    if sums.name is None:
        folder = sums.folder(archive)
        # Into what a crashed or concurrent run of the same archive left there (the same bytes), file by file.
        store.move_folder(landing.folder_url, join(raw_url, folder))
        landing.folder_url = join(raw_url, folder)
    index = RawIndex(layout=layout.name, archive=archive, folder=folder, members=members)
    store.write_text(join(raw_url, MARKER), index.to_json())
    landing.remove_stale_tmp()
    return _committed(raw_url, index, landing.landed, time.perf_counter() - started)


def _committed(raw_url: str, index: Index, written: int, seconds: float) -> IngestResult:
    result = _result(raw_url, index, reused=False, written=written)
    log.info(
        "committed %s: %s, %d %s, %.1f MB in %.1f s (%d written, %d already there)",
        redact(join(raw_url, MARKER)),
        result.layout,
        result.members,
        "images" if isinstance(index, ImageIndex) else "members",
        result.bytes / 1e6,
        seconds,
        written,
        result.members - written,
    )
    return result


# -- image folders -------------------------------------------------------------------------------------------


def _ingest_folder(
    src: ArchiveSource, raw_url: str, store: Store, previous: Index | None, max_bytes: int
) -> IngestResult:
    """A local folder or a bucket prefix of class folders."""
    source = images.StoreFolder(store, src.url, src.shown)
    layout, fingerprint = images.survey(source, folder_source=True)
    _refuse_nested(src.url, raw_url)
    if (
        isinstance(previous, ImageIndex)
        and previous.fingerprint == fingerprint
        and images.intact(store, raw_url, previous)
    ):
        return _reused(raw_url, previous)
    return _land_images(
        source, layout, raw_url, store, max_bytes, folder=fingerprint[:16], fingerprint=fingerprint
    )


def _refuse_nested(source_url: str, raw_url: str) -> None:
    """A destination inside the source folder would be listed as part of the dataset on the next run."""
    src, dest = (
        os.path.realpath(u[len("file://") :]) if u.startswith("file://") else u for u in (source_url, raw_url)
    )
    if dest == src or dest.startswith(src.rstrip("/") + "/"):
        raise InputError(
            f"--dest {redact(raw_url)} lies inside --source {redact(source_url)}",
            "choose a --dest outside the source folder",
        )


def _land_image_archive(
    src: ArchiveSource, sums: Checksums, raw_url: str, store: Store, tmpdir: str, *, max_bytes: int
) -> IngestResult:
    """A tar or zip of class folders: hashed (or downloaded) once, listed, then landed."""
    if src.kind == "store" and src.url.startswith("file://"):
        path = src.url[len("file://") :]
        with open_archive(src, store) as (stream, size), _bytes_progress("hash", size) as tick:
            reader = sums.reader(stream, tick)
            reader.drain()
    else:
        path = os.path.join(tmpdir, "archive")
        with open_archive(src, store) as (stream, size), _bytes_progress("download", size) as tick:
            reader = sums.reader(stream, tick)
            with open(path, "wb") as out:
                buf = bytearray(1 << 20)
                while n := reader.readinto(buf):
                    out.write(memoryview(buf)[:n])
    info = sums.check(src, reader)
    folder = sums.folder(info)
    source = images.open_image_archive(path, src, max_bytes)
    try:
        layout, _ = images.survey(source, folder_source=False)
        return _land_images(source, layout, raw_url, store, max_bytes, folder=folder, archive=info)
    finally:
        source.close()


def _land_images(
    source: images.ImageSource,
    layout: images.Layout,
    raw_url: str,
    store: Store,
    max_bytes: int,
    *,
    folder: str,
    archive: ArchiveInfo | None = None,
    fingerprint: str | None = None,
) -> IngestResult:
    started = time.perf_counter()
    landing = images.ImageLanding(store, join(raw_url, folder))
    landing.load()
    log.info("ingesting %s into %s", source.shown, redact(raw_url))
    try:
        landed = images.land(source, layout, landing, max_bytes)
    except InputError:
        landing.undo()  # bad input leaves nothing; crashes and storage failures keep their work
        raise
    index = images.build_index(
        layout, landed, source=source.shown, folder=folder, archive=archive, fingerprint=fingerprint
    )
    store.write_text(join(raw_url, MARKER), index.to_json())
    landing.remove_stale_tmp()
    return _committed(raw_url, index, landing.landed, time.perf_counter() - started)
