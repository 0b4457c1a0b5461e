"""Synthetic CIFAR images: class names, and one learnable pattern per class (an oriented grating).

Each class is an oriented grating with its own angle and frequency, drawn inside a soft window at a random
position, over a random background, with colour jitter and pixel noise. Pairs of classes share a hue, so
colour alone is not enough: a model has to learn orientation and frequency (a small CNN does; a linear model
on pixels barely does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cifarflow.data.cifar import CHANNELS, HEIGHT, IMAGE_BYTES, WIDTH

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
    # Uniform pixel noise (+-15 of 255) from random bytes: a third of the cost of Gaussian noise.
    # Stronger noise would make the archive incompressible (CIFAR's own tarball is 92% of its contents)
    # and gzip slower.
    img += rng.integers(0, 256, img.shape, dtype=np.uint8) * f32(0.12) - f32(15.3 - 0.5)
    return np.clip(img, 0, 255, out=img).astype(np.uint8).reshape(n, IMAGE_BYTES)
