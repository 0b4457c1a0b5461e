"""The scale study: ``cifarflow ingest`` + ``cifarflow preprocess`` at 1x, 10x and 50x CIFAR-10 against a
one-process streaming floor, throughput and every process's peak memory.

cifarflow runs as a user runs it: two fresh processes, ``ingest`` of the tarball into a new folder, then
``preprocess --master local[2]`` (JVM start, both passes, dedup, split, statistics, commit). The **floor** is
one Python process doing strictly less: it streams the same tarball once (``tarfile`` stream mode), decodes
each batch with cifarflow's own decoder (16 MB of records at a time for binary members, a pickle whole), sums
the channel moments, and appends to one Parquet file with the same writer settings as a shard; no landing,
no checksums, no dedup, no split, no commit. It keeps freed memory for reuse as cifarflow's ingest and
workers do (``cifarflow.data.allocator``; without it the floor took 20.7 s instead of 15.8 at 10x binary);
``--floor-malloc glibc`` runs it with glibc's defaults, as every run before 895689a did.

Every command is sampled by preprocess_bench's /proc sampler (peak RSS per role: driver, Spark JVM, Python
workers; CPU seconds of the whole tree). Tarballs are generated once under ``--workdir`` with
``cifarflow synth`` (50x: 3M images, an 8.7 GB binary tarball); what runs measure is deleted after each run.

    .venv/bin/python benchmarks/scale_bench.py run --scale 1 --scale 10 --scale 50 --format binary
    .venv/bin/python benchmarks/scale_bench.py plot        # docs/img/scale_benchmark.png
    .venv/bin/python benchmarks/scale_bench.py table       # the Markdown table for docs/benchmarks.md

Results: ``benchmarks/results/scale.json`` (one JSON object a line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from preprocess_bench import REPO, RESULTS, Peaks, cifarflow, machine, measured, phases, record, save_figure

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000


def tarball(workdir: Path, scale: int, fmt: str) -> Path:
    """The synthetic ``scale`` x CIFAR-10 tarball (generated once)."""
    folder = workdir / f"{fmt}-x{scale}"
    found = sorted(folder.glob("*.tar.gz"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    train, test = str(CIFAR_TRAIN * scale), str(CIFAR_TEST * scale)
    command = cifarflow("synth", "--out", str(folder), "--train", train, "--test", test, "--format", fmt)
    subprocess.run(command, check=True, cwd=REPO)
    return sorted(folder.glob("*.tar.gz"))[0]


# -- the floor ----------------------------------------------------------------------------------------------


def floor(source: str, out: str, malloc: str = "kept") -> None:
    """Stream the tarball once: decode, sum, append to one Parquet file (module docstring). ``malloc``: kept
    (freed memory kept for reuse, as cifarflow runs) or glibc (its defaults, as the floor ran before 895689a)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cifarflow.data import manifest as mf
    from cifarflow.data.allocator import keep_freed_memory
    from cifarflow.data.cifar import LAYOUTS, decode_binary, decode_python
    from cifarflow.data.preprocess.keys import channel_moments
    from cifarflow.data.preprocess.ranges import RANGE_BYTES
    from cifarflow.data.preprocess.schema import image_column

    if malloc == "kept":
        keep_freed_memory()  # the allocator setting cifarflow's ingest and workers run with
    layout = LAYOUTS["cifar10-binary" if "binary" in Path(source).name else "cifar10-python"]
    schema = pa.schema([mf.SCHEMA.field("label"), mf.SCHEMA.field("image")])
    sums, squares, images = np.zeros(3, np.int64), np.zeros(3, np.int64), 0
    with (
        tarfile.open(source, "r|gz") as tar,
        pq.ParquetWriter(out, schema, **mf.WRITER_OPTIONS) as writer,
    ):
        for member in tar:
            name = Path(member.name).name
            if not member.isfile() or layout.split_of(name) is None:
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            if layout.kind == "python":
                batches = [decode_python(handle.read(), layout, name)]
            else:
                step = RANGE_BYTES // layout.record_bytes * layout.record_bytes
                batches = (decode_binary(chunk, layout, name) for chunk in _chunks(handle, step))
            for batch in batches:
                s, q = channel_moments(batch.images)
                sums, squares, images = sums + s, squares + q, images + len(batch)
                columns = [pa.array(batch.labels, pa.int32()), image_column(batch.images)]
                writer.write_table(
                    pa.Table.from_arrays(columns, schema=schema), row_group_size=mf.ROW_GROUP_ROWS
                )
    print(json.dumps({"images": images, "sums": sums.tolist(), "squares": squares.tolist()}))


def _chunks(handle: Any, size: int) -> Any:
    while chunk := handle.read(size):
        yield chunk


# -- runs ---------------------------------------------------------------------------------------------------


def _measure(command: list[str], log: Path) -> tuple[float, Peaks, str]:
    return measured(command, {**os.environ, "CIFARFLOW_SPARK_UI": "0"}, log)


def _summary(seconds: float, peaks: Peaks) -> dict[str, Any]:
    return {
        "seconds": round(seconds, 2),
        "cpu_s": round(peaks.cpu_seconds, 1),
        "cpu_s_by_role": peaks.cpu_by_role(),
        "peak_rss": peaks.rss,
        "peak_total_rss": peaks.total_rss,
        "peak_total_pss": peaks.total_pss,
    }


def run_floor(source: Path, work: Path, malloc: str) -> dict[str, Any]:
    out = work / "floor.parquet"
    command = [
        sys.executable,
        __file__,
        "floor",
        "--source",
        str(source),
        "--out",
        str(out),
        "--malloc",
        malloc,
    ]
    seconds, peaks, text = _measure(command, work / "floor.log")
    result = {
        **_summary(seconds, peaks),
        "parquet_bytes": out.stat().st_size,
        "load": machine()["load_avg_1m_before"],
        "malloc": malloc,
    }
    result.update(json.loads(text.strip().splitlines()[-1]))
    out.unlink()
    return result


def run_cifarflow(source: Path, work: Path, master: str) -> dict[str, Any]:
    dest, datasets = work / "ingest", work / "datasets"
    ingest = cifarflow("ingest", "--source", str(source), "--dest", str(dest), "--max-bytes", str(64 << 30))
    i_seconds, i_peaks, _ = _measure(ingest, work / "ingest.log")
    i_load = machine()["load_avg_1m_before"]
    preprocess = cifarflow(
        "preprocess", "--raw", str(dest / "raw"), "--out", str(datasets), "--master", master
    )
    p_seconds, p_peaks, log = _measure(preprocess, work / "preprocess.log")
    dataset = next(datasets.iterdir())
    manifest = json.loads((dataset / "_manifest.json").read_text())
    result = {
        "ingest": {**_summary(i_seconds, i_peaks), "load": i_load},
        "preprocess": {
            **_summary(p_seconds, p_peaks),
            **phases(log),
            "load": machine()["load_avg_1m_before"],
        },
        "seconds": round(i_seconds + p_seconds, 2),
        "dataset": dataset.name,
        "rows": {split: info["rows"] for split, info in manifest["splits"].items()},
        "parquet_bytes": sum(p.stat().st_size for p in dataset.rglob("*.parquet")),
    }
    shutil.rmtree(dest)
    shutil.rmtree(datasets)
    return result


def _git(rev: str) -> str:
    git = ["git", "rev-parse", "--short", rev]
    return subprocess.run(git, check=False, capture_output=True, text=True, cwd=REPO).stdout.strip()


def run(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    for scale in args.scale:
        source = tarball(workdir, scale, args.format)
        images = (CIFAR_TRAIN + CIFAR_TEST) * scale
        for attempt in range(args.repeat):
            work = workdir / "runs" / f"{args.format}-x{scale}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            # Alternate which goes first, so that a drift in the machine's load hits both alike.
            order = ("floor", "cifarflow") if attempt % 2 == 0 else ("cifarflow", "floor")
            runs: dict[str, dict[str, Any]] = {}
            for what in order:
                # Written pages still dirty (a tarball just made, the other side's output) would throttle the
                # next writer: 10x python ingest took 10.6-11.0 s right after 4 GB were written (docs/benchmarks.md).
                os.sync()
                runs[what] = (
                    run_floor(source, work, args.floor_malloc)
                    if what == "floor"
                    else run_cifarflow(source, work, args.master)
                )
            record(
                "scale",
                {
                    "benchmark": "ingest + preprocess vs one-process floor",
                    "scale": scale,
                    "format": args.format,
                    "master": args.master,
                    "images": images,
                    "tarball_bytes": source.stat().st_size,
                    "order": list(order),
                    "floor": runs["floor"],
                    "cifarflow": runs["cifarflow"],
                    "ratio": round(runs["floor"]["seconds"] / runs["cifarflow"]["seconds"], 3),
                    "commit": _git("HEAD"),
                    "src_tree": _git(
                        "HEAD:src"
                    ),  # the code measured (commits that change only docs share it)
                    "machine": machine(),
                    "when": time.strftime("%Y-%m-%d %H:%M"),
                },
            )


# -- write-up -----------------------------------------------------------------------------------------------


def results() -> list[dict[str, Any]]:
    path = RESULTS / "scale.json"
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def _mb(value: int) -> str:
    return f"{value / 1e6:,.0f}"


def table(args: argparse.Namespace) -> None:
    print(
        "| commit | scale | format | images | load | floor s (its malloc) | cifarflow s (ingest + preprocess) "
        "| cifarflow / floor images/s | CPU s floor / cifarflow "
        "| peak RSS MB: floor / ingest / driver / JVM / workers |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results():
        f, c = r["floor"], r["cifarflow"]
        i, p = c["ingest"], c["preprocess"]
        rss = p["peak_rss"]
        print(
            f"| {r['commit']} | {r['scale']}× | {r['format']} | {r['images']:,} | {f['load']}/{i['load']} "
            f"| {f['seconds']:.1f} ({f.get('malloc', 'glibc')}) "
            f"| {c['seconds']:.1f} ({i['seconds']:.1f} + {p['seconds']:.1f}) | **{r['ratio']:.2f}×** "
            f"| {f['cpu_s']:.0f} / {i['cpu_s'] + p['cpu_s']:.0f} "
            f"| {_mb(f['peak_total_rss'])} / {_mb(i['peak_total_rss'])} / {_mb(rss.get('driver', 0))} "
            f"/ {_mb(rss.get('jvm', 0))} / {_mb(rss.get('workers', 0))} |"
        )


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results()
    # The code as it is now (earlier trees are the before of its levers), or the src trees of the commits
    # given (a change to comments only gives a new tree, not new figures).
    trees = (
        {r["src_tree"] for r in runs if r["commit"] in args.commit} if args.commit else {runs[-1]["src_tree"]}
    )
    latest = " = ".join(args.commit) if args.commit else runs[-1]["commit"]
    malloc = runs[-1]["floor"].get("malloc", "glibc")  # floors alike: the latest run's allocator setting
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for r in (r for r in runs if r["src_tree"] in trees and r["floor"].get("malloc", "glibc") == malloc):
        key = (r["format"], r["scale"])
        if key not in best or r["cifarflow"]["seconds"] < best[key]["cifarflow"]["seconds"]:
            best[key] = r
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for fmt, marker in (("binary", "o"), ("python", "s")):
        rows = sorted((r for (f, _), r in best.items() if f == fmt), key=lambda r: r["scale"])
        if not rows:
            continue
        scales = [r["images"] for r in rows]
        ax1.plot(
            scales,
            [r["images"] / r["cifarflow"]["seconds"] for r in rows],
            marker=marker,
            color="#1f77b4",
            label=f"cifarflow ingest + preprocess ({fmt})",
        )
        ax1.plot(
            scales,
            [r["images"] / r["floor"]["seconds"] for r in rows],
            marker=marker,
            color="#9e9e9e",
            linestyle="--",
            label=f"one-process floor ({fmt})",
        )
        series = (
            ("Python driver", lambda r: r["cifarflow"]["preprocess"]["peak_rss"].get("driver", 0), "#2ca02c"),
            ("Spark JVM", lambda r: r["cifarflow"]["preprocess"]["peak_rss"].get("jvm", 0), "#9467bd"),
            (
                "Python workers",
                lambda r: r["cifarflow"]["preprocess"]["peak_rss"].get("workers", 0),
                "#ff7f0e",
            ),
            ("ingest", lambda r: r["cifarflow"]["ingest"]["peak_total_rss"], "#8c564b"),
            ("floor", lambda r: r["floor"]["peak_total_rss"], "#9e9e9e"),
        )
        for label, value, color in series:
            ax2.plot(
                scales,
                [value(r) / 1e6 for r in rows],
                marker=marker,
                color=color,
                linestyle="-" if fmt == "binary" else ":",
                label=f"{label} ({fmt})",
            )
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("images (1x = 60k, 10x = 600k, 50x = 3M)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    ax1.set_ylabel("images / s, whole run (higher is better)")
    ax1.set_title("Throughput against scale", fontsize=10)
    ax2.set_yscale("log")
    ax2.set_ylabel("peak RSS, MB (log)")
    ax2.set_title("Peak memory per process role", fontsize=10)
    fig.suptitle(
        f"cifarflow ingest + preprocess (local[2]) vs a one-process streaming floor, 2 cores (code of {latest}, "
        "best run of each)",
        fontsize=10,
    )
    save_figure(fig, "scale_benchmark.png")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p_run = sub.add_parser("run", help="floor and cifarflow at some scales")
    p_run.add_argument(
        "--scale", type=int, action="append", help="multiples of CIFAR-10 (default: 1, 10, 50)"
    )
    p_run.add_argument("--format", default="binary", choices=["python", "binary"])
    p_run.add_argument("--master", default="local[2]")
    p_run.add_argument("--repeat", type=int, default=1)
    p_run.add_argument("--workdir", default="/tmp/scale")
    p_run.add_argument(
        "--floor-malloc", default="kept", choices=["kept", "glibc"], help="the floor's allocator setting"
    )
    p_floor = sub.add_parser("floor", help="the floor itself (one process)")
    p_floor.add_argument("--source", required=True)
    p_floor.add_argument("--out", required=True)
    p_floor.add_argument("--malloc", default="kept", choices=["kept", "glibc"])
    sub.add_parser("table")
    p_plot = sub.add_parser("plot")
    p_plot.add_argument("--commit", action="append", default=[], help="plot the runs of these commits' code")
    args = parser.parse_args()
    if args.what == "run":
        args.scale = args.scale or [1, 10, 50]
        run(args)
    elif args.what == "floor":
        floor(args.source, args.out, args.malloc)
    else:
        {"table": table, "plot": plot}[args.what](args)


if __name__ == "__main__":
    main()
