"""A learnable synthetic class-per-folder image dataset (PNG/JPEG mixed), as a folder or a one-folder archive.

It backs ``cifarflow synth --format folder``: tests and benchmarks of the image-folder path need files with the
properties of real ones (mixed formats, chosen or varied sizes, nested layout, archives with one top-level folder)
on machines without network. Each class is a shape (eight kinds) in a hue; pairs of classes share a hue, so colour
alone separates at most half of them and the shape must be learnt. Every image has its own random position,
scale, rotation, background and pixel noise, so the task is not trivial. Class ``c`` is named
``<c>_<shape>`` (zero-padded), so sorted names keep the class order.

The same arguments give byte-identical files and archives: every image is drawn from its own generator seeded by
``(seed, split, index)``, archives carry fixed timestamps and owners.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import os
import shutil
import stat
import tarfile
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from cifarflow.errors import ConflictError, InputError
from cifarflow.storage import Store, basename, join, local_tmp, normalize, redact, translate

log = logging.getLogger(__name__)

# name -> (Pillow format, file extension, save options)
FORMATS: dict[str, tuple[str, str, dict[str, object]]] = {
    "png": ("PNG", ".png", {"compress_level": 1}),  # level 1: near the size of 6 on noisy pixels, 3x faster
    "jpeg": ("JPEG", ".jpg", {"quality": 90}),
    "bmp": ("BMP", ".bmp", {}),
    "webp": ("WEBP", ".webp", {"quality": 90, "method": 0}),
}
SHAPES = ("disc", "square", "triangle", "ring", "cross", "bars", "diamond", "stripes")
ARCHIVES = {"tar.gz": (".tar.gz", ".tgz"), "zip": (".zip",)}
MIN_SIZE = 8
_EPOCH = (1980, 1, 1, 0, 0, 0)  # zip's earliest date; tar gets the same instant
_MTIME = 315_532_800

FolderLayout = Literal["split", "flat"]
Archive = Literal["tar.gz", "zip"]


def class_names(classes: int) -> tuple[str, ...]:
    digits = len(str(classes - 1))
    return tuple(f"{c:0{digits}d}_{SHAPES[c % len(SHAPES)]}" for c in range(classes))


def _hue_rgb(hue: float) -> np.ndarray:
    """Saturated RGB in [0, 1] (the HSV cone at s = v = 1)."""
    k = (hue * 6 + np.array([5.0, 3.0, 1.0])) % 6
    return np.asarray(1 - np.clip(np.minimum(k, 4 - k), 0, 1))


def _mask(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The shape in coordinates where it spans about [-1, 1]."""
    r = np.hypot(x, y)
    masks: dict[str, Callable[[], np.ndarray]] = {
        "disc": lambda: r <= 1,
        "square": lambda: np.maximum(np.abs(x), np.abs(y)) <= 0.8,
        "triangle": lambda: (y <= 0.75) & (np.abs(x) <= (0.75 - y) * 0.6) & (y >= -1),
        "ring": lambda: (r <= 1) & (r >= 0.6),
        "cross": lambda: (
            ((np.abs(x) <= 0.25) | (np.abs(y) <= 0.25)) & (np.maximum(np.abs(x), np.abs(y)) <= 1)
        ),
        "bars": lambda: (np.maximum(np.abs(x), np.abs(y)) <= 0.9) & (np.sin(x * 2.5 * math.pi) > 0),
        "diamond": lambda: np.abs(x) + np.abs(y) <= 1,
        "stripes": lambda: (r <= 1) & (np.sin((x + y) * 2.2 * math.pi) > 0),
    }
    return masks[shape]()


def render(label: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(height, width, 3)`` uint8 image of class ``label``."""
    side = min(width, height)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx = width / 2 + rng.uniform(-0.2, 0.2) * side
    cy = height / 2 + rng.uniform(-0.2, 0.2) * side
    scale = rng.uniform(0.28, 0.45) * side
    angle = rng.uniform(-0.35, 0.35)
    u, v = (xx - cx) / scale, (yy - cy) / scale
    x = u * math.cos(angle) + v * math.sin(angle)
    y = -u * math.sin(angle) + v * math.cos(angle)
    inside = _mask(SHAPES[label % len(SHAPES)], x, y)

    hue = (label // 2) * 0.618034 % 1.0  # pairs of classes share a hue
    fg = _hue_rgb(hue + rng.normal(0, 0.03)) * rng.uniform(0.6, 1.0) * 255
    bg = rng.uniform(0.1, 0.9, 3) * rng.uniform(0.4, 1.0) * 255
    img = np.where(inside[..., None], fg.astype(np.float32), bg.astype(np.float32))
    # Uniform noise of +-25 from random bytes (a third of the cost of float draws).
    img += rng.integers(0, 51, img.shape, dtype=np.uint8).astype(np.float32) - np.float32(25)
    return np.clip(img, 0, 255, out=img).round(out=img).astype(np.uint8)


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    pillow_format, _, options = FORMATS[fmt]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, pillow_format, **options)
    return buf.getvalue()


def _image_size(size: int, vary: float, rng: np.random.Generator) -> tuple[int, int]:
    if not vary:
        return size, size
    low, high = max(MIN_SIZE, round(size * (1 - vary))), round(size * (1 + vary))
    width, height = rng.integers(low, high + 1, 2)
    return int(width), int(height)


@dataclass(frozen=True)
class FolderSpec:
    """What to generate; checked on construction (one-line :class:`InputError`)."""

    classes: int
    train: int
    test: int
    size: int
    seed: int
    formats: Sequence[str] = ("png", "jpeg")
    layout: FolderLayout = "split"
    vary: float = 0.0

    def __post_init__(self) -> None:
        problems = [
            (self.classes < 2, f"--classes {self.classes}: a classifier needs at least 2"),
            (self.train < self.classes, f"--train {self.train} leaves a class without images"),
            (self.test < 0, f"--test {self.test} is negative"),
            (self.size < MIN_SIZE, f"--image-size {self.size} is under {MIN_SIZE} pixels"),
            (
                not self.formats or any(f not in FORMATS for f in self.formats),
                f"formats {list(self.formats)}",
            ),
            (self.layout not in ("split", "flat"), f"layout {self.layout!r}"),
            (not 0 <= self.vary < 1, f"size variation {self.vary} is outside [0, 1)"),
        ]
        for bad, problem in problems:
            if bad:
                raise InputError(
                    problem,
                    f"use >= 2 classes, train >= classes, size >= {MIN_SIZE}, formats from {list(FORMATS)}",
                )


def images(spec: FolderSpec) -> Iterator[tuple[str, bytes]]:
    """``(relative path, encoded bytes)`` of every image, classes balanced (image ``i`` is class ``i % classes``).

    ``layout="flat"`` puts the train and test images together under ``<class>/`` (no split folders).
    """
    names = class_names(spec.classes)
    for split_id, (split, count) in enumerate((("train", spec.train), ("test", spec.test))):
        for i in range(count):
            rng = np.random.default_rng([spec.seed, split_id, i])
            label = i % spec.classes
            fmt = spec.formats[
                int(rng.integers(len(spec.formats)))
            ]  # drawn: the format is no cue to the class
            width, height = _image_size(spec.size, spec.vary, rng)
            folder = f"{split}/{names[label]}" if spec.layout == "split" else names[label]
            yield (
                f"{folder}/{split}_{i:06d}{FORMATS[fmt][1]}",
                _encode(render(label, width, height, rng), fmt),
            )


def _refuse_existing(store: Store, url: str) -> None:
    if store.exists(url) and (not store.is_dir(url) or store.list(url)):
        raise ConflictError(f"{redact(url)} already exists", "choose a new --out, or remove it first")


def _write_folder(store: Store, url: str, items: Iterator[tuple[str, bytes]]) -> int:
    """Write the files; on a local disk into a temporary sibling renamed at the end, so a failed run leaves
    nothing. A bucket has no rename: objects appear one by one (rerunning rewrites identical bytes)."""
    written = 0
    if url.startswith("file://"):
        path = url[len("file://") :]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            # Plain writes: the folder as a whole is what appears atomically. Disk full: one line.
            with translate(url):
                for rel, data in items:
                    target = os.path.join(tmp, rel)
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with open(target, "wb") as handle:
                        handle.write(data)
                    written += len(data)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(path)  # an empty folder may stand in the way of the rename
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return written
    for rel, data in items:
        store.write_bytes(join(url, rel), data)
        written += len(data)
    return written


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), _MTIME, 0o644
    tar.addfile(info, io.BytesIO(data))


def _zip_member(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_EPOCH)
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    zf.writestr(info, data, compress_type=zipfile.ZIP_STORED)  # PNG/JPEG do not shrink further


def _write_archive(path: str, kind: Archive, top: str, items: Iterator[tuple[str, bytes]]) -> int:
    written = 0
    with open(path, "wb") as raw:
        if kind == "zip":
            with zipfile.ZipFile(raw, "w") as zf:
                for rel, data in items:
                    _zip_member(zf, f"{top}/{rel}", data)
                    written += len(data)
        else:
            with (
                # No file name or time in the gzip header: the same arguments give the same bytes.
                gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=1) as gz,
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
            ):
                for rel, data in items:
                    _tar_member(tar, f"{top}/{rel}", data)
                    written += len(data)
    return written


def _archive_top(url: str, kind: Archive) -> str:
    name = basename(url)
    for suffix in ARCHIVES[kind]:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    raise InputError(
        f"--out {redact(url)} does not end with {' or '.join(ARCHIVES[kind])}",
        f"name the {kind} archive e.g. {name or 'images'}{ARCHIVES[kind][0]}",
    )


def write_image_folder(
    out_url: str,
    *,
    classes: int,
    train: int,
    test: int,
    size: int,
    seed: int,
    store: Store,
    formats: Sequence[str] = ("png", "jpeg"),
    layout: FolderLayout = "split",
    vary: float = 0.0,
    archive: Archive | None = None,
) -> str:
    """Write a synthetic image folder at ``out_url`` (a folder, or with ``archive`` a ``.tar.gz``/``.zip`` file
    whose members sit under one top-level folder named after the file); returns the URL written.

    ``layout="split"`` writes ``train/<class>/`` and, when ``test > 0``, ``test/<class>/``; ``"flat"`` writes
    ``<class>/`` only. ``vary`` draws each image's width and height from ``size * [1 - vary, 1 + vary]``.
    Refuses (:class:`ConflictError`) a destination that already holds something.
    """
    spec = FolderSpec(classes, train, test, size, seed, tuple(formats), layout, vary)
    url = normalize(out_url).rstrip("/")
    top = _archive_top(url, archive) if archive else None
    _refuse_existing(store, url)
    items = images(spec)
    started = time.perf_counter()
    if archive is None or top is None:
        written = _write_folder(store, url, items)
    elif url.startswith("file://"):
        # Disk full or read-only: one line, and the temporary file is removed.
        with translate(url), local_tmp(url[len("file://") :]) as tmp:
            written = _write_archive(tmp, archive, top, items)
    else:
        with tempfile.TemporaryDirectory(prefix="cifarflow-synth-") as scratch:
            tmp = os.path.join(scratch, basename(url))
            written = _write_archive(tmp, archive, top, items)
            store.put_file(tmp, url)  # one upload: readers never see a partial archive
    seconds = time.perf_counter() - started
    log.info("wrote %s to %s in %.1f s (%.1f MB of images)", spec, redact(url), seconds, written / 1e6)
    return url
