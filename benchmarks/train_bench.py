"""Benchmark training throughput on CPU: cifarflow's custom loop beside plain Keras ``model.fit``, one run.

All three train the same model (ResNet-20 by default: same layers, same SGD + schedule, same label smoothing)
with the same global batch, each in its own process, for two epochs; the second (steady) epoch is timed.

- loop:        ``cifarflow.train.trainer`` as ``cifarflow train`` runs it: data streamed from local Parquet
               (checksummed), in-graph random crop + flip, batch-norm sync and metrics all-reduce, stop flag.
- loop-noaug:  the same without augmentation (what ``fit`` below does).
- keras-fit:   the reference: ``model.compile`` + ``model.fit`` on the whole train split held in numpy.

"Per core" is images per CPU-second of the process (all threads), which stays meaningful on a shared machine.

    .venv/bin/python benchmarks/train_bench.py [--images 10000] [--batch 128] [--model resnet20]

Appends one JSON object to ``benchmarks/results/train_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench_common import append, build_dataset, cpu_seconds, fit_keras

KINDS = ("loop", "loop-noaug", "keras-fit")


def child(kind: str, data: str, batch: int, model_name: str) -> dict[str, Any]:
    """Train two epochs in this process and time the second one."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cifarflow.storage import Store
    from cifarflow.train import source
    from cifarflow.train.config import TrainConfig

    src = source.open_source(Store(), data)
    images = src.rows("train")
    steps = images // batch
    marks: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cifarflow-train-bench-") as out:
        cfg = TrainConfig(
            data=data, out=out, model=model_name, epochs=2, batch_size=batch, augment=kind == "loop",
            checkpoint_every=0, evaluate=False,
        )  # fmt: skip
        if kind == "keras-fit":
            measured = fit_keras(cfg, src, marks)
        else:
            from cifarflow.train import trainer

            class Marks:
                def on_start(self, **_: Any) -> None: ...

                def on_step(self, step: int) -> None:
                    if step == steps + 1:  # the first step of epoch 2 is done: start the clock
                        marks["start"] = (time.perf_counter(), cpu_seconds())

                def on_epoch(self, epoch: int, logs: dict[str, float]) -> None:
                    if epoch == 2:
                        marks["end"] = (time.perf_counter(), cpu_seconds())

            trainer.train(cfg, hooks=Marks())
            measured = (steps - 1) * batch
    wall = marks["end"][0] - marks["start"][0]
    cpu = marks["end"][1] - marks["start"][1]
    return {
        "kind": kind,
        "images": measured,
        "images_per_s": measured / wall,
        "images_per_cpu_s": measured / cpu,
        "cores_used": cpu / wall,
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": runs[0]["kind"]}
    for key in ("images_per_s", "images_per_cpu_s", "cores_used"):
        out[key] = statistics.median(r[key] for r in runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--model", default="resnet20", choices=["resnet20", "resnet9"])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each kind (medians kept)")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.batch, args.model)))
        return
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in args.kinds}
    with tempfile.TemporaryDirectory(prefix="cifarflow-train-bench-") as tmp:
        data = build_dataset(os.path.join(tmp, "ds"), args.images, files=8)
        # Interleaved repeats: on a shared machine, load drifts; each kind sees the same drift.
        for _ in range(args.repeats):
            for kind in args.kinds:
                cmd = [sys.executable, __file__, "--child", kind, "--data", data, "--batch", str(args.batch)]
                proc = subprocess.run(
                    [*cmd, "--model", args.model], capture_output=True, text=True, check=False
                )
                if proc.returncode != 0:
                    sys.exit(f"{kind} failed:\n{proc.stderr[-3000:]}")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[kind].append(row)
                print(f"{kind:11s} {row['images_per_s']:8.0f} images/s  {row['images_per_cpu_s']:8.0f} per core  "
                      f"({row['cores_used']:.2f} cores)", flush=True)  # fmt: skip
    rows = [{**_median(kind_runs), "runs": kind_runs} for kind_runs in runs.values()]
    for row in rows:
        print(
            f"median {row['kind']:11s} {row['images_per_s']:8.0f} images/s  {row['images_per_cpu_s']:8.0f} per core"
        )
    append(
        "train_bench",
        {"model": args.model, "batch": args.batch, "train_images": args.images, "results": rows},
    )


if __name__ == "__main__":
    main()
