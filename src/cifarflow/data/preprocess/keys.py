"""Per image and per class, in numpy: the seeded split keys, val counts and cut-offs, exact per-channel
moments (content hashes are :mod:`cifarflow.data.content_index`'s). No Spark, no storage: the same functions
run on executors and in tests."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from cifarflow.data.content_index import HASH_BYTES, content_hashes

__all__ = [
    "HASH_BYTES",
    "Cutoffs",
    "channel_moments",
    "content_hashes",
    "mean_std",
    "parse_id",
    "split_keys",
    "val_count",
]

_INT64_MIN = np.iinfo(np.int64).min


def val_count(n: int, val_fraction: float) -> int:
    """How many of a class's ``n`` train images go to val: ``n * val_fraction`` rounded half up."""
    return math.floor(n * val_fraction + 0.5)


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: a bijection of uint64 that spreads every input bit over the output.
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def split_keys(hashes: np.ndarray, seed: int) -> np.ndarray:
    """int64 sort keys from content hashes and the seed: a seeded, uniform, content-addressed order."""
    words = np.ascontiguousarray(hashes).view("<u8").reshape(-1, 2)
    salt = _mix(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) ^ np.uint64(0x9E3779B97F4A7C15))
    return _mix(words[:, 0] ^ _mix(words[:, 1] ^ salt)).view(np.int64)


# A float32 sum of 256 squares of uint8 (at most 16,646,400 < 2**24) is an exact integer, whatever the order.
_EXACT_BLOCK = 256
_ONES = np.ones(_EXACT_BLOCK, dtype=np.float32)


def channel_moments(images: np.ndarray, rows: int | None = None) -> tuple[list[int], list[int]]:
    """Exact per-channel (R, G, B) pixel sums and sums of squares of (n, H*W*3) uint8 HWC rows. Each block
    of 256 pixels is summed in float32 by one matrix product (exact: see :data:`_EXACT_BLOCK`), the blocks in
    float64 (exact below 2**53) and the chunks as Python ints: 2.3x faster than 256-bin histograms."""
    if rows is None:  # ~0.8 MB of pixels at a time (3 MB as float32): stays in cache at any image size
        rows = max(1, (256 * 3072) // max(1, images.shape[1] if images.ndim > 1 else 1))
    sums, squares = [0, 0, 0], [0, 0, 0]
    for start in range(0, len(images), rows):
        pixels = images[start : start + rows].reshape(-1, 3)
        whole = len(pixels) // _EXACT_BLOCK * _EXACT_BLOCK
        block = pixels[:whole].reshape(-1, _EXACT_BLOCK, 3).astype(np.float32)
        chunk_sums = (_ONES @ block).sum(axis=0, dtype=np.float64).astype(np.int64)
        np.multiply(block, block, out=block)
        chunk_squares = (_ONES @ block).sum(axis=0, dtype=np.float64).astype(np.int64)
        rest = pixels[whole:].astype(np.int64)  # the last pixels short of a block
        chunk_sums += rest.sum(axis=0)
        chunk_squares += (rest * rest).sum(axis=0)
        sums = [total + int(x) for total, x in zip(sums, chunk_sums, strict=True)]
        squares = [total + int(x) for total, x in zip(squares, chunk_squares, strict=True)]
    return sums, squares


def mean_std(sums: list[int], squares: list[int], pixels: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std on the [0, 1] scale from exact integer sums over ``pixels``."""
    if pixels == 0:
        return [0.0] * 3, [0.0] * 3
    mean = [s / pixels / 255.0 for s in sums]
    # Integer arithmetic up to the last division: no cancellation however many pixels.
    std = [
        math.sqrt((q * pixels - s * s) / (pixels * pixels)) / 255.0
        for s, q in zip(sums, squares, strict=True)
    ]
    return mean, std


def parse_id(row_id: str) -> tuple[str, int]:
    """``member:record`` -> (member, record number)."""
    member, _, index = row_id.rpartition(":")
    return member, int(index)


@dataclass(frozen=True)
class Cutoffs:
    """Per class, the largest (key, id) that goes to val; classes without val images are absent."""

    keys: dict[int, int]
    ids: dict[int, str]

    def val_mask(self, labels: np.ndarray, keys: np.ndarray, ids: Any, num_classes: int) -> np.ndarray:
        """Which rows go to val: (key, id) at or below their class's cut-off. ``ids`` (an Arrow string
        array, or anything numpy can index) is looked at only where a key equals its class's cut-off key."""
        has = np.zeros(num_classes, dtype=bool)
        tkey = np.full(num_classes, _INT64_MIN, dtype=np.int64)
        for label, key in self.keys.items():
            has[label], tkey[label] = True, key
        lk = tkey[labels]
        mask = has[labels] & (keys < lk)
        tied = np.flatnonzero(has[labels] & (keys == lk))
        if tied.size:
            names = (
                # A few rows: element by element (an Arrow take of numpy indices would import pandas).
                [ids[i].as_py() for i in tied.tolist()]
                if isinstance(ids, pa.Array)
                else np.asarray(ids)[tied].tolist()
            )
            limits = [self.ids[int(labels[i])] for i in tied]
            mask[tied] = [name <= limit for name, limit in zip(names, limits, strict=True)]
        return mask
