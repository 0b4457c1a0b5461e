"""Benchmark training on one GPU: cifarflow's training step beside plain Keras ``model.fit``, with GPU busy time.

For each model (ResNet-20 and ResNet-9 by default), two runs, each in its own process, on the same synthetic
dataset (50k train images, 32 px, local Parquet), for 3 epochs, with mixed precision (bfloat16 by default) and
XLA on:

- loop:       ``cifarflow.train.trainer`` as ``cifarflow train`` runs it (data streamed from Parquet through
              tf.data, checksummed; augmentation off unless ``--augment``, as ``fit`` has none).
- keras-fit:  the reference: ``model.compile(jit_compile=XLA)`` + ``model.fit`` on the train split held in numpy;
              same model, global batch, optimiser (SGD + schedule), loss and precision.

Reported per run: images/s of the training step after warm-up (epochs 2..N: epoch 1 holds tracing and XLA
compilation), the GPU busy fraction over those epochs (``nvidia-smi --query-gpu=utilization.gpu`` sampled every
100 ms by this process while the child trains; the share of samples' utilisation), the GPU model, and CPU
seconds. A busy fraction well under 1 with a slow loop says the host (input pipeline or step dispatch) is the
limit; near 1, the device is.

    .venv/bin/python benchmarks/gpu_bench.py                         # on a GPU machine: the full run
    .venv/bin/python benchmarks/gpu_bench.py --dry-run --results DIR  # CPU, a few hundred images (the test)

Appends one JSON object to ``benchmarks/results/gpu_bench.json`` (or ``--results DIR``/gpu_bench.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_common import RESULTS, append, build_dataset, cpu_seconds, fit_keras

KINDS = ("loop", "keras-fit")
MODELS = ("resnet20", "resnet9")
SAMPLE_MS = 100


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.epochs`` epochs of one kind in this process; time epochs 2..N."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cifarflow.storage import Store
    from cifarflow.train import source
    from cifarflow.train.config import TrainConfig

    src = source.open_source(Store(), args.data)
    marks: dict[str, tuple[float, float]] = {}
    mixed = args.precision != "float32"
    half = "float16" if args.precision == "float16" else "bfloat16"
    with tempfile.TemporaryDirectory(prefix="cifarflow-gpu-bench-") as out:
        cfg = TrainConfig(
            data=args.data, out=out, model=args.model, width=args.width, epochs=args.epochs, batch_size=args.batch,
            augment=args.augment, checkpoint_every=0, evaluate=False,
            mixed_precision="on" if mixed else "off", mixed_type=half,
            xla="on" if args.xla else "off",
        )  # fmt: skip
        if args.child == "keras-fit":
            images = fit_keras(cfg, src, marks, mixed=mixed, xla=args.xla)
            seconds = marks["end"][0] - marks["start"][0]
        else:
            images, seconds = _loop(cfg, marks)
    return {
        "kind": args.child,
        "model": args.model,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "cpu_s": marks["end"][1] - marks["start"][1],
        # The timed window on the wall clock, for the parent's GPU samples.
        "window": [time.time() - (time.perf_counter() - marks[k][0]) for k in ("start", "end")],
        "devices": _devices(),
    }


def _loop(cfg: Any, marks: dict[str, tuple[float, float]]) -> tuple[int, float]:
    """cifarflow's trainer; the steps' own seconds of epochs 2..N (epoch-end checkpoints are not steps)."""
    from cifarflow.train import trainer

    timed: list[dict[str, float]] = []

    class Clock:
        def on_start(self, **_: Any) -> None: ...

        def on_step(self, step: int) -> None: ...

        def on_epoch(self, epoch: int, logs: dict[str, float]) -> None:
            if epoch == 1:
                marks["start"] = (time.perf_counter(), cpu_seconds())
            else:
                timed.append(logs)
                marks["end"] = (time.perf_counter(), cpu_seconds())

    trainer.train(cfg, hooks=Clock())
    # Each epoch's log holds its steps' seconds and rate; their product is the images it trained on.
    images = sum(round(h["images_per_second"] * h["seconds"]) for h in timed)
    return images, sum(h["seconds"] for h in timed)


def _devices() -> list[str]:
    import tensorflow as tf

    return [
        tf.config.experimental.get_device_details(d).get("device_name", d.name)
        for d in tf.config.list_physical_devices("GPU")
    ]


class GpuSampler:
    """``nvidia-smi`` utilisation samples (wall time, percent) while a child runs; none without a GPU."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            self._proc = subprocess.Popen([*query, "-lms", str(SAMPLE_MS)], stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            first = line.strip().split(",")[0]  # the first GPU: the child uses one
            if first.isdigit():
                self.samples.append((time.time(), float(first)))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()

    def busy(self, window: list[float]) -> float | None:
        inside = [u for t, u in self.samples if window[0] <= t <= window[1]]
        return sum(inside) / (100 * len(inside)) if inside else None


def gpu_model() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    proc = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else None


def run_child(args: argparse.Namespace, kind: str, model: str, data: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, "--model", model, "--data", data]
    cmd += ["--batch", str(args.batch), "--epochs", str(args.epochs), "--precision", args.precision]
    cmd += ["--xla" if args.xla else "--no-xla", "--augment" if args.augment else "--no-augment"]
    cmd += ["--width", str(args.width)] if args.width else []
    env = dict(os.environ)
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU only, even on a GPU machine
    with GpuSampler() as sampler:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        sys.exit(f"{model} {kind} failed:\n{proc.stderr[-3000:]}")
    row: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    row["gpu_busy"] = sampler.busy(row["window"])
    row["gpu_samples"] = len(sampler.samples)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, help="train images (default 50000; 256 with --dry-run)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; epochs 2..N are timed")
    parser.add_argument("--batch", type=int, help="global batch (default 512; 64 with --dry-run)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument(
        "--width", type=int, help="first-stage channels (default: the model's; 4 with --dry-run)"
    )
    parser.add_argument("--precision", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--xla", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument(
        "--dry-run", action="store_true", help="on CPU, a few hundred images: checks the script"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of gpu_bench.json")
    parser.add_argument("--workdir", help="where the dataset is built (default: a temporary folder)")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    args.images = args.images or (256 if args.dry_run else 50_000)
    args.batch = args.batch or (64 if args.dry_run else 512)
    args.width = args.width or (4 if args.dry_run else None)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cifarflow-gpu-bench-") as tmp:
        data = build_dataset(os.path.join(args.workdir or tmp, f"ds-{args.images}"), args.images, files=8)
        for model in args.models:
            for kind in args.kinds:
                row = run_child(args, kind, model, data)
                rows.append(row)
                busy = "n/a" if row["gpu_busy"] is None else f"{row['gpu_busy']:.0%}"
                print(
                    f"{model:9s} {kind:10s} {row['images_per_s']:>10,.0f} images/s  GPU busy {busy}",
                    flush=True,
                )
    record = {
        "gpu": gpu_model(),
        "dry_run": args.dry_run,
        "train_images": args.images,
        "batch": args.batch,
        "epochs": args.epochs,
        "width": args.width,
        "precision": args.precision,
        "xla": args.xla,
        "augment": args.augment,
        "results": rows,
    }
    append("gpu_bench", record, folder=args.results)


if __name__ == "__main__":
    main()
