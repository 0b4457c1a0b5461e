"""The commit marker ``DEST/raw/_ingest.json``: what ingest landed, and the only thing readers trust."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from cifarflow import __version__
from cifarflow.data import cifar, content_index, manifest
from cifarflow.errors import InputError
from cifarflow.storage import Store, join, redact

log = logging.getLogger(__name__)

FORMAT = "cifarflow.raw/v1"
MARKER = "_ingest.json"
# DEST/raw/_landing-<key>/: a folder landing before its archive's sha256 is known (renamed to <sha256[:16]> after).
PROVISIONAL = "_landing-"
DONE = "_done"  # DEST/raw/<folder>/_done/<member>.json: per-member completion records (resume)

# What a landed member holds: images of one split of the dataset, or class names.
MemberRole = Literal["train", "test", "meta"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArchiveInfo(_Model):
    md5: str | None = None  # computed only when there was one to check it against (--md5, a named dataset)
    sha256: str
    bytes: int
    source: str
    version: str | None = None  # the source object's size + ETag, when it came from a bucket


class LandedMember(_Model):
    """One archive member as landed under ``DEST/raw/<folder>/`` (also its completion record)."""

    name: str  # path inside the archive
    path: str  # path under the folder (relative to the layout's root)
    split: MemberRole  # the marker's field name: kept, so existing markers still read
    bytes: int
    # The file's own sha256: meta files, and data members landed before content indexes. A data member's index
    # (``hashes``) covers every byte the dataset takes from it, image by image, and preprocess checks each image
    # against it, so hashing the whole member as well (~1 CPU-s a GB) would guard nothing more.
    sha256: str | None = None
    rows: int = 0  # images (0 for meta)
    hashes: str | None = None  # sha256 of its content index (data members); None: landed without one


class _Marker(_Model):
    """What both kinds of ``_ingest.json`` hold."""

    folder: str  # relative to DEST/raw
    code_version: str = __version__

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


class RawIndex(_Marker):
    """``DEST/raw/_ingest.json`` of a CIFAR archive: what preprocess reads."""

    format: Literal["cifarflow.raw/v1"] = "cifarflow.raw/v1"
    layout: str
    archive: ArchiveInfo
    members: list[LandedMember]

    @property
    def kind(self) -> Literal["cifar"]:
        return "cifar"

    @property
    def layout_info(self) -> cifar.Layout:
        return cifar.LAYOUTS[self.layout]

    def url(self, raw_url: str, member: LandedMember) -> str:
        return join(raw_url, self.folder, member.path)

    def hashes_url(self, raw_url: str, member: LandedMember) -> str | None:
        """Where the member's content index lies, when it has one (:mod:`cifarflow.data.content_index`)."""
        return join(raw_url, self.folder, content_index.path(member.path)) if member.hashes else None


class ImageRecord(_Model):
    """One landed image: a line of an index shard (``DEST/raw/<folder>/_index/part-NNNNN.jsonl``)."""

    path: str  # under DEST/raw/<folder>/, relative to the dataset root: train/cat/x.jpg
    label: int  # index into ImageIndex.classes
    split: Literal["train", "test"]
    bytes: int
    sha256: str


class IndexShard(_Model):
    """One index shard: the records of one batch of images, in listing order (also its completion record)."""

    path: str  # under DEST/raw/<folder>/
    images: int
    bytes: int  # of the images it lists
    sha256: str  # of the shard file itself


class ImageIndex(_Marker):
    """``DEST/raw/_ingest.json`` for a class-per-folder image dataset (``kind == "images"``).

    The images land byte for byte under ``DEST/raw/<folder>/<path>``; their records sit in JSON-lines shards
    (:meth:`batches` reads them one shard at a time), so the marker stays small for a million images.
    """

    format: Literal["cifarflow.raw-images/v1"] = "cifarflow.raw-images/v1"
    layout: Literal["split", "flat"]  # flat: no test split (the caller carves one by content hash)
    root: str  # the dataset root inside the source ("" or e.g. "imagenette2-160")
    test_folder: str | None  # "test", "val" or None (flat, or a split layout with train/ only)
    classes: list[str]  # sorted class folder names; a record's label indexes this list
    train_counts: list[int]  # images per class
    test_counts: list[int]
    images: int
    bytes: int
    skipped: dict[str, int]  # listed files not landed, by reason (folders.Skip: not_image, hidden, link, ...)
    source: str  # as given (credentials removed)
    archive: ArchiveInfo | None = None  # when the source is an archive
    fingerprint: str | None = None  # when the source is a folder: its listing's paths, sizes and versions
    checksum: str  # over the records (path, label, split, sha256), in any order: the dataset's identity
    shards: list[IndexShard]

    @property
    def kind(self) -> Literal["images"]:
        return "images"

    @property
    def has_test(self) -> bool:
        return self.test_folder is not None

    def url(self, raw_url: str, record: ImageRecord) -> str:
        return join(raw_url, self.folder, record.path)

    def shard_url(self, raw_url: str, shard: IndexShard) -> str:
        return join(raw_url, self.folder, shard.path)

    def batches(self, store: Store, raw_url: str) -> Iterator[list[ImageRecord]]:
        """The records, one shard (at most a few thousand) at a time, each shard checked against its sha256."""
        for shard in self.shards:
            url = self.shard_url(raw_url, shard)
            data = store.read_bytes(url)
            if hashlib.sha256(data).hexdigest() != shard.sha256:
                raise InputError(
                    f"{redact(url)} has changed since ingest committed it",
                    "re-run the same `cifarflow ingest`",
                )
            yield parse_shard(data)


class _Any(RootModel[Annotated[RawIndex | ImageIndex, Field(discriminator="format")]]):
    """Either marker, told apart by its ``format``."""


def shard_bytes(records: list[ImageRecord]) -> bytes:
    return b"".join(r.model_dump_json().encode() + b"\n" for r in records)


def parse_shard(data: bytes) -> list[ImageRecord]:
    return [ImageRecord.model_validate_json(line) for line in data.splitlines() if line]


def read_raw(store: Store, raw_url: str) -> RawIndex | ImageIndex:
    """Read ``RAW/_ingest.json``, whichever kind it is (``.kind``: ``"cifar"`` or ``"images"``); a raw folder
    without it was never committed and is refused."""
    raw_url, marker = _marker_url(store, raw_url)
    index = manifest.read_model(
        store,
        marker,
        _Any,
        what="cifarflow ingest marker",
        fix="pass the DEST/raw folder written by `cifarflow ingest`",
    ).root
    if isinstance(index, RawIndex) and index.layout not in cifar.LAYOUTS:
        raise InputError(f"{redact(marker)}: unknown layout {index.layout!r}", "re-run `cifarflow ingest`")
    return index


def load_raw(store: Store, raw_url: str) -> RawIndex:
    """Read the marker of an ingested CIFAR archive (:func:`read_raw` reads either kind)."""
    index = read_raw(store, raw_url)
    if not isinstance(index, RawIndex):
        raise InputError(
            f"{redact(raw_url)} holds an image folder ({len(index.classes)} classes), not a CIFAR archive",
            "read it with cifarflow.data.ingest.read_raw",
        )
    return index


def _marker_url(store: Store, raw_url: str) -> tuple[str, str]:
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
    return raw_url, marker


def committed(store: Store, raw_url: str) -> RawIndex | ImageIndex | None:
    """The marker a previous run committed, or ``None`` (none, or unreadable: it will be replaced)."""
    marker = join(raw_url, MARKER)
    if not store.exists(marker):
        return None
    try:
        return _Any.model_validate_json(store.read_bytes(marker)).root
    except ValidationError:
        log.warning("%s is unreadable; it will be replaced", redact(marker))
        return None
