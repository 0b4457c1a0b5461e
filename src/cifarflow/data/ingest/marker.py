"""The commit marker ``DEST/raw/_ingest.json``: what ingest landed, and the only thing readers trust."""

from __future__ import annotations

import json
import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from cifarflow import __version__
from cifarflow.data import cifar, manifest
from cifarflow.errors import InputError
from cifarflow.storage import Store, join, redact

log = logging.getLogger(__name__)

FORMAT = "cifarflow.raw/v1"
MARKER = "_ingest.json"
DONE = "_done"  # DEST/raw/<folder>/_done/<member>.json: per-member completion records (resume)

# What a landed member holds: images of one split of the dataset, or class names.
MemberRole = Literal["train", "test", "meta"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArchiveInfo(_Model):
    md5: str
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
    sha256: str
    rows: int = 0  # images (0 for meta)


class RawIndex(_Model):
    """``DEST/raw/_ingest.json``: what preprocess reads."""

    format: Literal["cifarflow.raw/v1"] = "cifarflow.raw/v1"
    layout: str
    archive: ArchiveInfo
    folder: str  # relative to DEST/raw
    members: list[LandedMember]
    code_version: str = __version__

    @property
    def layout_info(self) -> cifar.Layout:
        return cifar.LAYOUTS[self.layout]

    def url(self, raw_url: str, member: LandedMember) -> str:
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


def committed(store: Store, raw_url: str) -> RawIndex | None:
    """The marker a previous run committed, or ``None`` (none, or unreadable: it will be replaced)."""
    marker = join(raw_url, MARKER)
    if not store.exists(marker):
        return None
    try:
        return RawIndex.model_validate_json(store.read_bytes(marker))
    except ValidationError:
        log.warning("%s is unreadable; it will be replaced", redact(marker))
        return None
