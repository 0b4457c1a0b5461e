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

The modules: :mod:`.images` (class names and patterns), :mod:`.py2pickle` (CIFAR's pickles, streamed),
:mod:`.batches` (each variant's members), :mod:`.tarball` (the deterministic ``.tar.gz``); the step is here.
"""

from __future__ import annotations

import logging
import time

from cifarflow.data.cifar import LAYOUTS, Layout
from cifarflow.data.synth.batches import members, train_batches
from cifarflow.data.synth.images import (
    CIFAR10_NAMES,
    CIFAR100_COARSE,
    CIFAR100_FINE,
    CIFAR100_GROUPS,
    COARSE_OF_FINE,
    ClassTable,
    render,
)
from cifarflow.data.synth.tarball import Member, write_tar
from cifarflow.errors import InputError
from cifarflow.progress import progress
from cifarflow.storage import Store, basename, join, normalize, redact

__all__ = [
    "ARCHIVE_NAMES",
    "CIFAR10_NAMES",
    "CIFAR100_COARSE",
    "CIFAR100_FINE",
    "CIFAR100_GROUPS",
    "COARSE_OF_FINE",
    "ClassTable",
    "Member",
    "archive_url",
    "members",
    "render",
    "train_batches",
    "write_archive",
    "write_tar",
]

log = logging.getLogger(__name__)

ARCHIVE_NAMES = {
    "cifar10-python": "cifar-10-python.tar.gz",
    "cifar10-binary": "cifar-10-binary.tar.gz",
    "cifar100-python": "cifar-100-python.tar.gz",
    "cifar100-binary": "cifar-100-binary.tar.gz",
}


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
    with progress() as bar:
        task = bar.add_task(f"synth {basename(url)}", total=images)
        with store.write_atomic(url) as handle:
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
