"""The archive's decompressed bytes: bounded (decompression bombs), checked (CRC, length), with one-line errors."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import sys
import tarfile
import types
import zlib
from collections.abc import Iterator
from typing import Any, cast

from cifarflow.data.ingest.source import CHUNK, ArchiveSource
from cifarflow.errors import InputError

gzip_reader: types.ModuleType = gzip
threaded_reader: types.ModuleType | None = None
InflateError: type[Exception] = zlib.error
try:  # ISA-L's inflate: the same format and checks (CRC-32, length) as gzip's, ~1.7x faster (benchmarks.md)
    from isal import igzip, igzip_threaded, isal_zlib

    gzip_reader, threaded_reader = igzip, igzip_threaded
    InflateError = cast(type[Exception], isal_zlib.error)
except ImportError:  # a platform without its wheels: the standard library's
    pass

# Compressed bytes per hand-over to the inflate thread. Each hand-over waits for the GIL, which the tar walk
# holds for up to the 5 ms switch interval: with 1 MB blocks a busy walk starved the inflate of 10x CIFAR from
# 5.3 s to 16.6 s; ingest at 10x took 9.5 s with 1 MB, 7.3-7.5 s with 2 MB, 7.6 s with 4 MB, 8.2-8.5 s with 16.
INFLATE_BLOCK = 2 << 20
# Inflated blocks that may wait for the walk (64 MB): more than a pickled member at 10x CIFAR.
INFLATE_AHEAD = 32
# How long the walk may hold the GIL while the inflate and hash threads wait for it (Python's default: 5 ms).
# Each inflated block needs the GIL a few times, and a python-format walk holds it long (copies, unpickling):
# python ingest at 10x took 10.8-11.0 s at 0.5 ms, 11.9-12.6 s at 5 ms (alternating runs); binary: no change.
HANDOVER_S = 0.0005


@contextlib.contextmanager
def prompt_handovers() -> Iterator[None]:
    """The GIL handed over every :data:`HANDOVER_S` while the block runs (the process's setting after)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(HANDOVER_S)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


# The most bytes an archive may expand to (all members, headers and padding): 23x the official CIFAR-10/100
# (184/185 MB), and it holds the 10x synthetic set (1.69 GB). A pickled member is held in memory whole, so
# this also bounds memory. `--max-bytes` raises it for larger sets.
DEFAULT_MAX_BYTES = 4 << 30


class Truncated(tarfile.ReadError):
    """The archive ended inside a member."""


class Corrupt(tarfile.ReadError):
    """The compressed stream failed its own check (CRC, length, invalid data)."""


class Expanded(io.RawIOBase):
    """The archive's decompressed bytes, counted against ``limit`` (a decompression bomb stops here).

    Python's tarfile stream mode never checks the gzip trailer; :class:`gzip.GzipFile` does (CRC-32 and length)
    once it is read to the end, and so do the bz2 and xz readers. ``ahead``: how far the reader's buffer may
    run past what it has consumed; the count may pass the limit by that much first, so that the tar walk's
    exact checks (a member's declared size) are met before it. ``threaded``: a gzip stream is inflated on a
    thread of its own, beside the reader's work (close it: :meth:`close` stops the thread).
    """

    def __init__(self, raw: io.RawIOBase, limit: int, ahead: int = 0, threaded: bool = False) -> None:
        self._inner = _decompressor(raw, threaded)
        self.limit = limit
        self.ahead = ahead
        self.bytes = 0

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            n = self._inner.readinto(b)  # straight into the caller's buffer: no bytes object between
        except (OSError, zlib.error, InflateError, lzma.LZMAError) as exc:  # BadGzipFile is an OSError
            raise Corrupt(f"{type(exc).__name__}: {exc}") from exc
        self.bytes += n
        if self.bytes > self.limit + self.ahead:
            raise too_big(f"the archive expands to more than {self.limit} bytes", self.limit)
        return n

    def drain(self) -> None:
        """Read to the end, so the compressed stream's trailer is checked."""
        buf = bytearray(CHUNK)
        while self.readinto(buf):
            pass


def _decompressor(raw: io.RawIOBase, threaded: bool) -> io.BufferedIOBase:
    buffered = io.BufferedReader(raw, CHUNK)
    head = buffered.peek(6)[:6]
    if head.startswith(b"\x1f\x8b"):
        if threaded and threaded_reader is not None:
            return _threaded(buffered)
        return gzip_reader.GzipFile(fileobj=buffered, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(buffered)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(buffered)
    return buffered


def _threaded(buffered: io.BufferedIOBase) -> io.BufferedIOBase:
    """ISA-L's threaded reader, up to :data:`INFLATE_AHEAD` blocks ahead of the walk. With ``isal.open``'s two,
    the inflate stopped while the walk unpickled, hashed and wrote a pickled member it had read whole (31 MB at
    10x); a member ahead, python ingest at 10x took 7.15-7.65 s instead of 7.34-8.43 (binary: no change). Only
    isal's reader class takes the queue's length; an isal without that class gets ``open``'s."""
    assert threaded_reader is not None
    try:
        reader = threaded_reader._ThreadedGzipReader(
            buffered, queue_size=INFLATE_AHEAD, block_size=INFLATE_BLOCK
        )
    except (AttributeError, TypeError):  # an isal whose reader class is not this one
        return cast(
            io.BufferedIOBase, threaded_reader.open(buffered, "rb", threads=1, block_size=INFLATE_BLOCK)
        )
    return io.BufferedReader(reader)


def too_big(what: str, limit: int) -> InputError:
    return InputError(
        f"{what}, over the --max-bytes limit of {limit} (a decompression bomb, or a very large dataset)",
        "if the archive is trusted, pass a larger --max-bytes",
    )


# What a damaged archive raises while it is read (the tar reader, the end of the stream, the decompressors).
UNREADABLE = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


def bad_archive(source: ArchiveSource, exc: BaseException) -> InputError:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, (Truncated, EOFError)):
        problem = f"the archive {source.shown} is truncated ({text})"
    elif isinstance(exc, Corrupt):
        problem = f"the archive {source.shown} is corrupt ({text[:160]})"
    else:
        problem = f"the archive {source.shown} is not a readable tar.gz ({type(exc).__name__}: {text[:120]})"
    return InputError(problem, "fetch the archive again, or check that --source names a CIFAR .tar.gz")
