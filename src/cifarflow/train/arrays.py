"""Commit in-memory arrays as a dataset, without Spark: for tests, benchmarks and small experiments.

Writes exactly what ``cifarflow preprocess`` commits (shards through :func:`manifest.write_shard`, then
:func:`manifest.commit`), so every reader treats the result like any other dataset.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from cifarflow.data import manifest as mf
from cifarflow.data.cifar import chw_to_hwc
from cifarflow.storage import Store

Split = tuple[np.ndarray, np.ndarray]  # images (n, H, W, 3) uint8 HWC, labels (n,) int

SYNTH_SIDE = 32  # cifarflow synth renders CIFAR-sized images; other sizes are resampled from them


def synthetic(n: int, classes: int = 10, seed: int = 0, size: int | tuple[int, int] = SYNTH_SIDE) -> Split:
    """``n`` learnable images from ``cifarflow synth``'s generator (a grating per class), ``size`` pixels a
    side (or (height, width)): rendered at 32x32 and resampled nearest-neighbour, so every size is as learnable."""
    from cifarflow.data import synth

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % classes)
    rows = synth.render(labels, synth.ClassTable.for_classes(classes), rng)
    images = chw_to_hwc(rows).reshape(n, SYNTH_SIDE, SYNTH_SIDE, 3)
    height, width = (size, size) if isinstance(size, int) else size
    if (height, width) != (SYNTH_SIDE, SYNTH_SIDE):
        rows_at = np.arange(height) * SYNTH_SIDE // height
        cols_at = np.arange(width) * SYNTH_SIDE // width
        images = np.ascontiguousarray(images[:, rows_at[:, None], cols_at[None, :]])
    return images, labels.astype(np.int32)


def binary_column(rows: np.ndarray) -> pa.Array:
    """Fixed-size byte rows as an Arrow binary column, built from two buffers (no per-row objects)."""
    n, size = rows.shape
    offsets = np.arange(0, (n + 1) * size, size, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(rows.tobytes())])


def write(
    store: Store,
    url: str,
    splits: dict[str, Split],
    *,
    class_names: list[str],
    files_per_split: int = 2,
    dataset_id: str = "ds-arrays",
) -> str:
    """Write ``splits`` as Parquet shards + stats.json + _manifest.json under ``url``; returns ``url``."""
    infos: dict[str, mf.SplitInfo] = {}
    counts: dict[str, list[int]] = {}
    for split, (images, labels) in splits.items():
        n = len(labels)
        entries = []
        for part, rows in enumerate(np.array_split(np.arange(n), files_per_split)):
            flat = np.ascontiguousarray(images[rows]).reshape(len(rows), -1)
            table = pa.table(
                {
                    "id": pa.array([f"{split}-{i}" for i in rows.tolist()], pa.string()),
                    "label": pa.array(labels[rows], pa.int32()),
                    "image": binary_column(flat),
                },
                schema=mf.SCHEMA,
            )
            entries.append(mf.write_shard(store, url, f"{split}/part-{part:05d}.parquet", table))
        infos[split] = mf.SplitInfo(rows=n, files=entries)
        counts[split] = np.bincount(labels, minlength=len(class_names)).tolist()
    train_images = splits["train"][0].reshape(-1, 3).astype(np.float64) / 255.0
    stats = mf.Stats(mean=train_images.mean(0).tolist(), std=train_images.std(0).tolist(), counts=counts)
    height, width, channels = splits["train"][0].shape[1:]
    manifest = mf.Manifest(
        dataset_id=dataset_id,
        image=mf.ImageSpec(height=height, width=width, channels=channels),
        num_classes=len(class_names),
        class_names=class_names,
        splits=infos,
        stats=mf.FileEntry(path=mf.STATS, bytes=0, sha256=""),
        source={"kind": "arrays"},
        parameters={"files_per_split": files_per_split},
    )
    mf.commit(store, url, manifest, stats)
    return url
