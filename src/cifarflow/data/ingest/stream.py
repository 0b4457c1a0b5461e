"""One pass over the tar stream: which members belong to the CIFAR layout, each validated before it lands."""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field

from cifarflow.data import cifar, content_index
from cifarflow.data.ingest.decompress import Expanded, Truncated, prompt_handovers, too_big
from cifarflow.data.ingest.land import Landing
from cifarflow.data.ingest.marker import LandedMember, MemberRole
from cifarflow.data.ingest.members import MemberBytes
from cifarflow.data.ingest.source import HashingReader
from cifarflow.errors import InputError
from cifarflow.storage import translate

log = logging.getLogger(__name__)

RECORDS_PER_CHUNK = 2048  # binary records validated per step (~6 MB)
TAR_READ = 1 << 20  # bytes per read of the decompressed tar stream
# Kept beside the layout's meta file: CIFAR-100 binary ships its superclass names separately.
EXTRA_META = {"cifar100-binary": {"coarse_label_names.txt"}}


def member_role(layout: cifar.Layout, rel: str) -> MemberRole | None:
    """What the member at ``rel`` (under the layout's root) holds; ``None``: it does not land."""
    if not rel or "/" in rel or rel in (".", ".."):
        # CIFAR members sit directly under the root; "data_batch_1/../../x" must not land anywhere.
        return None
    split = layout.split_of(rel)
    if split is not None:
        return split
    if rel == layout.meta or rel in EXTRA_META.get(layout.name, set()):
        return "meta"
    return None


def layout_of_root(root: str) -> cifar.Layout | None:
    return next((lay for lay in cifar.LAYOUTS.values() if lay.root == root), None)


@dataclass
class Entry:
    """A tar member being landed."""

    info: tarfile.TarInfo
    data: MemberBytes
    rel: str  # path under the layout's root
    role: MemberRole

    @property
    def shown(self) -> str:
        return shown(self.info.name)


def shown(name: str) -> str:
    """A member name fit for a one-line message: control characters escaped, long names shortened."""
    text = name.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 100 else f"{text[:60]}...{text[-20:]} ({len(name)} characters)"


def land_whole(landing: Landing, layout: cifar.Layout, entry: Entry) -> LandedMember:
    """Pickled batches and meta files: read whole (one batch is ~31 MB), validate, write."""
    data = entry.data.read_all()  # unpickled, hashed and written from this one buffer
    rows, index = 0, None
    if entry.rel == layout.meta:
        cifar.label_names(data, layout)
    elif entry.role != "meta":
        batch = cifar.decode_python(data, layout, entry.shown)
        rows, index = len(batch), content_index.encode(batch)
    # A data member's content index covers it (marker.LandedMember); meta files keep their own sha256.
    whole_file = hashlib.sha256(data).hexdigest() if index is None else None
    member = LandedMember(
        name=entry.info.name,
        path=entry.rel,
        split=entry.role,
        bytes=len(data),
        sha256=whole_file,
        rows=rows,
        hashes=hashlib.sha256(index).hexdigest() if index is not None else None,
    )
    landing.land(member, data=data, index=index)
    return member


def land_records(landing: Landing, layout: cifar.Layout, entry: Entry, tmpdir: str) -> LandedMember:
    """Binary batches: validate chunk by chunk into a local spool, then one upload (memory: one chunk)."""
    size = layout.record_bytes
    rows = total = 0
    index: list[bytes] = []  # 17 bytes an image: 8.5 MB for a 500k-image member
    buffer = memoryview(bytearray(size * RECORDS_PER_CHUNK))  # whole records; reused for every chunk
    tail = b""  # a partial record: only the member's last chunk can end inside one
    spool = os.path.join(tmpdir, f"member-{entry.rel}")  # one per member: several may be uploading
    with translate("file://" + spool), open(spool, "wb") as out:  # TMPDIR full: one line, not OSError
        while not tail and (n := entry.data.fill(buffer)):
            chunk = buffer[:n]
            out.write(chunk)
            total += n
            whole = n - n % size
            if whole:
                batch = cifar.decode_binary(chunk[:whole], layout, entry.shown, rows)
                rows += len(batch)
                index.append(content_index.encode(batch))
            tail = bytes(chunk[whole:])
    if total != entry.info.size:
        raise Truncated(f"unexpected end of data in {entry.shown}")
    if tail or rows == 0:
        cifar.decode_binary(tail, layout, entry.shown)  # raises: a partial record, or no images
    hashes = b"".join(index)
    member = LandedMember(
        name=entry.info.name,
        path=entry.rel,
        split=entry.role,
        bytes=total,
        rows=rows,
        hashes=hashlib.sha256(hashes).hexdigest(),
    )
    landing.land(member, local_path=spool, index=hashes)
    return member


def archive_path(name: str) -> str:
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
            f"unexpected member {shown(layout.root + '/' + rel)} in the archive",
            f"CIFAR names its train batches {layout.train.replace('*', '1')}, "
            f"{layout.train.replace('*', '2')}, ...: re-create the archive",
        )
    return int(digits)


@dataclass
class _Walk:
    """What the walk over the tar stream has seen so far."""

    max_bytes: int
    layout: cifar.Layout | None = None
    landing: Landing | None = None
    members: list[LandedMember] = field(default_factory=list)
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
                f"the archive holds {shown(found.root + '/' + rel)} twice "
                f"(as {shown(self.seen[rel])} and {shown(info.name)})",
                "re-create the archive with each member once",
            )
        if not info.isfile():
            what = "a symlink" if info.issym() else "a hard link" if info.islnk() else "not a regular file"
            raise InputError(
                f"the archive member {shown(info.name)} is {what}",
                "re-create the archive with the file itself in it (e.g. tar --dereference --hard-dereference)",
            )
        if info.size > self.max_bytes:
            raise too_big(f"{shown(info.name)} would expand to {info.size} bytes", self.max_bytes)
        self.check_total(info)
        _batch_number(found, rel)
        self.seen[rel] = info.name

    def check_total(self, info: tarfile.TarInfo) -> None:
        """The exact bomb check, by the tar's own offsets (the byte count of :class:`Expanded` runs ahead)."""
        if info.offset_data + info.size > self.max_bytes:
            raise too_big(f"the archive expands to more than {self.max_bytes} bytes", self.max_bytes)


def stream_members(
    reader: HashingReader, landing_for: Callable[[cifar.Layout], Landing], tmpdir: str, max_bytes: int
) -> tuple[cifar.Layout, list[LandedMember]]:
    """Walk the tar stream once, landing the layout's members; returns the layout and what landed.

    The stream is then read to its end, so that the compressed stream's own check (gzip CRC-32 and length)
    covers every byte before anything is committed.
    """
    walk = _Walk(max_bytes)
    # tarfile's default 10 KiB reads cost ~2.3 s of calls, copies and page faults at 10x.
    with (
        prompt_handovers(),
        Expanded(reader, max_bytes, ahead=TAR_READ, threaded=True) as expanded,
        tarfile.open(fileobj=expanded, mode="r|", bufsize=TAR_READ) as tar,
    ):
        for info in tar:
            root, _, rel = archive_path(info.name).partition("/")
            found = layout_of_root(root)
            if found is None:
                walk.check_total(info)
                if info.isfile():
                    log.warning("skipping %s: not part of a CIFAR layout", shown(info.name))
                continue
            role = member_role(found, rel)
            if role is None:
                walk.check_total(info)
                continue  # the root folder itself, readme.html and the like
            walk.admit(info, found, rel)
            if walk.layout is None:
                walk.layout, walk.landing = found, landing_for(found)
            assert walk.landing is not None
            entry = Entry(info, MemberBytes(tar, expanded, info), rel, role)
            if found.kind == "binary" and role != "meta":
                walk.members.append(land_records(walk.landing, found, entry, tmpdir))
            else:
                walk.members.append(land_whole(walk.landing, found, entry))
            log.debug("landed %s (%d bytes)", entry.shown, walk.members[-1].bytes)
        expanded.drain()
    if walk.layout is None:
        cifar.detect_layout([])  # raises the "not a CIFAR archive" error
    assert walk.layout is not None
    _check_complete(walk.layout, walk.members)
    return walk.layout, walk.members


def _check_complete(layout: cifar.Layout, members: list[LandedMember]) -> None:
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
