"""The sources of an image-folder ingest: a local folder or a bucket prefix, a local ``.zip``, a local tar (read
as a stream). Each lists its files (pass one) and yields the images of a layout to land (pass two)."""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from cifarflow.data import folders
from cifarflow.data.folders import Entry, Layout, Listed
from cifarflow.data.ingest.decompress import UNREADABLE, Expanded, Truncated, bad_archive
from cifarflow.data.ingest.source import ArchiveSource
from cifarflow.errors import InputError
from cifarflow.storage import Store, translate


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
