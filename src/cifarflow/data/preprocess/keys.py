"""Pure numpy, per image and per class: the seeded split keys, val counts and cut-offs, exact per-channel
moments (content hashes are :mod:`cifarflow.data.content_index`'s). No Spark, no storage: the same functions
run on executors and in tests."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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


def channel_moments(images: np.ndarray, rows: int = 2048) -> tuple[list[int], list[int]]:
    """Exact per-channel (R, G, B) pixel sums and sums of squares, from 256-bin histograms."""
    hist = np.zeros((3, 256), dtype=np.int64)
    for start in range(0, len(images), rows):
        pixels = images[start : start + rows].reshape(-1, 3)
        for channel in range(3):
            hist[channel] += np.bincount(pixels[:, channel], minlength=256)
    values = np.arange(256, dtype=np.int64)
    return (hist @ values).tolist(), (hist @ (values * values)).tolist()


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

    def val_mask(self, labels: np.ndarray, keys: np.ndarray, ids: np.ndarray, num_classes: int) -> np.ndarray:
        has = np.zeros(num_classes, dtype=bool)
        tkey = np.full(num_classes, _INT64_MIN, dtype=np.int64)
        tid = np.full(num_classes, "", dtype=object)
        for label, key in self.keys.items():
            has[label], tkey[label], tid[label] = True, key, self.ids[label]
        lk, lid = tkey[labels], tid[labels].astype(ids.dtype)
        return has[labels] & ((keys < lk) | ((keys == lk) & (ids <= lid)))
