"""What the training benchmarks share: CPU accounting, a synthetic dataset, and the results file."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def cpu_seconds() -> float:
    """CPU time of this process, all threads: images per CPU-second is the per-core figure."""
    t = os.times()
    return t.user + t.system


def build_dataset(path: str, images: int, files: int, size: int = 32) -> str:
    """A committed dataset of ``images`` learnable synthetic train images (+1000 test) in ``files`` shards,
    ``size`` pixels a side."""
    from cifarflow.storage import Store
    from cifarflow.train import arrays

    if not os.path.exists(os.path.join(path, "_manifest.json")):
        started = time.perf_counter()
        splits = {
            "train": arrays.synthetic(images, seed=0, size=size),
            "test": arrays.synthetic(1000, seed=1, size=size),
        }
        arrays.write(Store(), path, splits, class_names=[f"c{i}" for i in range(10)], files_per_split=files)
        print(f"wrote {images} images in {files} shards to {path} ({time.perf_counter() - started:.0f} s)")
    return path


def fit_keras(
    cfg: Any, src: Any, marks: dict[str, tuple[float, float]], *, mixed: bool = False, xla: bool = False
) -> int:
    """Plain Keras: compile + fit on numpy, the same model, optimiser, loss and batch as the trainer, for
    ``cfg.epochs`` epochs; ``marks`` gets (wall, CPU) at the start of epoch 2 and at the end of the last one.
    Returns the images of the timed epochs."""
    import keras
    import numpy as np

    from cifarflow.train import model, optim

    xs, ys = zip(*src.chunks("train"), strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    y_onehot = keras.utils.to_categorical(y, src.num_classes)
    steps = len(y) // cfg.batch_size
    x, y_onehot = x[: steps * cfg.batch_size], y_onehot[: steps * cfg.batch_size]
    keras.utils.set_random_seed(cfg.seed)
    net = model.build(
        cfg, num_classes=src.num_classes, mean=src.stats.mean, std=src.stats.std, shape=src.shape, mixed=mixed
    )
    net.compile(
        optimizer=optim.optimizer(cfg, cfg.epochs * steps, mixed=mixed),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
        jit_compile=xla,
    )
    last = cfg.epochs - 1

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            if epoch == 1:
                marks["start"] = (time.perf_counter(), cpu_seconds())

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if epoch == last:
                marks["end"] = (time.perf_counter(), cpu_seconds())

    net.fit(
        x,
        y_onehot,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        shuffle=True,
        verbose=0,
        callbacks=[Clock()],
    )
    return (cfg.epochs - 1) * steps * cfg.batch_size


def append(name: str, record: dict[str, Any], folder: Path = RESULTS) -> None:
    """Append one run (with when and where it ran) to ``<folder>/<name>.json`` (``benchmarks/results``)."""
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()},
        **record,
    }
    path = folder / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(f"appended to {path}")
