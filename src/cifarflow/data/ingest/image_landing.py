"""Where an image-folder ingest lands: one run's writes into ``DEST/raw/<folder>/`` (what a previous run
finished, the landed files' sizes, what to undo) and :func:`intact`, which reads a committed index back to check
that every image it lists is still landed."""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field

from cifarflow.data.ingest.marker import ImageIndex, ImageRecord, parse_shard
from cifarflow.errors import InputError
from cifarflow.storage import TMP_INFIX, Store, join, redact, translate

log = logging.getLogger(__name__)

CACHED_NAMES = 1 << 20  # landed file names whose sizes are kept (bucket listings), ~100 MB at most
INDEX = "_index"


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
