"""Tar members read straight from the decompressed stream: the same bytes as tarfile's own reader, the walk
going on after each member, and the same Truncated error; and the allocator setting around ingest."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
from typing import Any

import pytest

from cifarflow.data import allocator
from cifarflow.data.ingest import decompress
from cifarflow.data.ingest.decompress import Expanded, Truncated
from cifarflow.data.ingest.members import MemberBytes

SIZES = {"empty": 0, "tiny": 5, "block": 512, "odd": 70_001, "big": 3_000_123}


def archive(sizes: dict[str, int], compress: bool = True) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, size in sizes.items():
            data = bytes((i * 7 + len(name)) % 251 for i in range(size))
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue(), compresslevel=1) if compress else out.getvalue()


def expected(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def walk(data: bytes, read: Any, bufsize: int = 1 << 20, other_stream: bool = False) -> dict[str, bytes]:
    with Expanded(io.BytesIO(data), 1 << 30) as expanded:  # type: ignore[arg-type]
        stream = Expanded(io.BytesIO(data), 1 << 30) if other_stream else expanded  # type: ignore[arg-type]
        with tarfile.open(fileobj=expanded, mode="r|", bufsize=bufsize) as tar:
            return {info.name: read(MemberBytes(tar, stream, info)) for info in tar}


@pytest.mark.parametrize("bufsize", [512, 10240, 1 << 20])
def test_members_read_whole_are_tarfiles_bytes(bufsize: int) -> None:
    data = archive(SIZES)
    assert walk(data, lambda m: bytes(m.read_all()), bufsize) == expected(data)


def test_members_read_in_chunks_are_tarfiles_bytes() -> None:
    def chunks(member: MemberBytes) -> bytes:
        buffer, parts = bytearray(4096 * 3), []
        while n := member.fill(buffer):
            parts.append(bytes(buffer[:n]))
        return b"".join(parts)

    data = archive(SIZES)
    assert walk(data, chunks) == expected(data)


def test_another_stream_falls_back_to_tarfiles_reader() -> None:
    data = archive(SIZES)
    assert walk(data, lambda m: bytes(m.read_all()), other_stream=True) == expected(data)


def test_a_member_cut_short_is_truncated() -> None:
    whole = archive({"big": 3_000_123}, compress=False)
    cut = whole[: 512 + 1_000_000]  # the header and a third of the data
    with pytest.raises(Truncated, match="unexpected end of data in big"):
        walk(cut, lambda m: m.read_all())


def test_freed_memory_is_kept_in_the_block_and_glibcs_setting_comes_back(monkeypatch: Any) -> None:
    calls: list[tuple[int, int]] = []
    trims: list[int] = []

    def fake(name: str) -> Any:
        return {"mallopt": lambda p, v: calls.append((p, v)) or 1, "malloc_trim": trims.append}[name]

    monkeypatch.setattr(allocator, "_libc", fake)
    with allocator.freed_memory_kept():
        assert calls == [
            (allocator.M_MMAP_THRESHOLD, allocator.MMAP_THRESHOLD),
            (allocator.M_TRIM_THRESHOLD, allocator.TRIM_THRESHOLD),
        ]
    assert calls[2:] == [
        (allocator.M_TRIM_THRESHOLD, allocator.GLIBC_DEFAULT),
        (allocator.M_MMAP_THRESHOLD, allocator.GLIBC_DEFAULT),
    ]
    assert trims == [0]
    # A C library without mallopt (musl's is a stub, macOS has none): nothing is set, the block still runs.
    monkeypatch.setattr(allocator, "_libc", lambda name: None)
    with allocator.freed_memory_kept():
        ran = True
    assert ran


def test_glibc_takes_the_setting() -> None:
    assert allocator.keep_freed_memory()  # this machine's glibc accepts both thresholds
    with allocator.freed_memory_kept():
        pass


def test_the_threaded_inflate_runs_blocks_ahead_of_a_busy_walk(monkeypatch: Any) -> None:
    """While the walk works on a member it has read, the inflate goes on up to INFLATE_AHEAD blocks (isal's
    own reader stops two blocks ahead): how far it read the compressed source shows it."""
    monkeypatch.setattr(decompress, "INFLATE_BLOCK", 64 << 10)
    monkeypatch.setattr(decompress, "INFLATE_AHEAD", 64)  # 4 MB ahead; isal's two blocks: ~1.7 MB read
    # Incompressible: a byte of the source read is a byte inflated.
    source = io.BytesIO(gzip.compress(os.urandom(6 << 20), compresslevel=1))
    with Expanded(source, 1 << 30, threaded=True) as expanded:  # type: ignore[arg-type]
        assert expanded.readinto(bytearray(1)) == 1
        deadline = time.monotonic() + 10
        while source.tell() < 4 << 20 and time.monotonic() < deadline:  # isal's two blocks: never gets there
            time.sleep(0.05)
        assert source.tell() >= 4 << 20
