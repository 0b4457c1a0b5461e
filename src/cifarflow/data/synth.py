"""Synthetic CIFAR archives: learnable images written in CIFAR's exact on-disk formats.

CIFAR-10 cannot be downloaded everywhere (CI, air-gapped clusters), and scale studies need 10x or 50x of it.
This module writes tarballs that every CIFAR reader accepts unchanged: the same file names, the same pickles
(protocol 2 with Python 2 byte strings, so ``pickle.load(f, encoding="bytes")`` gives ``bytes`` keys like the
originals) and the same fixed-size binary records.

Each class is an oriented grating with its own angle and frequency, drawn inside a soft window at a random
position, over a random background, with colour jitter and pixel noise. Pairs of classes share a hue, so
colour alone is not enough: a model has to learn orientation and frequency (a small CNN does; a linear model
on pixels barely does). Images are generated in chunks straight into the compressed tar stream, so memory
stays bounded however many images are asked for, and the same arguments always give byte-identical archives.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import logging
import math
import os
import pickle
import struct
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from queue import Empty, Queue
from typing import IO, Any, ClassVar

import numpy as np

from cifarflow.data.cifar import CHANNELS, HEIGHT, IMAGE_BYTES, LAYOUTS, ROWS_PER_BATCH, WIDTH, Layout
from cifarflow.errors import InputError
from cifarflow.storage import Store, basename, join, local_tmp, normalize, redact, translate

log = logging.getLogger(__name__)

ARCHIVE_NAMES = {
    "cifar10-python": "cifar-10-python.tar.gz",
    "cifar10-binary": "cifar-10-binary.tar.gz",
    "cifar100-python": "cifar-100-python.tar.gz",
    "cifar100-binary": "cifar-100-binary.tar.gz",
}

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
# CIFAR-100's superclasses and their five classes each. Class indices are alphabetical, as in the originals.
CIFAR100_GROUPS = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
CIFAR100_FINE = sorted(n for names in CIFAR100_GROUPS.values() for n in names)
CIFAR100_COARSE = sorted(CIFAR100_GROUPS)
_COARSE_OF = {
    fine: CIFAR100_COARSE.index(group) for group, names in CIFAR100_GROUPS.items() for fine in names
}
COARSE_OF_FINE = np.array([_COARSE_OF[n] for n in CIFAR100_FINE], dtype=np.int64)

CHUNK = 1024  # images generated per vectorised step (~12 MB of float32 scratch)
_MTIME = 1_243_814_400  # tar/gzip timestamps are fixed so the same arguments give byte-identical archives
_MAX_BINSTRING = 2**31 - 1  # protocol-2 byte strings are at most 2 GiB


# -- images --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassTable:
    """Per-class pattern parameters. Fixed (not seeded) so archives written with different seeds agree."""

    angle: np.ndarray  # radians
    freq: np.ndarray  # cycles per image
    hue: np.ndarray  # [0, 1)

    @classmethod
    def for_classes(cls, classes: int) -> ClassTable:
        c = np.arange(classes)
        # Ten orientations; frequency and hue vary with the class's other digits, so neighbouring classes
        # differ in more than one way but no single cue separates all of them.
        angle = (c % 10) * (math.pi / 10) + (c // 10) * (math.pi / 200)
        freq = 1.5 + ((c * 7 + c // 10) % 10) * 0.3
        hue = ((c // 2) * 0.618034 + (c // 10) * 0.1) % 1.0
        return cls(angle=angle, freq=freq, hue=hue)


def _hue_rgb(hue: np.ndarray) -> np.ndarray:
    """Saturated RGB in [0, 1] for hues in [0, 1) (the HSV cone at s = v = 1)."""
    k = (np.asarray(hue)[..., None] * 6 + np.array([5.0, 3.0, 1.0])) % 6
    return 1 - np.clip(np.minimum(k, 4 - k), 0, 1)


_YY, _XX = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)


def render(labels: np.ndarray, table: ClassTable, rng: np.random.Generator) -> np.ndarray:
    """Images for ``labels`` as (n, 3072) uint8 rows of R, G and B planes (CIFAR's CHW order)."""
    n = labels.shape[0]
    f32 = np.float32
    angle = (table.angle[labels] + rng.normal(0, 0.08, size=n)).astype(f32)
    freq = (table.freq[labels] * rng.uniform(0.85, 1.15, size=n)).astype(f32)
    phase = np.asarray(rng.uniform(0, 2 * math.pi, size=n), dtype=f32)
    # The pattern sits in a soft window at a random place (random shifts make position useless as a cue).
    cx, cy = (rng.uniform(8, 24, (2, n))).astype(f32)
    sigma = np.asarray(rng.uniform(6, 11, size=n), dtype=f32)
    contrast = np.asarray(rng.uniform(0.45, 1.0, size=n), dtype=f32)

    u = (_XX[None] * np.cos(angle)[:, None, None] + _YY[None] * np.sin(angle)[:, None, None]) / WIDTH
    wave = 0.5 + 0.5 * np.sin(2 * math.pi * freq[:, None, None] * u + phase[:, None, None])
    r2 = (_XX[None] - cx[:, None, None]) ** 2 + (_YY[None] - cy[:, None, None]) ** 2
    window = contrast[:, None, None] * np.exp(-r2 / (2 * sigma[:, None, None] ** 2))

    fg = _hue_rgb(table.hue[labels] + rng.normal(0, 0.04, size=n)).astype(f32)  # (n, 3)
    dark = fg * rng.uniform(0.0, 0.35, (n, 1)).astype(f32)
    bg = rng.uniform(0.15, 0.85, (n, CHANNELS)).astype(f32)
    # (n, 3, H, W): background blended with a two-tone grating of the class's hue.
    tone = dark[:, :, None, None] + (fg - dark)[:, :, None, None] * wave[:, None]
    img = bg[:, :, None, None] + window[:, None] * (tone - bg[:, :, None, None])
    img *= 255
    # Uniform pixel noise (+-15 of 255) from random bytes: a third of the cost of Gaussian noise. Stronger
    # noise would make the archive incompressible (CIFAR's own tarball is 92% of its contents) and gzip
    # slower.
    img += rng.integers(0, 256, img.shape, dtype=np.uint8) * f32(0.12) - f32(15.3 - 0.5)
    return np.clip(img, 0, 255, out=img).astype(np.uint8).reshape(n, IMAGE_BYTES)


# -- members -------------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One data member's worth of images: which rows, which labels, how they are seeded."""

    name: str  # "train" | "test"
    index: int  # batch number within the split (0-based)
    labels: np.ndarray  # (rows,) fine labels
    first: int  # index of the first image within its split

    def chunks(self, table: ClassTable, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(labels, CHW rows)`` per chunk, each chunk seeded by its own position: order-independent."""
        code = 0 if self.name == "train" else 1
        for start in range(0, len(self.labels), CHUNK):
            labels = self.labels[start : start + CHUNK]
            rng = np.random.default_rng([seed, code, self.index, start])
            yield labels, render(labels, table, rng)


@dataclass
class Member:
    """A tar member whose bytes are produced on demand: ``parts`` yields them, ``size`` is known up front."""

    name: str
    size: int
    parts: Callable[[], Iterable[bytes]]
    rows: int = 0  # images it holds (for progress)


def _bytes_member(name: str, data: bytes) -> Member:
    return Member(name, len(data), lambda: (data,))


class _Lazy:
    """A large byte string pickled without holding it: its size is known, its bytes come from ``parts``."""

    def __init__(self, size: int, parts: Callable[[], Iterable[bytes]]) -> None:
        self.size = size
        self.parts = parts


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2's cPickle wrote CIFAR.

    ``bytes`` become byte strings (BINSTRING), not the ``_codecs.encode`` calls Python 3 emits, so images are
    stored as-is (no 1.5x latin-1 blow-up) and ``encoding="bytes"`` loads them like the originals. Output goes
    to a list of pieces; a :class:`_Lazy` stays a placeholder whose bytes are streamed later.
    """

    def __init__(self) -> None:
        self.pieces: list[bytes | _Lazy] = []
        super().__init__(io.BytesIO(), protocol=2)
        self.write = self._append

    def _append(self, data: bytes) -> int:
        self.pieces.append(bytes(data))
        return len(data)

    def save_bytes(self, obj: bytes) -> None:
        self._binstring(len(obj))
        self.pieces.append(bytes(obj))

    def save_lazy(self, obj: _Lazy) -> None:
        self._binstring(obj.size)
        self.pieces.append(obj)

    def _binstring(self, size: int) -> None:
        if size < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([size]))
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", size))

    dispatch: ClassVar[dict[type, Any]] = {**pickle._Pickler.dispatch, bytes: save_bytes, _Lazy: save_lazy}


class _LazyArray:
    """Pickles like a numpy uint8 array of shape (rows, 3072) without materialising it."""

    def __init__(self, rows: int, parts: Callable[[], Iterable[bytes]]) -> None:
        self.rows = rows
        self.parts = parts

    def __reduce__(self) -> tuple[Any, ...]:
        template = np.zeros((0,), dtype=np.uint8).__reduce__()
        reconstruct, args = template[0], template[1]
        state = (
            1,
            (self.rows, IMAGE_BYTES),
            np.dtype(np.uint8),
            False,
            _Lazy(self.rows * IMAGE_BYTES, self.parts),
        )
        return reconstruct, args, state


def _pickle_member(name: str, obj: dict[bytes, Any], rows: int = 0) -> Member:
    pickler = _Py2Pickler()
    pickler.dump(obj)
    # Join the small pieces (keys, labels, file names) so only the image data is streamed piecemeal.
    pieces: list[bytes | _Lazy] = []
    for piece in pickler.pieces:
        if isinstance(piece, bytes) and pieces and isinstance(pieces[-1], bytes):
            pieces[-1] += piece
        else:
            pieces.append(piece)
    size = sum(p.size if isinstance(p, _Lazy) else len(p) for p in pieces)

    def parts() -> Iterator[bytes]:
        for piece in pieces:
            if isinstance(piece, _Lazy):
                yield from piece.parts()
            else:
                yield piece

    return Member(name, size, parts, rows)


def _filenames(names: list[str], split: Split) -> list[bytes]:
    return [f"{names[y]}_s_{split.first + i:06d}.png".encode() for i, y in enumerate(split.labels.tolist())]


def _python_member(layout: Layout, split: Split, count: int, table: ClassTable, seed: int) -> Member:
    rows = len(split.labels)
    if rows * IMAGE_BYTES > _MAX_BINSTRING:
        raise InputError(
            f"{rows} images do not fit one python-format CIFAR file (protocol-2 pickles hold at most 2 GiB)",
            "use --format binary for this many images",
        )

    def data() -> Iterator[bytes]:
        for _, chw in split.chunks(table, seed):
            yield chw.tobytes()

    kind = "training" if split.name == "train" else "testing"
    labels = split.labels.tolist()
    obj: dict[bytes, Any] = {b"batch_label": f"{kind} batch {split.index + 1} of {count}".encode()}
    if layout.dataset == "cifar10":
        obj[b"labels"] = labels
        names = CIFAR10_NAMES
    else:
        obj[b"fine_labels"] = labels
        obj[b"coarse_labels"] = COARSE_OF_FINE[split.labels].tolist()
        names = CIFAR100_FINE
    obj[b"data"] = _LazyArray(rows, data)
    obj[b"filenames"] = _filenames(names, split)
    if layout.dataset == "cifar10":
        member = "test_batch" if split.name == "test" else f"data_batch_{split.index + 1}"
    else:
        member = split.name
    return _pickle_member(f"{layout.root}/{member}", obj, rows)


def _binary_member(layout: Layout, split: Split, table: ClassTable, seed: int) -> Member:
    def records() -> Iterator[bytes]:
        for labels, chw in split.chunks(table, seed):
            recs = np.empty((len(labels), layout.record_bytes), dtype=np.uint8)
            if layout.label_bytes == 2:
                recs[:, 0] = COARSE_OF_FINE[labels]
            recs[:, layout.label_offset] = labels
            recs[:, layout.label_bytes :] = chw
            yield recs.tobytes()

    if layout.dataset == "cifar10":
        member = "test_batch.bin" if split.name == "test" else f"data_batch_{split.index + 1}.bin"
    else:
        member = f"{split.name}.bin"
    rows = len(split.labels)
    return Member(f"{layout.root}/{member}", rows * layout.record_bytes, records, rows)


def _meta_members(layout: Layout) -> list[Member]:
    root = layout.root
    if layout.name == "cifar10-python":
        meta = {
            b"num_cases_per_batch": ROWS_PER_BATCH,
            b"label_names": [n.encode() for n in CIFAR10_NAMES],
            b"num_vis": IMAGE_BYTES,
        }
        return [_pickle_member(f"{root}/batches.meta", meta)]
    if layout.name == "cifar100-python":
        meta = {
            b"fine_label_names": [n.encode() for n in CIFAR100_FINE],
            b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE],
        }
        return [_pickle_member(f"{root}/meta", meta)]
    if layout.name == "cifar10-binary":
        return [_bytes_member(f"{root}/batches.meta.txt", ("\n".join(CIFAR10_NAMES) + "\n\n").encode())]
    return [
        _bytes_member(f"{root}/coarse_label_names.txt", ("\n".join(CIFAR100_COARSE) + "\n").encode()),
        _bytes_member(f"{root}/fine_label_names.txt", ("\n".join(CIFAR100_FINE) + "\n").encode()),
    ]


def _readme(layout: Layout, train: int, test: int, seed: int) -> Member:
    html = (
        "<html><body><h1>Synthetic CIFAR</h1><p>Written by <code>cifarflow synth</code> in the on-disk "
        f"format of {layout.name}: {train} train and {test} test images, seed {seed}. The images are "
        "generated patterns, not photographs.</p></body></html>\n"
    )
    return _bytes_member(f"{layout.root}/readme.html", html.encode())


def train_batches(train: int) -> int:
    """CIFAR-10 has five train batches of 10k; larger sets get more batches of at most 10k."""
    return max(5, math.ceil(train / ROWS_PER_BATCH))


def _balanced_labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    # Every class equally often (to within one), in random order, like CIFAR's splits.
    return rng.permutation(np.arange(n, dtype=np.int64) % classes)


def members(layout: Layout, *, train: int, test: int, seed: int) -> list[Member]:
    """The archive's members in order; their bytes are produced only when written."""
    table = ClassTable.for_classes(layout.num_classes)
    rng = np.random.default_rng([seed, 2])
    train_labels = _balanced_labels(train, layout.num_classes, rng)
    test_labels = _balanced_labels(test, layout.num_classes, rng)
    if layout.dataset == "cifar10":
        count = train_batches(train)
        bounds = np.linspace(0, train, count + 1).round().astype(int)
        trains = [
            Split("train", i, train_labels[a:b], int(a))
            for i, (a, b) in enumerate(itertools.pairwise(bounds))
        ]
    else:
        count = 1
        trains = [Split("train", 0, train_labels, 0)]
    tests = [Split("test", 0, test_labels, 0)]
    out = _meta_members(layout)
    for split in trains + tests:
        if layout.kind == "python":
            out.append(_python_member(layout, split, count if split.name == "train" else 1, table, seed))
        else:
            out.append(_binary_member(layout, split, table, seed))
    if layout.dataset == "cifar10":
        out.append(_readme(layout, train, test, seed))
    return out


# -- the archive ---------------------------------------------------------------------------------------------


class _PartsReader(io.RawIOBase):
    """A read-only file over an iterator of byte strings (what ``tarfile.addfile`` pulls from)."""

    def __init__(self, parts: Iterable[bytes]) -> None:
        self._parts = iter(parts)
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            nxt = next(self._parts, None)
            if nxt is None:
                return 0
            self._buf = memoryview(nxt)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _prefetched(parts: Iterable[bytes], depth: int = 2) -> Iterator[bytes]:
    """Produce ``parts`` in a background thread: numpy rendering and zlib compression both release the GIL, so
    generating the next chunk overlaps compressing this one (close to 2x on two cores)."""
    queue: Queue[tuple[bytes | None, BaseException | None]] = Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for part in parts:
                if stop.is_set():
                    return
                queue.put((part, None))
            queue.put((None, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            queue.put((None, exc))

    worker = threading.Thread(target=produce, name="synth-render", daemon=True)
    worker.start()
    try:
        while True:
            part, err = queue.get()
            if err is not None:
                raise err
            if part is None:
                return
            yield part
    finally:
        stop.set()
        # Unblock a producer waiting on a full queue so it sees ``stop`` and ends.
        while worker.is_alive():
            with contextlib.suppress(Empty):
                queue.get(timeout=0.05)


def write_tar(
    handle: IO[bytes], items: list[Member], *, on_member: Callable[[Member], None] | None = None
) -> None:
    """Stream members into a deterministic ``.tar.gz`` (fixed timestamps and owners, fast gzip level)."""
    # Level 1: synthetic noise barely compresses, and level 9 would make 500k images take minutes.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=handle, compresslevel=1, mtime=_MTIME) as gz,
        tarfile.open(fileobj=gz, mode="w|", format=tarfile.GNU_FORMAT) as tar,
    ):
        root = items[0].name.split("/", 1)[0]
        tar.addfile(_info(root, 0, tarfile.DIRTYPE))
        for item in items:
            tar.addfile(
                _info(item.name, item.size, tarfile.REGTYPE),
                io.BufferedReader(_PartsReader(_prefetched(item.parts()))),
            )
            if on_member is not None:
                on_member(item)


def _info(name: str, size: int, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.mtime = size, kind, _MTIME
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.uname = info.gname = ""
    return info


def archive_url(out: str, layout: Layout) -> str:
    """``out`` itself when it names a tarball, else the official file name inside the folder ``out``."""
    out = normalize(out)
    if out.endswith((".tar.gz", ".tgz")):
        return out
    return join(out, ARCHIVE_NAMES[layout.name])


def write_archive(out: str, *, train: int, test: int, fmt: str, classes: int, seed: int, store: Store) -> str:
    """Write a synthetic CIFAR tarball and return its URL (local path or bucket URL, written atomically)."""
    if classes not in (10, 100):
        raise InputError(f"--classes {classes} is not a CIFAR variant", "use --classes 10 or --classes 100")
    if fmt not in ("python", "binary"):
        raise InputError(f"--format {fmt} is not a CIFAR format", "use --format python or --format binary")
    if train < 1 or test < 1:
        raise InputError(
            "synthetic archives need at least one train and one test image", "pass --train/--test >= 1"
        )
    layout = LAYOUTS[f"cifar{classes}-{fmt}"]
    url = archive_url(out, layout)
    store.check_folder(url.rsplit("/", 1)[0], "--out")
    items = members(layout, train=train, test=test, seed=seed)
    images = train + test
    started = time.perf_counter()
    log.info("writing %d synthetic images (%s) to %s", images, layout.name, redact(url))

    from cifarflow.cli.common import progress

    with progress() as bar:
        task = bar.add_task(f"synth {basename(url)}", total=images)
        with _atomic_target(store, url) as handle:
            write_tar(handle, items, on_member=lambda member: bar.advance(task, member.rows))
    seconds = time.perf_counter() - started
    log.info(
        "wrote %s: %d images in %.1f s (%.0f images/s)",
        redact(url),
        images,
        seconds,
        images / max(seconds, 1e-9),
    )
    return url


@contextlib.contextmanager
def _atomic_target(store: Store, url: str) -> Iterator[IO[bytes]]:
    """A file to write the archive into; it appears at ``url`` only if the block finishes."""
    if url.startswith("file://"):
        path = url[len("file://") :]
        # Disk full or read-only: one line, and the temporary file is removed.
        with translate(url), local_tmp(path) as tmp, open(tmp, "wb") as handle:
            yield handle
        return
    # Object stores: build the tarball on local disk, then one upload (a multipart upload only becomes visible
    # when it completes, so readers never see a partial archive).
    with tempfile.TemporaryDirectory(prefix="cifarflow-synth-") as tmpdir:
        tmp = os.path.join(tmpdir, basename(url))
        with open(tmp, "wb") as handle:
            yield handle
        store.put_file(tmp, url)
