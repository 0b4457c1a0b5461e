"""Pass one of an image-folder ingest, before anything is written: which kind an archive is (:func:`sniff`), and
the source's layout and fingerprint from its listing (:func:`survey`); every bad layout is refused here."""

from __future__ import annotations

import hashlib
import io
import tarfile
from typing import Literal

from cifarflow.data import folders
from cifarflow.data.folders import Layout
from cifarflow.data.ingest.decompress import UNREADABLE, Expanded
from cifarflow.data.ingest.image_sources import ImageSource, ZipArchive
from cifarflow.data.ingest.source import ArchiveSource, HashingReader, open_archive
from cifarflow.data.ingest.stream import archive_path, layout_of_root
from cifarflow.errors import InputError
from cifarflow.storage import Store

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
