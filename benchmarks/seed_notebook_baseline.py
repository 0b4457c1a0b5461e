"""The seed notebook's original path, measured the same way as ``preprocess_bench.py``.

The notebook the project grew from loaded CIFAR-10 like this: unpickle each batch, build a pandas frame of
3072 float columns (one per pixel value) plus the label, hand it to ``spark.createDataFrame`` and write
Parquet. This script does exactly that on the 50k train images of the 1x synthetic set, in a child process
whose whole tree (Python driver, JVM, Python workers) is sampled for memory.

    .venv/bin/python benchmarks/seed_notebook_baseline.py

Reference from the issue (the notebook on this machine): 663 images/s, 4.0 GB peak RSS on 50k images. That
matches ``createDataFrame`` with Arrow and a 4 GB driver heap (the defaults here). With Spark's default 1 GB
heap the JVM runs out of memory reading the 1.2 GB Arrow stream, Spark falls back to converting row by row,
and the Python driver alone peaks above 10 GB for over 20 minutes (``--no-arrow`` shows that path).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import time
from pathlib import Path

from preprocess_bench import machine, measured, prepare, record


def notebook(raw: str, out: str, arrow: bool, driver_memory: str) -> None:
    """The notebook's cells, unchanged in spirit (including its plain, unrestricted pickle.load)."""
    import pandas as pd
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.execution.arrow.pyspark.enabled", str(arrow).lower())
        .getOrCreate()
    )
    index = json.loads((Path(raw) / "_ingest.json").read_text())
    frames = []
    for member in index["members"]:
        if member["split"] != "train":
            continue
        with open(Path(raw) / index["folder"] / member["path"], "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")  # unrestricted: the baseline as it was
        frame = pd.DataFrame(batch[b"data"].astype(float))
        frame.columns = [f"p{i}" for i in range(frame.shape[1])]
        frame["label"] = batch[b"labels"]
        frames.append(frame)
    pdf = pd.concat(frames, ignore_index=True)
    spark.createDataFrame(pdf).write.mode("overwrite").parquet(out)
    spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="/tmp/cifarflow-bench")
    parser.add_argument(
        "--no-arrow",
        action="store_true",
        help="createDataFrame without Arrow (Spark's default): row by row, far slower, ~10 GB",
    )
    parser.add_argument(
        "--driver-memory",
        default="4g",
        help="Spark driver heap; with Spark's default 1g the Arrow path runs out of heap and falls back to rows",
    )
    parser.add_argument("--child", nargs=2, metavar=("RAW", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        notebook(*args.child, arrow=not args.no_arrow, driver_memory=args.driver_memory)
        return
    workdir = Path(args.workdir)
    raw, _ = prepare(workdir, 1, "python")
    out = workdir / "seed-notebook.parquet"
    shutil.rmtree(out, ignore_errors=True)
    images = 50_000
    started = time.strftime("%Y-%m-%d %H:%M")
    options = ["--driver-memory", args.driver_memory, *(["--no-arrow"] if args.no_arrow else [])]
    command = [sys.executable, __file__, "--child", raw, str(out), *options]
    seconds, peaks, _ = measured(command, log=workdir / "seed-notebook.log")
    record(
        "seed_notebook",
        {
            "benchmark": "seed notebook: pickle -> pandas (3072 float columns) -> createDataFrame -> Parquet",
            "command": "python benchmarks/seed_notebook_baseline.py"
            + (" --no-arrow" if args.no_arrow else ""),
            "arrow": not args.no_arrow,
            "images": images,
            "seconds": round(seconds, 2),
            "images_per_s": round(images / seconds, 1),
            "cpu_s": round(peaks.cpu_seconds, 1),
            "parquet_bytes": sum(p.stat().st_size for p in out.rglob("*.parquet")),
            "peak_rss": peaks.rss,
            "peak_total_rss": peaks.total_rss,
            "peak_total_pss": peaks.total_pss,
            "machine": machine(),
            "when": started,
        },
    )


if __name__ == "__main__":
    main()
