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


def build_dataset(path: str, images: int, files: int) -> str:
    """A committed dataset of ``images`` learnable synthetic train images (+1000 test) in ``files`` shards."""
    from cifarflow.storage import Store
    from cifarflow.train import arrays

    if not os.path.exists(os.path.join(path, "_manifest.json")):
        started = time.perf_counter()
        splits = {"train": arrays.synthetic(images, seed=0), "test": arrays.synthetic(1000, seed=1)}
        arrays.write(Store(), path, splits, class_names=[f"c{i}" for i in range(10)], files_per_split=files)
        print(f"wrote {images} images in {files} shards to {path} ({time.perf_counter() - started:.0f} s)")
    return path


def append(name: str, record: dict[str, Any]) -> None:
    """Append one run (with when and where it ran) to ``benchmarks/results/<name>.json``."""
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()},
        **record,
    }
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(f"appended to {path.relative_to(REPO)}")
