"""Where an archive comes from (a named dataset, an http(s) URL, a bucket or a path) and reading it, hashed."""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import io
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any, Literal

from cifarflow import __version__
from cifarflow.errors import InputError, StorageError
from cifarflow.storage import Store, normalize, redact

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
HASH_AHEAD = 8  # reads handed to the hashing thread and not yet hashed, at most
# One thread for every reader: its FIFO order keeps each reader's updates in order.
_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cifarflow-hash")


@dataclass(frozen=True)
class ArchiveSource:
    """The archive ``--source`` names, resolved."""

    kind: Literal["http", "store"]
    url: str
    shown: str  # for messages and the marker (credentials removed)
    md5: str | None  # expected md5, when known up front
    dataset: str | None = None  # cifar10/cifar100 when named
    version: str | None = None  # a bucket object's size + ETag, recorded so reruns can skip reading it


def resolve_source(source: str, md5: str | None) -> ArchiveSource:
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
        return ArchiveSource("http", url, redact(url), md5 or known, dataset=name)
    if source.startswith(("http://", "https://")):
        return ArchiveSource("http", source, redact(source), md5)
    url = normalize(source)
    return ArchiveSource("store", url, redact(url), md5)


def _download_error(source: ArchiveSource, reason: str) -> StorageError:
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
def open_archive(source: ArchiveSource, store: Store) -> Iterator[tuple[IO[bytes], int | None]]:
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


def identify(source: ArchiveSource, store: Store) -> tuple[str | None, str | None]:
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


class SourceFailed(StorageError):
    """Reading the source itself failed (network, bucket), as opposed to its bytes being bad."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, "check the network or bucket and rerun")


class HashingReader(io.RawIOBase):
    """Counts and hashes every byte read through it; source read failures are tagged for the error message.

    sha256, and md5 when asked (``md5``: there is one to check), run on a helper thread (hashlib releases the GIL
    on large buffers), so on a machine with a second core they overlap the decompression and validation that
    consume the bytes; read :attr:`md5` and :attr:`sha256` only after the last read.
    """

    def __init__(
        self, raw: IO[bytes], on_bytes: Callable[[int], None] | None = None, *, md5: bool = False
    ) -> None:
        self._raw = raw
        self._on_bytes = on_bytes
        self._md5 = hashlib.md5() if md5 else None
        self._sha256 = hashlib.sha256()
        self._hashes = (self._sha256,) if self._md5 is None else (self._md5, self._sha256)
        self._pending: collections.deque[Future[None]] = collections.deque()
        self.bytes = 0

    @property
    def md5(self) -> Any:
        assert self._md5 is not None, "only a HashingReader(md5=True) computes the md5"
        self._settle(0)
        return self._md5

    @property
    def sha256(self) -> Any:
        self._settle(0)
        return self._sha256

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self._raw.read(len(b))
        except Exception as exc:
            raise SourceFailed(f"{type(exc).__name__}: {exc}") from exc
        n = len(data)
        b[:n] = data
        if n:
            self._settle(HASH_AHEAD - 1)  # bounds the bytes held for hashing (memory) to a few reads
            self._pending.append(_HASHER.submit(_update, self._hashes, bytes(data)))
            self.bytes += n
            if self._on_bytes is not None:
                self._on_bytes(n)
        return n

    def _settle(self, keep: int) -> None:
        while len(self._pending) > keep:
            self._pending.popleft().result()

    def drain(self) -> None:
        """Read to the end: the checksums must cover what follows the tar's end blocks (gzip trailer)."""
        buf = bytearray(CHUNK)
        while self.readinto(buf):
            pass


def _update(hashes: tuple[Any, ...], data: bytes) -> None:
    for h in hashes:
        h.update(data)


def hash_stream(stream: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> tuple[str, int]:
    """The sha256 (it names the landed folder) and size."""
    reader = HashingReader(stream, on_bytes)
    reader.drain()
    return reader.sha256.hexdigest(), reader.bytes


def spool(stream: IO[bytes], path: str, on_bytes: Callable[[int], None]) -> tuple[str, int]:
    """Copy the source to the local file ``path`` (one download, not two); returns its sha256 and size."""
    reader = HashingReader(stream, on_bytes)
    buf = bytearray(CHUNK)
    with open(path, "wb") as out:
        while n := _read_source(reader, buf):
            out.write(memoryview(buf)[:n])
    return reader.sha256.hexdigest(), reader.bytes


def _read_source(reader: HashingReader, buf: bytearray) -> int:
    try:
        return reader.readinto(buf)
    except SourceFailed as exc:
        raise StorageError(
            f"reading the source failed mid-way ({exc.problem})", "check the network or bucket and rerun"
        ) from exc
