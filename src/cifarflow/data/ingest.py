"""Ingest: stream a CIFAR archive into a bucket as raw member files, checked, committed by a marker.

Layout under ``DEST/raw/``::

    DEST/raw/<md5[:16]>/data_batch_1 ...     the archive's data and meta members, byte for byte
    DEST/raw/<md5[:16]>/_done/<member>.json  per-member completion records (what a crashed run already landed)
    DEST/raw/_ingest.json                    the commit: layout, archive checksums, members; written last

The archive is read once, as a stream (never whole in memory), hashing md5 and sha256 on the way. Every data
member is decoded with :mod:`cifarflow.data.cifar` before it lands, so unsafe pickles, wrong image sizes and
labels out of range fail here, in seconds, rather than inside a Spark job. Readers trust only
``_ingest.json``.

- Idempotent: when ``_ingest.json`` already records the same archive (by md5), nothing is read or written.
- Resumable: a rerun after a crash skips members whose completion record matches what it streams.
- Atomic: bad input removes what the run wrote; the marker is written only after the archive's md5 checks out.
"""

from __future__ import annotations

import base64
import bz2
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from cifarflow import __version__
from cifarflow.data import cifar, manifest
from cifarflow.errors import InputError, StorageError
from cifarflow.storage import TMP_INFIX, Store, basename, join, normalize, redact, translate

log = logging.getLogger(__name__)

FORMAT = "cifarflow.raw/v1"
MARKER = "_ingest.json"
DONE = "_done"

# The official archives and their published md5 sums. CIFARFLOW_CIFAR_MIRROR replaces the base URL (an
# artifact proxy inside a firewall, or a test server).
OFFICIAL_BASE = "https://www.cs.toronto.edu/~kriz/"
OFFICIAL = {
    "cifar10": ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}
# Fail fast when there is no network; the same limit bounds each read, so a stalled download does not hang.
HTTP_TIMEOUT = 15.0
CHUNK = 1 << 20  # bytes per read from the source
RECORDS_PER_CHUNK = 2048  # binary records validated per step (~6 MB)
# The most bytes an archive may expand to (all members, headers and padding): 23x the official CIFAR-10/100
# (184/185 MB), and it holds the 10x synthetic set (1.69 GB). A pickled member is held in memory whole, so this
# also bounds memory. `--max-bytes` raises it for larger sets.
DEFAULT_MAX_BYTES = 4 << 30
SPOOL_PREFIX = "cifarflow-ingest-"  # + "<pid>-": a spool left by a killed run is removed by the next run

# Kept besides the layout's meta file: CIFAR-100 binary ships its superclass names separately.
EXTRA_META = {"cifar100-binary": {"coarse_label_names.txt"}}


# -- the commit marker ---------------------------------------------------------------------------------------


Kind = Literal["train", "test", "meta"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArchiveInfo(_Model):
    md5: str
    sha256: str
    bytes: int
    source: str
    version: str | None = None  # the source object's size + ETag, when it came from a bucket


class RawMember(_Model):
    name: str  # path inside the archive
    path: str  # path under the folder (relative to the layout's root)
    split: Kind
    bytes: int
    sha256: str
    rows: int = 0  # images (0 for meta)


class RawIndex(_Model):
    """``DEST/raw/_ingest.json``: what preprocess reads."""

    format: Literal["cifarflow.raw/v1"] = "cifarflow.raw/v1"
    layout: str
    archive: ArchiveInfo
    folder: str  # relative to DEST/raw
    members: list[RawMember]
    code_version: str = __version__

    @property
    def layout_info(self) -> cifar.Layout:
        return cifar.LAYOUTS[self.layout]

    def split(self, split: str) -> list[RawMember]:
        return [m for m in self.members if m.split == split]

    def url(self, raw_url: str, member: RawMember) -> str:
        return join(raw_url, self.folder, member.path)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def load_raw(store: Store, raw_url: str) -> RawIndex:
    """Read ``RAW/_ingest.json``; a raw folder without it was never committed and is refused."""
    raw_url = raw_url.rstrip("/")
    if raw_url.endswith("/" + MARKER):
        raw_url = raw_url[: -len(MARKER) - 1]
    marker = join(raw_url, MARKER)
    if not store.exists(marker):
        if store.list(raw_url):
            raise InputError(
                f"{redact(raw_url)} holds files but no {MARKER}: the ingest never finished",
                "rerun the same `cifarflow ingest` (it resumes where it stopped)",
            )
        raise InputError(
            f"no ingested archive at {redact(raw_url)} (no {MARKER})",
            "run `cifarflow ingest --source ... --dest DEST` first and pass --raw DEST/raw",
        )
    index = manifest.read_model(
        store,
        marker,
        RawIndex,
        what="cifarflow ingest marker",
        fix="pass the DEST/raw folder written by `cifarflow ingest`",
    )
    if index.layout not in cifar.LAYOUTS:
        raise InputError(f"{redact(marker)}: unknown layout {index.layout!r}", "re-run `cifarflow ingest`")
    return index


# -- sources -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    kind: Literal["http", "store"]
    url: str
    shown: str  # for messages and the marker (credentials removed)
    md5: str | None  # expected md5, when known up front
    dataset: str | None = None  # cifar10/cifar100 when named
    version: str | None = None  # a bucket object's size + ETag, recorded so reruns can skip reading it


def resolve_source(source: str, md5: str | None) -> Source:
    if md5 is not None:
        md5 = md5.strip().lower()
        if len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5):
            raise InputError(f"--md5 {md5!r} is not an md5 sum", "pass the 32 hex digits the publisher lists")
    name = source.strip().lower()
    if not name:
        raise InputError(
            "--source is empty", "pass cifar10, cifar100, an http(s) URL, a bucket URL or a path"
        )
    if name in OFFICIAL:
        filename, known = OFFICIAL[name]
        base = os.environ.get("CIFARFLOW_CIFAR_MIRROR") or OFFICIAL_BASE
        url = base.rstrip("/") + "/" + filename
        return Source("http", url, redact(url), md5 or known, dataset=name)
    if source.startswith(("http://", "https://")):
        return Source("http", source, redact(source), md5)
    url = normalize(source)
    return Source("store", url, redact(url), md5)


def _download_error(source: Source, reason: str) -> StorageError:
    if source.dataset:
        return StorageError(
            f"cannot download {source.dataset} from {source.shown} ({reason}; no network?)",
            "pass --source PATH to a local copy, or make one with `cifarflow synth --out DIR`",
        )
    return StorageError(
        f"cannot download {source.shown} ({reason})",
        "check the URL and the network, or pass --source PATH to a local copy",
    )


@contextlib.contextmanager
def open_source(source: Source, store: Store) -> Iterator[tuple[IO[bytes], int | None]]:
    """The archive as a byte stream, with its size when the server or store says it."""
    if source.kind == "http":
        request = urllib.request.Request(source.url, headers={"User-Agent": f"cifarflow/{__version__}"})
        try:
            response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT)
        except urllib.error.HTTPError as exc:
            raise _download_error(source, f"HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _download_error(source, str(reason) or type(exc).__name__) from exc
        with response:
            length = response.headers.get("Content-Length")
            yield response, int(length) if length and length.isdigit() else None
        return
    try:
        size = store.size(source.url)
    except FileNotFoundError as exc:
        raise InputError(
            f"source {source.shown} does not exist", "check --source (a path, URL or cifar10)"
        ) from exc
    if store.is_dir(source.url):
        raise InputError(
            f"source {source.shown} is a folder, not an archive",
            "pass the .tar.gz itself, e.g. --source DIR/cifar-10-python.tar.gz",
        )
    with store.open(source.url, "rb") as handle:
        yield handle, size


def _identify(source: Source, store: Store) -> tuple[str | None, str | None]:
    """What a bucket already knows about an object, without reading it: ``(md5, version)``.

    ``md5`` comes from GCS's md5Hash or the ETag of a single-part S3 upload; ``version`` (size + ETag) changes
    whenever the object does, which covers multipart uploads, whose ETag is not an md5.
    """
    if source.kind != "store" or source.url.startswith("file://"):
        return None, None
    with contextlib.suppress(Exception):
        fs, path = store.fs(source.url)
        info = fs.info(path)
        etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
        version = f"{info.get('size')}:{etag}" if etag else None
        if info.get("md5Hash"):
            return base64.b64decode(info["md5Hash"]).hex(), version
        if len(etag) == 32 and "-" not in etag:
            return etag.lower(), version
        return None, version
    return None, None


class _SourceFailed(StorageError):
    """Reading the source itself failed (network, bucket), as opposed to its bytes being bad."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, "check the network or bucket and rerun")


class _HashingReader(io.RawIOBase):
    """Counts and hashes every byte read through it; source read failures are tagged for the error message."""

    def __init__(self, raw: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> None:
        self._raw = raw
        self._on_bytes = on_bytes
        self.md5 = hashlib.md5()
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self._raw.read(len(b))
        except Exception as exc:
            raise _SourceFailed(f"{type(exc).__name__}: {exc}") from exc
        n = len(data)
        b[:n] = data
        if n:
            self.md5.update(data)
            self.sha256.update(data)
            self.bytes += n
            if self._on_bytes is not None:
                self._on_bytes(n)
        return n

    def drain(self) -> None:
        """Read to the end: the checksums must cover what follows the tar's end blocks (gzip trailer)."""
        buf = bytearray(CHUNK)
        while self.readinto(buf):
            pass


def hash_stream(stream: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
    reader = _HashingReader(stream, on_bytes)
    reader.drain()
    return reader.md5.hexdigest(), reader.bytes


# -- landing members -----------------------------------------------------------------------------------------


@dataclass
class IngestResult:
    raw_url: str
    archive_md5: str
    layout: str
    reused: bool
    members: int = 0
    bytes: int = 0
    written: int = 0  # members written by this run (0 when reused or everything was already landed)


@dataclass
class _Landing:
    """One run's writes into ``DEST/raw/<folder>/``: what to skip (resume) and what to undo (bad input)."""

    store: Store
    folder_url: str
    done: dict[str, RawMember] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    landed: int = 0

    def load_done(self) -> None:
        for url in self.store.list(join(self.folder_url, DONE)):
            with contextlib.suppress(Exception):  # a half-written record just means "not done"
                rec = RawMember.model_validate_json(self.store.read_bytes(url))
                self.done[rec.path] = rec

    def already(self, member: RawMember) -> bool:
        rec = self.done.get(member.path)
        if rec is None or rec.sha256 != member.sha256 or rec.bytes != member.bytes:
            return False
        try:
            return self.store.size(join(self.folder_url, member.path)) == member.bytes
        except FileNotFoundError:
            return False

    def land(self, member: RawMember, data: bytes | None = None, local_path: str | None = None) -> None:
        """Write a validated member, then its completion record (a crash between the two costs a redo)."""
        if self.already(member):
            log.debug("%s already landed", member.path)
            return
        url = join(self.folder_url, member.path)
        self.written.append(url)
        if local_path is not None:
            self.store.put_file(local_path, url)
        else:
            self.store.write_bytes(url, data or b"")
        record = join(self.folder_url, DONE, member.path + ".json")
        self.written.append(record)
        self.store.write_text(record, member.model_dump_json())
        self.landed += 1

    def remove_stale_tmp(self) -> None:
        """Local atomic writes cut short by SIGKILL leave ``<member>.tmp-<uuid>``; the commit removes them."""
        if not self.folder_url.startswith("file://"):
            return
        for folder in (self.folder_url, join(self.folder_url, DONE)):
            for url in self.store.list(folder):
                if TMP_INFIX in basename(url):
                    self.store.remove(url)

    def undo(self) -> None:
        for url in reversed(self.written):
            with contextlib.suppress(Exception):
                self.store.remove(url)
        # Drop the folder too when this run created everything in it.
        with contextlib.suppress(Exception):
            if not self.done:
                self.store.remove(self.folder_url, recursive=True)


def _member_kind(layout: cifar.Layout, rel: str) -> Kind | None:
    if not rel or "/" in rel or rel in (".", ".."):
        return (
            None  # CIFAR members sit directly under the root; "data_batch_1/../../x" must not land anywhere
        )
    split = layout.split_of(rel)
    if split is not None:
        return split
    if rel == layout.meta or rel in EXTRA_META.get(layout.name, set()):
        return "meta"
    return None


def _layout_of_root(root: str) -> cifar.Layout | None:
    return next((lay for lay in cifar.LAYOUTS.values() if lay.root == root), None)


@dataclass
class _Entry:
    """A tar member being landed."""

    info: tarfile.TarInfo
    handle: IO[bytes]
    rel: str  # path under the layout's root
    kind: Kind

    @property
    def shown(self) -> str:
        return _shown(self.info.name)


def _shown(name: str) -> str:
    """A member name fit for a one-line message: control characters escaped, long names shortened."""
    text = name.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 100 else f"{text[:60]}...{text[-20:]} ({len(name)} characters)"


class _Truncated(tarfile.ReadError):
    """The archive ended inside a member."""


class _Corrupt(tarfile.ReadError):
    """The compressed stream failed its own check (CRC, length, invalid data)."""


class _Expanded(io.RawIOBase):
    """The archive's decompressed bytes, counted against ``limit`` (a decompression bomb stops here).

    Python's tarfile stream mode never checks the gzip trailer; :class:`gzip.GzipFile` does (CRC-32 and length)
    once it is read to the end, and so do the bz2 and xz readers.
    """

    def __init__(self, raw: io.RawIOBase, limit: int) -> None:
        self._inner = _decompressor(raw)
        self.limit = limit
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self._inner.read(len(b))
        except (OSError, zlib.error, lzma.LZMAError) as exc:  # gzip.BadGzipFile is an OSError
            raise _Corrupt(f"{type(exc).__name__}: {exc}") from exc
        n = len(data)
        self.bytes += n
        if self.bytes > self.limit:
            raise _too_big(f"the archive expands to more than {self.limit} bytes", self.limit)
        b[:n] = data
        return n

    def drain(self) -> None:
        """Read to the end, so the compressed stream's trailer is checked."""
        buf = bytearray(CHUNK)
        while self.readinto(buf):
            pass


def _decompressor(raw: io.RawIOBase) -> io.BufferedIOBase:
    buffered = io.BufferedReader(raw, CHUNK)
    head = buffered.peek(6)[:6]
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=buffered, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(buffered)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(buffered)
    return buffered


def _too_big(what: str, limit: int) -> InputError:
    return InputError(
        f"{what}, over the --max-bytes limit of {limit} (a decompression bomb, or a very large dataset)",
        "if the archive is trusted, pass a larger --max-bytes",
    )


def _land_whole(landing: _Landing, layout: cifar.Layout, entry: _Entry) -> RawMember:
    """Pickled batches and meta files: read whole (one batch is ~31 MB), validate, write."""
    data = entry.handle.read()
    if len(data) != entry.info.size:
        raise _Truncated(f"unexpected end of data in {entry.shown}")
    rows = 0
    if entry.rel == layout.meta:
        cifar.label_names(data, layout)
    elif entry.kind != "meta":
        rows = len(cifar.decode_python(data, layout, entry.shown))
    digest = hashlib.sha256(data).hexdigest()
    member = RawMember(
        name=entry.info.name, path=entry.rel, split=entry.kind, bytes=len(data), sha256=digest, rows=rows
    )
    landing.land(member, data=data)
    return member


def _land_records(landing: _Landing, layout: cifar.Layout, entry: _Entry, tmpdir: str) -> RawMember:
    """Binary batches: validate chunk by chunk into a local spool, then one upload (memory: one chunk)."""
    size = layout.record_bytes
    sha = hashlib.sha256()
    rows = total = 0
    spool = os.path.join(tmpdir, "member")
    with translate("file://" + spool), open(spool, "wb") as out:  # TMPDIR full: one line, not OSError
        pending = b""
        while chunk := entry.handle.read(size * RECORDS_PER_CHUNK):
            sha.update(chunk)
            out.write(chunk)
            total += len(chunk)
            pending += chunk
            whole = len(pending) - len(pending) % size
            if whole:
                rows += len(cifar.decode_binary(memoryview(pending)[:whole], layout, entry.shown, rows))
                pending = pending[whole:]
    if total != entry.info.size:
        raise _Truncated(f"unexpected end of data in {entry.shown}")
    if pending or rows == 0:
        cifar.decode_binary(pending, layout, entry.shown)  # raises: a partial record, or no images
    member = RawMember(
        name=entry.info.name, path=entry.rel, split=entry.kind, bytes=total, sha256=sha.hexdigest(), rows=rows
    )
    landing.land(member, local_path=spool)
    return member


def _archive_path(name: str) -> str:
    """A member's path with ``./`` and ``a/../`` folded, so an alias cannot land a member twice."""
    return posixpath.normpath(name) if name else name


def _batch_number(layout: cifar.Layout, rel: str) -> int | None:
    """N of ``data_batch_N`` (``None`` for layouts with one train file); anything else there is refused."""
    if "*" not in layout.train or layout.split_of(rel) != "train":
        return None
    prefix, suffix = layout.train.split("*", 1)
    digits = rel[len(prefix) : len(rel) - len(suffix)]
    if not re.fullmatch(r"[1-9][0-9]{0,5}", digits):
        raise InputError(
            f"unexpected member {_shown(layout.root + '/' + rel)} in the archive",
            f"CIFAR names its train batches {layout.train.replace('*', '1')}, "
            f"{layout.train.replace('*', '2')}, ...: re-create the archive",
        )
    return int(digits)


@dataclass
class _Walk:
    """What the walk over the tar stream has seen so far."""

    max_bytes: int
    layout: cifar.Layout | None = None
    landing: _Landing | None = None
    members: list[RawMember] = field(default_factory=list)
    seen: dict[str, str] = field(default_factory=dict)  # rel path -> the member name it came from

    def admit(self, info: tarfile.TarInfo, found: cifar.Layout, rel: str) -> None:
        """Refuse what must not land: a second variant, a second copy, a link, a bomb."""
        if self.layout is not None and found is not self.layout:
            raise InputError(
                f"the archive mixes {self.layout.root}/ and {found.root}/",
                "pass one CIFAR variant per archive",
            )
        if rel in self.seen:
            raise InputError(
                f"the archive holds {_shown(found.root + '/' + rel)} twice "
                f"(as {_shown(self.seen[rel])} and {_shown(info.name)})",
                "re-create the archive with each member once",
            )
        if not info.isfile():
            what = "a symlink" if info.issym() else "a hard link" if info.islnk() else "not a regular file"
            raise InputError(
                f"the archive member {_shown(info.name)} is {what}",
                "re-create the archive with the file itself in it (e.g. tar --dereference --hard-dereference)",
            )
        if info.size > self.max_bytes:
            raise _too_big(f"{_shown(info.name)} would expand to {info.size} bytes", self.max_bytes)
        _batch_number(found, rel)
        self.seen[rel] = info.name


def _stream_members(
    reader: _HashingReader, landing_for: Callable[[cifar.Layout], _Landing], tmpdir: str, max_bytes: int
) -> tuple[cifar.Layout, list[RawMember]]:
    """Walk the tar stream once, landing the layout's members; returns the layout and what landed.

    The stream is then read to its end, so that the compressed stream's own check (gzip CRC-32 and length)
    covers every byte before anything is committed.
    """
    walk = _Walk(max_bytes)
    expanded = _Expanded(reader, max_bytes)
    # Unbuffered: tarfile reads in 10 KiB records, so the count stays within a record of what it consumed.
    with tarfile.open(fileobj=expanded, mode="r|") as tar:
        for info in tar:
            root, _, rel = _archive_path(info.name).partition("/")
            found = _layout_of_root(root)
            if found is None:
                if info.isfile():
                    log.warning("skipping %s: not part of a CIFAR layout", _shown(info.name))
                continue
            kind = _member_kind(found, rel)
            if kind is None:
                continue  # the root folder itself, readme.html and the like
            walk.admit(info, found, rel)
            if walk.layout is None:
                walk.layout, walk.landing = found, landing_for(found)
            handle = tar.extractfile(info)
            assert handle is not None and walk.landing is not None  # a regular file (admit)
            entry = _Entry(info, handle, rel, kind)
            if found.kind == "binary" and kind != "meta":
                walk.members.append(_land_records(walk.landing, found, entry, tmpdir))
            else:
                walk.members.append(_land_whole(walk.landing, found, entry))
            log.debug("landed %s (%d bytes)", entry.shown, walk.members[-1].bytes)
    expanded.drain()
    if walk.layout is None:
        cifar.detect_layout([])  # raises the "not a CIFAR archive" error
    assert walk.layout is not None
    _check_complete(walk.layout, walk.members)
    return walk.layout, walk.members


def _check_complete(layout: cifar.Layout, members: list[RawMember]) -> None:
    if not any(m.path == layout.meta for m in members):
        raise InputError(
            f"the archive has {layout.root}/ but no {layout.meta} (class names)",
            "the archive is incomplete: fetch it again",
        )
    for split in ("train", "test"):
        if not any(m.split == split and m.rows for m in members):
            raise InputError(
                f"the archive holds no {split} images (an empty {layout.name} archive)",
                "pass a complete CIFAR archive, or make one with `cifarflow synth`",
            )
    numbers = sorted(n for m in members if (n := _batch_number(layout, m.path)) is not None)
    missing = sorted(set(range(1, max(numbers, default=0) + 1)) - set(numbers))
    if missing:
        name = layout.train.replace("*", str(missing[0]))
        raise InputError(
            f"the archive has {len(numbers)} train batches up to "
            f"{layout.train.replace('*', str(numbers[-1]))} but no {layout.root}/{name}",
            "the archive is incomplete: fetch it again",
        )


def _bad_archive(source: Source, exc: BaseException) -> InputError:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (_Truncated, EOFError)):
        problem = f"the archive {source.shown} is truncated ({text})"
    elif isinstance(exc, _Corrupt):
        problem = f"the archive {source.shown} is corrupt ({text[:160]})"
    else:
        problem = f"the archive {source.shown} is not a readable tar.gz ({type(exc).__name__}: {text[:120]})"
    return InputError(problem, "fetch the archive again, or check that --source names a CIFAR .tar.gz")


# -- the step ------------------------------------------------------------------------------------------------


def _committed(store: Store, raw_url: str) -> RawIndex | None:
    marker = join(raw_url, MARKER)
    if not store.exists(marker):
        return None
    try:
        return RawIndex.model_validate_json(store.read_bytes(marker))
    except ValidationError:
        log.warning("%s is unreadable; it will be replaced", redact(marker))
        return None


def _reused(raw_url: str, index: RawIndex) -> IngestResult:
    log.info(
        "%s already holds archive %s (%s): nothing to do", redact(raw_url), index.archive.md5, index.layout
    )
    return IngestResult(
        raw_url,
        index.archive.md5,
        index.layout,
        reused=True,
        members=len(index.members),
        bytes=sum(m.bytes for m in index.members),
    )


def _intact(store: Store, raw_url: str, index: RawIndex) -> bool:
    """Whether every committed member is still there with its recorded size (one deleted by hand is re-landed)."""
    for member in index.members:
        url = index.url(raw_url, member)
        try:
            if store.size(url) == member.bytes:
                continue
        except FileNotFoundError:
            pass
        log.warning("%s is missing or has changed: landing the archive's members again", redact(url))
        return False
    return True


def ingest(
    source: str, dest: str, *, store: Store, md5: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> IngestResult:
    """Stream ``source`` (cifar10, cifar100, an http(s) URL, a bucket URL or a path) into ``DEST/raw/``."""
    if max_bytes < 1:
        raise InputError(f"--max-bytes {max_bytes} is not a size", "pass a positive number of bytes")
    src = resolve_source(source, md5)
    dest = normalize(dest).rstrip("/")
    raw_url = join(dest, "raw")
    store.check_folder(dest, "--dest")
    store.check_reachable(dest)
    committed = _committed(store, raw_url)
    if committed is not None and not _intact(store, raw_url, committed):
        committed = None  # nothing to reuse: land again (the members still there are skipped)

    _remove_stale_spools()
    with tempfile.TemporaryDirectory(prefix=f"{SPOOL_PREFIX}{os.getpid()}-") as tmpdir:
        expected = src.md5
        if expected is None:
            known, version = _identify(src, store)
            src = dataclasses.replace(src, version=version)
            if committed is not None and (
                known == committed.archive.md5
                or (version and (committed.archive.source, committed.archive.version) == (src.shown, version))
            ):
                return _reused(raw_url, committed)
            # The folder is named by the md5, so it must be known before anything lands: hash a local file in
            # place; spool anything remote to local disk once (one download, not two).
            src, expected = _prepare_unknown(src, store, tmpdir)
        if committed is not None and committed.archive.md5 == expected:
            return _reused(raw_url, committed)
        if committed is not None:
            log.info(
                "%s held archive %s; replacing it with %s", redact(raw_url), committed.archive.md5, expected
            )
        return _land(src, expected, raw_url, store, tmpdir, max_bytes=max_bytes)


def _remove_stale_spools() -> None:
    """Remove the spool folders of runs that were killed (SIGKILL, a lost pod): their pid is gone."""
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        found = re.fullmatch(re.escape(SPOOL_PREFIX) + r"(\d+)-\w+", name)
        if found and not _alive(int(found.group(1))):
            log.debug("removing %s, left by a killed run", name)
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _prepare_unknown(src: Source, store: Store, tmpdir: str) -> tuple[Source, str]:
    if src.kind == "store" and src.url.startswith("file://"):
        with (
            open_source(src, store) as (stream, size),
            _bytes_progress(f"hash {os.path.basename(src.url)}", size) as tick,
        ):
            digest, _ = hash_stream(stream, tick)
        return src, digest
    spool = os.path.join(tmpdir, "archive")
    with (
        open_source(src, store) as (stream, size),
        _bytes_progress("download", size) as tick,
        open(spool, "wb") as out,
    ):
        reader = _HashingReader(stream, tick)
        buf = bytearray(CHUNK)
        while n := _read_source(reader, buf):
            out.write(memoryview(buf)[:n])
    log.info("downloaded %s (%d bytes) to a local spool", src.shown, reader.bytes)
    spooled = dataclasses.replace(src, kind="store", url="file://" + spool, md5=reader.md5.hexdigest())
    return spooled, reader.md5.hexdigest()


def _read_source(reader: _HashingReader, buf: bytearray) -> int:
    try:
        return reader.readinto(buf)
    except _SourceFailed as exc:
        raise StorageError(
            f"reading the source failed mid-way ({exc.problem})", "check the network or bucket and rerun"
        ) from exc


@contextlib.contextmanager
def _bytes_progress(what: str, total: int | None) -> Iterator[Callable[[int], None]]:
    from cifarflow.cli.common import progress

    with progress() as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _land(
    src: Source, expected: str, raw_url: str, store: Store, tmpdir: str, *, max_bytes: int
) -> IngestResult:
    folder = expected[:16]
    started = time.perf_counter()
    landing: _Landing | None = None

    def landing_for(layout: cifar.Layout) -> _Landing:
        nonlocal landing
        landing = _Landing(store, join(raw_url, folder))
        landing.load_done()
        return landing

    log.info("ingesting %s into %s", src.shown, redact(raw_url))
    try:
        with open_source(src, store) as (stream, size), _bytes_progress("ingest", size) as tick:
            reader = _HashingReader(stream, tick)
            try:
                layout, members = _stream_members(reader, landing_for, tmpdir, max_bytes)
                reader.drain()
            except _SourceFailed as exc:
                raise StorageError(
                    f"reading {src.shown} failed mid-way ({exc.problem})",
                    "check the network or bucket and rerun (it resumes)",
                ) from exc
            except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
                raise _bad_archive(src, exc) from exc
        got = reader.md5.hexdigest()
        if got != expected:
            raise InputError(
                f"md5 mismatch for {src.shown}: expected {expected}, got {got} (corrupt, or another archive)",
                "fetch the archive again, or pass the right --md5",
            )
    except InputError:
        # Bad input: leave nothing behind. Crashes and storage failures keep their work for the rerun.
        if landing is not None:
            landing.undo()
        raise

    assert landing is not None
    index = RawIndex(
        layout=layout.name,
        archive=ArchiveInfo(
            md5=got,
            sha256=reader.sha256.hexdigest(),
            bytes=reader.bytes,
            source=src.shown,
            version=src.version,
        ),
        folder=folder,
        members=members,
    )
    store.write_text(join(raw_url, MARKER), index.to_json())
    landing.remove_stale_tmp()
    seconds = time.perf_counter() - started
    total = sum(m.bytes for m in members)
    log.info(
        "committed %s: %s, %d members, %.1f MB in %.1f s (%d written, %d already there)",
        redact(join(raw_url, MARKER)),
        layout.name,
        len(members),
        total / 1e6,
        seconds,
        landing.landed,
        len(members) - landing.landed,
    )
    return IngestResult(
        raw_url, got, layout.name, reused=False, members=len(members), bytes=total, written=landing.landed
    )
