"""Benchmark the training input pipeline: images/s from local Parquet, per CPU core.

"Per core" is images per CPU-second of this process (user + system time of all its threads), which is what a
training node has to budget, and stays meaningful when other work shares the machine. Stages, each measured
alone on a CIFAR-10-sized dataset (50k train images, 10 shards, as preprocess writes them):

- read:      fetch + sha256 check + Parquet decode to zero-copy uint8 arrays (``source.DataSource.chunks``)
- batches:   read + shuffle buffer + batching, vectorised in numpy (``source.batches``)
- pipeline:  what the training loop consumes: ``inputs.make_dataset`` (tf.data, prefetched)
- augment:   the in-graph crop + flip op alone (it runs inside the training step, on the accelerator)
- textbook:  for comparison, the usual tf.data recipe: per-element unbatch -> shuffle -> batch -> augment map

    .venv/bin/python benchmarks/input_bench.py [--images 50000] [--batch 256] [--seconds 8] [--size 32]

``--size`` renders the synthetic images at that many pixels a side (``arrays.synthetic``), e.g. 96 or 224 for
image-folder datasets; lower ``--images`` there (the shuffle buffer holds up to 10k images in memory).

Appends one JSON object to ``benchmarks/results/input_bench.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench_common import append, build_dataset, cpu_seconds


def measure(name: str, next_batch: Callable[[], int], seconds: float) -> dict[str, Any]:
    """Run ``next_batch`` (returns images delivered) for ``seconds`` after a warm-up; wall and CPU rates."""
    warm = time.perf_counter()
    while time.perf_counter() - warm < min(2.0, seconds / 3):
        next_batch()
    images, wall0, cpu0 = 0, time.perf_counter(), cpu_seconds()
    while time.perf_counter() - wall0 < seconds:
        images += next_batch()
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    row = {
        "stage": name,
        "images": images,
        "images_per_s": images / wall,
        "images_per_cpu_s": images / cpu,
        "cores_used": cpu / wall,
    }
    print(f"{name:9s} {row['images_per_s']:>10,.0f} images/s  {row['images_per_cpu_s']:>10,.0f} per core  "
          f"({row['cores_used']:.2f} cores)", flush=True)  # fmt: skip
    return row


def cycle(make: Callable[[], Iterator[Any]]) -> Callable[[], Any]:
    it = make()

    def step() -> Any:
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = make()
            return next(it)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--size", type=int, default=32, help="pixels a side of the synthetic images")
    parser.add_argument(
        "--stages", nargs="+", default=list(STEPS), choices=list(STEPS), help="what to measure"
    )
    parser.add_argument("--label", help="what is measured, for paired runs (e.g. before/after)")
    parser.add_argument("--data", help="an existing dataset folder (default: build one in a temp folder)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from cifarflow.storage import Store
    from cifarflow.train import source

    with tempfile.TemporaryDirectory(prefix="cifarflow-input-bench-") as tmp:
        data = args.data or build_dataset(os.path.join(tmp, "ds"), args.images, files=10, size=args.size)
        src = source.open_source(Store(), data)
        rows = [measure(stage, STEPS[stage](src, args.batch), args.seconds) for stage in args.stages]

    record = {
        "label": args.label,
        "dataset_images": src.rows("train"),
        "size": list(src.shape),
        "batch": args.batch,
        "results": rows,
    }
    append("input_bench", record)


def read(src: Any, batch: int) -> Callable[[], int]:
    """Row-group chunks of the whole split, fetched and checksummed: images per call."""
    chunks = cycle(lambda: src.chunks("train"))
    return lambda: len(chunks()[1])


def batches(src: Any, batch: int) -> Callable[[], int]:
    from cifarflow.train import source

    stream = source.batches(src, "train", batch, training=True)
    return lambda: len(next(stream)[1])


def pipeline(src: Any, batch: int) -> Callable[[], int]:
    from cifarflow.train import inputs

    ds = iter(inputs.make_dataset(src, "train", batch_size=batch, training=True))
    return lambda: int(next(ds)[1].shape[0])


def augment(src: Any, batch: int) -> Callable[[], int]:
    import tensorflow as tf

    from cifarflow.train import inputs

    images = next(iter(inputs.make_dataset(src, "train", batch_size=batch, training=True)))[0]
    op = tf.function(inputs.augment)
    seed = tf.constant([1, 2], tf.int64)
    return lambda: int(op(images, seed).shape[0])


def textbook(src: Any, batch: int) -> Callable[[], int]:
    """tf.data's usual recipe over the same chunks: per-element unbatch, shuffle, batch, then augment."""
    import tensorflow as tf

    from cifarflow.train import inputs

    spec = (tf.TensorSpec((None, *src.shape), tf.uint8), tf.TensorSpec((None,), tf.int32))
    ds = tf.data.Dataset.from_generator(lambda: src.chunks("train"), output_signature=spec).repeat()
    ds = ds.unbatch().shuffle(10_000).batch(batch, drop_remainder=True)
    seeds = tf.data.Dataset.random(seed=1).batch(2)
    ds = tf.data.Dataset.zip(ds, seeds).map(lambda xy, s: (inputs.augment(xy[0], s), xy[1]), tf.data.AUTOTUNE)
    it = iter(ds.prefetch(tf.data.AUTOTUNE))
    return lambda: int(next(it)[1].shape[0])


STEPS: dict[str, Callable[[Any, int], Callable[[], int]]] = {
    "read": read,
    "batches": batches,
    "pipeline": pipeline,
    "augment": augment,
    "textbook": textbook,
}


if __name__ == "__main__":
    main()
