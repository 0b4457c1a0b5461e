"""The members of a synthetic archive in each CIFAR variant: data batches, meta files, the readme."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cifarflow.data.cifar import IMAGE_BYTES, ROWS_PER_BATCH, Layout
from cifarflow.data.synth.images import (
    CIFAR10_NAMES,
    CIFAR100_COARSE,
    CIFAR100_FINE,
    COARSE_OF_FINE,
    ClassTable,
    render,
)
from cifarflow.data.synth.py2pickle import LazyArray, pickle_member
from cifarflow.data.synth.tarball import Member
from cifarflow.errors import InputError

CHUNK = 1024  # images generated per vectorised step (~12 MB of float32 scratch)

_MAX_BINSTRING = 2**31 - 1  # protocol-2 byte strings are at most 2 GiB


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


def _bytes_member(name: str, data: bytes) -> Member:
    return Member(name, len(data), lambda: (data,))


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
    obj[b"data"] = LazyArray(rows, data)
    obj[b"filenames"] = _filenames(names, split)
    if layout.dataset == "cifar10":
        member = "test_batch" if split.name == "test" else f"data_batch_{split.index + 1}"
    else:
        member = split.name
    return pickle_member(f"{layout.root}/{member}", obj, rows)


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
        return [pickle_member(f"{root}/batches.meta", meta)]
    if layout.name == "cifar100-python":
        meta = {
            b"fine_label_names": [n.encode() for n in CIFAR100_FINE],
            b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE],
        }
        return [pickle_member(f"{root}/meta", meta)]
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
