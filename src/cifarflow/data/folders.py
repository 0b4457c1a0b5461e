"""The class-per-folder layout (torchvision's ``ImageFolder``, Keras' ``image_dataset_from_directory``) over any
listing of relative paths: a local folder, a bucket prefix, or an archive's member names.

Accepted layouts, under a root ``ROOT``:

- **split**: ``ROOT/train/<class>/<image>`` and optionally ``ROOT/test/<class>/<image>``; ``val/`` is the test
  split when there is no ``test/`` (as imagenette ships). With both, ``test/`` is used and ``val/`` is skipped and
  counted (``unused_split``). Split names are matched exactly (lower case).
- **flat**: ``ROOT/<class>/<image>``; there is no test split (:attr:`Layout.has_test` is false) and the caller
  carves one by content hash.

``ROOT`` is the listing's root, or the folder inside it when every image sits under one top-level folder (as
published archives do: ``imagenette2-160/train/...``); this repeats (``data/imagenette2-160/...``) and stops at a
split name or at a folder holding images directly. Class names are the sorted class folder names; a class's index
is its position. A test split's classes must be train classes.

What is read and what is skipped (each skip is counted by reason in :attr:`Layout.skipped`):

- an **image** is a file ending ``.jpg .jpeg .png .bmp .webp`` (any case); other files: ``not_image``;
- anything with a path component starting with ``.`` (``.DS_Store``, ``._x.jpg``, ``.git/``) or named
  ``__MACOSX`` (the resource forks macOS zips add): ``hidden``;
- links and other non-regular files (flagged by the listing helpers): ``link``;
- an image **below** a class folder (``train/cat/extra/x.jpg``) belongs to that class, as in torchvision and Keras;
- an image that is not inside a class folder (``ROOT/x.jpg``, ``ROOT/train/x.jpg``, or in a top-level folder other
  than ``train``/``test``/``val`` in the split layout): ``outside_class_folder``.

Refused with one line (:class:`~cifarflow.errors.InputError`): a path that leaves the root (``..``, absolute,
drive letter, NUL: :class:`UnsafePath`); no images; ``test/`` or ``val/`` without ``train/``; fewer than two
classes; a class folder or a split with no images; a test class missing from train.

The listing is read twice (once to find the layout, in memory proportional to the number of *folders*, once to
emit entries), so a million files never sit in memory.
"""

from __future__ import annotations

import enum
import logging
import posixpath
import re
import stat
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from cifarflow.errors import InputError
from cifarflow.storage import Store, redact, translate

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TRAIN, TEST, VAL = "train", "test", "val"
SPLIT_FOLDERS = (TRAIN, TEST, VAL)
Split = Literal["train", "test"]
_DRIVE = re.compile(r"^[A-Za-z]:")


class Skip(enum.StrEnum):
    """Why a listed path is not an entry."""

    NOT_IMAGE = "not_image"
    HIDDEN = "hidden"
    LINK = "link"
    OUTSIDE = "outside_class_folder"
    UNUSED_SPLIT = "unused_split"
    FOLDER = "folder"  # a folder entry: not a file, never counted


class UnsafePath(InputError):
    """A listed path that would leave the dataset's root."""


class NoImages(InputError):
    """A listing without a single image file (the caller may know a better fix, e.g. a folder given as an archive)."""


class Listed(NamedTuple):
    """One listed path, relative to the listing's root. A folder ends with ``/``; ``link`` marks a link or other
    non-regular file (never read); ``size`` is in bytes when the listing knows it; ``version`` is what changes
    when the file does (a modification time or ETag), when the listing knows it."""

    path: str
    size: int | None = None
    link: bool = False
    version: str | None = None


class Entry(NamedTuple):
    """One image of the dataset.

    ``path`` is as listed (to read the file); ``key`` is its normalised path relative to the dataset root
    (``train/cat/x.jpg``, to write it under); ``label`` indexes :attr:`Layout.classes`.
    """

    path: str
    key: str
    label: int
    split: Split
    size: int | None


Listing = Iterable[Listed | str]


def parts_of(path: str) -> tuple[str, ...]:
    """The components of a relative path (``./`` and empty components dropped, ``\\`` read as ``/``), or
    :class:`UnsafePath` when it is absolute or climbs out with ``..``."""
    norm = path.replace("\\", "/")
    why = None
    if norm.startswith("/") or _DRIVE.match(norm):
        why = "an absolute path"
    elif "\0" in norm:
        why = "a NUL byte in the name"
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if why is None and ".." in parts:
        why = "'..' climbs out of the root"
    if why is not None:
        raise UnsafePath(
            f"refusing the listed path {path!r}: {why}",
            "use an archive or folder whose paths are relative and stay under its root",
        )
    return parts


def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def _path_skip(parts: tuple[str, ...], link: bool) -> Skip | None:
    """The reasons to skip a file that depend on its path alone."""
    if any(_hidden(p) for p in parts):
        return Skip.HIDDEN
    if link:
        return Skip.LINK
    if not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
        return Skip.NOT_IMAGE
    return None


def _as_listed(item: Listed | str) -> Listed:
    return item if isinstance(item, Listed) else Listed(item)


@dataclass
class _Tally:
    images: int = 0
    size: int | None = 0

    def add(self, size: int | None) -> None:
        self.images += 1
        self.size = None if self.size is None or size is None else self.size + size


@dataclass(frozen=True)
class Layout:
    """Where the dataset sits in the listing and what it holds; :meth:`entry` classifies any listed path."""

    root: tuple[str, ...]
    kind: Literal["split", "flat"]
    classes: tuple[str, ...]
    test_folder: str | None  # "test", "val" or None
    train_counts: tuple[int, ...]
    test_counts: tuple[int, ...]
    size: int | None  # bytes of all entries, when the listing gave every size
    skipped: dict[str, int] = field(default_factory=dict)
    _labels: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_labels", {name: i for i, name in enumerate(self.classes)})

    @property
    def has_test(self) -> bool:
        return self.test_folder is not None

    @property
    def images(self) -> int:
        return sum(self.train_counts) + sum(self.test_counts)

    def _place(self, rel: tuple[str, ...]) -> tuple[Split, str] | Skip:
        """The split and class of an image path relative to the root (the file name included)."""
        if self.kind == "flat":
            return ("train", rel[0]) if len(rel) >= 2 else Skip.OUTSIDE
        if len(rel) < 3:
            return Skip.OUTSIDE
        if rel[0] == TRAIN:
            return ("train", rel[1])
        if rel[0] == self.test_folder:
            return ("test", rel[1])
        return Skip.UNUSED_SPLIT if rel[0] in SPLIT_FOLDERS else Skip.OUTSIDE

    def classify(self, item: Listed | str) -> Entry | Skip:
        """The entry for a listed path, or why it is skipped (pure: the same answer on every pass)."""
        listed = _as_listed(item)
        if listed.path.endswith("/"):
            return Skip.FOLDER
        parts = parts_of(listed.path)
        reason = _path_skip(parts, listed.link)
        if reason is not None:
            return reason
        if parts[: len(self.root)] != self.root:
            return Skip.OUTSIDE
        rel = parts[len(self.root) :]
        place = self._place(rel)
        if isinstance(place, Skip):
            return place
        split, name = place
        if name not in self._labels:
            raise InputError(
                f"class folder {name!r} of {listed.path!r} was not there when the layout was surveyed",
                "do not change the source while it is read",
            )
        return Entry(listed.path, "/".join(rel), self._labels[name], split, listed.size)

    def entry(self, item: Listed | str) -> Entry | None:
        found = self.classify(item)
        return None if isinstance(found, Skip) else found

    def describe(self) -> str:
        where = "/".join(self.root) + "/" if self.root else "the root"
        test = f"{self.test_folder}/ as test" if self.test_folder else "no test split"
        skipped = ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items())) or "none"
        return (
            f"{self.kind} image folder at {where}: {len(self.classes)} classes, {sum(self.train_counts)} train "
            f"images, {sum(self.test_counts)} test ({test}); skipped: {skipped}"
        )


class Survey:
    """Pass one over a listing: remembers image counts per folder and which folders exist (memory grows with
    folders, not files), then decides the :class:`Layout`."""

    def __init__(self) -> None:
        self._images: dict[tuple[str, ...], _Tally] = {}
        self._folders: set[tuple[str, ...]] = set()
        self._skipped: Counter[str] = Counter()
        self._files = 0

    def add(self, item: Listed | str) -> None:
        listed = _as_listed(item)
        parts = parts_of(listed.path)
        if not parts:
            return
        is_folder = listed.path.endswith("/")
        folder_parts = parts if is_folder else parts[:-1]
        # Folders that exist, up to the first hidden one: a class folder holding only `.DS_Store` is empty.
        for i in range(1, len(folder_parts) + 1):
            if _hidden(folder_parts[i - 1]):
                break
            self._folders.add(folder_parts[:i])
        if is_folder:
            return
        self._files += 1
        reason = _path_skip(parts, listed.link)
        if reason is not None:
            self._skipped[reason] += 1
            return
        self._images.setdefault(parts[:-1], _Tally()).add(listed.size)

    def add_all(self, listing: Listing) -> Survey:
        for item in listing:
            self.add(item)
        return self

    def _root(self) -> tuple[str, ...]:
        """Descend into a lone top-level folder while it is not a split folder and holds no image itself."""
        root: tuple[str, ...] = ()
        while True:
            below = {d[len(root)] for d in self._images if len(d) > len(root)}
            if len(below) != 1 or root in self._images:
                return root
            (only,) = below
            if only in SPLIT_FOLDERS or (*root, only) in self._images:
                return root
            root = (*root, only)

    def layout(self) -> Layout:
        if not self._images:
            raise NoImages(
                f"no image files ({' '.join(IMAGE_EXTENSIONS)}) among {self._files} listed files",
                "point the source at a folder or archive of class folders holding images",
            )
        root = self._root()
        rel = {d[len(root) :]: t for d, t in self._images.items() if d[: len(root)] == root}
        tops = {d[0] for d in rel if len(d) >= 2}
        if TRAIN in tops:
            # Chosen among the folders that exist, so an empty test/ is an error, not a missing split.
            existing = self._class_folders(root, None)
            test_folder = TEST if TEST in existing else VAL if VAL in existing else None
            layout = self._build(root, rel, "split", test_folder)
        elif tops & {TEST, VAL}:
            raise InputError(
                f"{_shown(root)} has a test/ or val/ split but no train/<class>/ folders",
                "put the training images under train/<class>/",
            )
        else:
            layout = self._build(root, rel, "flat", None)
        log.info("%s", layout.describe())
        return layout

    def _build(
        self,
        root: tuple[str, ...],
        rel: dict[tuple[str, ...], _Tally],
        kind: Literal["split", "flat"],
        test_folder: str | None,
    ) -> Layout:
        # One provisional layout places every image folder; counts follow from it.
        probe = Layout(root, kind, (), test_folder, (), (), None)
        counts: dict[tuple[Split, str], _Tally] = {}
        skipped = Counter(self._skipped)
        for folder, tally in rel.items():
            place = probe._place((*folder, "_"))
            if isinstance(place, Skip):
                skipped[place] += tally.images
            else:
                counts.setdefault(place, _Tally()).images += tally.images
                counts[place].size = _sum_sizes(counts[place].size, tally.size)
        skipped[Skip.OUTSIDE] += sum(t.images for d, t in self._images.items() if d[: len(root)] != root)
        classes = tuple(sorted({name for split, name in counts if split == "train"}))
        self._check(root, kind, classes, test_folder, counts)
        size: int | None = 0
        for tally in counts.values():
            size = _sum_sizes(size, tally.size)
        return Layout(
            root=root,
            kind=kind,
            classes=classes,
            test_folder=test_folder,
            train_counts=tuple(counts[("train", c)].images for c in classes),
            test_counts=tuple(counts[("test", c)].images if ("test", c) in counts else 0 for c in classes)
            if test_folder
            else (),
            size=size,
            skipped={k: v for k, v in sorted(skipped.items()) if v},
        )

    def _class_folders(self, root: tuple[str, ...], split_folder: str | None) -> set[str]:
        base = (*root, split_folder) if split_folder else root
        return {f[len(base)] for f in self._folders if len(f) == len(base) + 1 and f[: len(base)] == base}

    def _check(
        self,
        root: tuple[str, ...],
        kind: str,
        classes: tuple[str, ...],
        test_folder: str | None,
        counts: dict[tuple[Split, str], _Tally],
    ) -> None:
        train_folder = TRAIN if kind == "split" else None
        for split, folder in (("train", train_folder), ("test", test_folder)):
            if split == "test" and folder is None:
                continue
            base = (*root, folder) if folder else root
            names = {name for s, name in counts if s == split}
            empty = sorted(self._class_folders(root, folder) - names)
            if empty:
                raise InputError(
                    f"class folder {'/'.join((*base, empty[0]))}/ holds no images "
                    f"({len(empty)} empty class folder(s))",
                    "add images to it or remove it",
                )
            if not names:
                raise InputError(
                    f"the {split} split {'/'.join(base)}/ holds no images", "add class folders with images"
                )
        if len(classes) < 2:
            raise InputError(
                f"{_shown(root)} has {len(classes)} class folder(s) ({', '.join(classes)}); a classifier needs two",
                "lay the images out as <class>/<image> with one folder per class",
            )
        unknown = sorted({name for s, name in counts if s == "test"} - set(classes))
        if unknown:
            raise InputError(
                f"test class {unknown[0]!r} ({test_folder}/) has no train/ folder ({len(unknown)} such classes)",
                "give every test class a train/ folder, or remove it from the test split",
            )


def _sum_sizes(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _shown(root: tuple[str, ...]) -> str:
    return "/".join(root) if root else "the dataset root"


def survey(listing: Listing) -> Layout:
    """The layout of a listing (one pass)."""
    return Survey().add_all(listing).layout()


def entries(listing: Listing, layout: Layout) -> Iterator[Entry]:
    """The images of a listing, in listing order (one streaming pass)."""
    for item in listing:
        entry = layout.entry(item)
        if entry is not None:
            yield entry


def scan(listing: Callable[[], Listing]) -> tuple[Layout, Iterator[Entry]]:
    """The layout (first pass over ``listing()``) and a stream of its entries (a second pass)."""
    layout = survey(listing())
    return layout, entries(listing(), layout)


# -- listings ------------------------------------------------------------------------------------------------


def store_listing(store: Store, url: str) -> Iterator[Listed]:
    """Every file and folder below ``url`` (a local folder or a bucket prefix) as :class:`Listed` paths relative
    to it, each folder's entries in sorted order (the same order on every pass and every store). Symbolic links
    are flagged and not followed."""
    with translate(url):
        fs, base = store.fs(url)
        base = base.rstrip("/")
        if not fs.isdir(base):
            raise InputError(f"{redact(url)} is not a folder or prefix", "pass a folder of class folders")
        for folder, dirs, files in fs.walk(base, detail=True, topdown=True):
            rel_folder = posixpath.relpath(folder, base) if folder.rstrip("/") != base else ""
            prefix = rel_folder + "/" if rel_folder and rel_folder != "." else ""
            subfolders = sorted(dirs.items())
            dirs.clear()  # fsspec's walk descends into what `dirs` holds after the yield, in its order
            for name, info in subfolders:
                if info.get("islink"):
                    yield Listed(prefix + name, None, link=True)  # pruned: not descended into
                else:
                    dirs[name] = info
                    yield Listed(prefix + name + "/")
            for name, info in sorted(files.items()):
                yield Listed(prefix + name, info.get("size"), bool(info.get("islink")), _version(info))


def _version(info: dict[str, object]) -> str | None:
    """What changes when a listed file does: the ETag of an object, else the modification time."""
    for key in ("ETag", "etag", "generation", "mtime", "LastModified", "updated"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return None


def is_regular(member: tarfile.TarInfo | zipfile.ZipInfo) -> bool:
    """Whether an archive member is a plain file (not a folder, link, device or FIFO): the only kind to read."""
    if isinstance(member, tarfile.TarInfo):
        return member.isreg()
    # Zips made without Unix attributes (Windows tools, zipfile.writestr) carry no file-type bits: plain files.
    kind = stat.S_IFMT(member.external_attr >> 16)
    return not member.is_dir() and kind in (0, stat.S_IFREG)


def archive_listing(members: Iterable[tarfile.TarInfo | zipfile.ZipInfo]) -> Iterator[Listed]:
    """An archive's members as :class:`Listed` paths (folders end with ``/``, links and devices are flagged)."""
    for member in members:
        if isinstance(member, tarfile.TarInfo):
            name, size, folder = member.name, member.size, member.isdir()
        else:
            name, size, folder = member.filename, member.file_size, member.is_dir()
        if folder:
            yield Listed(name.rstrip("/") + "/")
        else:
            yield Listed(name, size, link=not is_regular(member))
