"""Benchmark ``cifarflow preprocess`` on image folders against a one-process Pillow floor.

For each case (images x pixels) a synthetic class-per-folder dataset (``cifarflow synth --format folder``, PNG and
JPEG mixed, 10 classes, 5/6 train and 1/6 test, images already ``size`` pixels a side) is generated and ingested
once under ``--workdir``. Then, as fresh processes measured like ``preprocess_bench.py`` (wall, CPU seconds and
peak RSS of the whole process tree, 1-minute load average before and after):

- **spark**: ``cifarflow preprocess --image-size S --master local[2]`` (the whole job: JVM start, two passes,
  dedup, split, stats, commit);
- **floor**: one Python process that reads the same landed files through the same storage layer, decodes and
  resizes each with ``cifarflow.data.images.decode`` and writes the raw HWC bytes to one Parquet file (zstd 1, as
  the shards are): strictly less work than the job (no checksums, no dedup, no split, no stats, no commit),
  with freed memory kept for reuse as the job's workers keep it (``cifarflow.data.allocator``).

Repeats are interleaved (spark, floor, floor, spark, ...) so both see the same machine load.

    .venv/bin/python benchmarks/image_preprocess_bench.py run --case 1000:32 --case 10000:96 [--repeat 2]
    .venv/bin/python benchmarks/image_preprocess_bench.py plot       # docs/img/image_preprocess_benchmark.png

Results are appended to ``benchmarks/results/image_preprocess.json`` (one JSON object a line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from preprocess_bench import REPO, _latest, cifarflow, machine, measured, phases, record

log = logging.getLogger("image_preprocess_bench")

NAME = "image_preprocess"
DEFAULT_CASES = [
    "1000:32",
    "1000:96",
    "1000:224",
    "10000:32",
    "10000:96",
    "10000:224",
    "100000:32",
    "100000:96",
]
SPARK_CORES = 2  # local[2]
FLOOR_BATCH = 2048  # images per Parquet row group in the floor's file (the shards' ROW_GROUP_ROWS)


# -- data ---------------------------------------------------------------------------------------------------


def prepare(workdir: Path, count: int, size: int) -> str:
    """``count`` synthetic images of ``size`` px, ingested under workdir (cached): the raw URL."""
    base = workdir / f"folder-{size}px-{count}"
    raw = base / "work" / "raw"
    if (raw / "_ingest.json").exists():
        return str(raw)
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    train = count * 5 // 6
    started = time.perf_counter()
    synth = ["synth", "--format", "folder", "--image-size", str(size), "--train", str(train)]
    subprocess.run(cifarflow(*synth, "--test", str(count - train), "--out", str(base / "src")), check=True)
    generated = time.perf_counter() - started
    subprocess.run(
        cifarflow("ingest", "--source", str(base / "src"), "--dest", str(base / "work")), check=True
    )
    shutil.rmtree(base / "src")  # only the landed copy is read from now on
    log.info(
        "%d images of %d px: synth %.0f s, ingest %.0f s",
        count,
        size,
        generated,
        time.perf_counter() - started - generated,
    )
    return str(raw)


# -- the floor: one process, decode + resize + one Parquet file ---------------------------------------------


def floor(args: argparse.Namespace) -> None:
    """Decode every landed image of ``--raw`` to ``--image-size`` and write one Parquet file; print the time
    spent reading, decoding and writing as one JSON line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cifarflow.data import manifest as mf
    from cifarflow.data.allocator import keep_freed_memory
    from cifarflow.data.images import UndecodableImage, decode
    from cifarflow.data.ingest.marker import ImageIndex, read_raw
    from cifarflow.storage import Store

    keep_freed_memory()  # as cifarflow's workers do (records before 895689a ran without it on both sides)
    store = Store()
    index = read_raw(store, args.raw)
    assert isinstance(index, ImageIndex), "the floor reads image folders"
    spent = {"read_s": 0.0, "decode_s": 0.0, "write_s": 0.0}
    ids: list[str] = []
    labels: list[int] = []
    pixels: list[bytes] = []
    images = 0
    with pq.ParquetWriter(args.out, mf.SCHEMA, **mf.WRITER_OPTIONS) as writer:

        def flush() -> None:
            clock = time.perf_counter()
            writer.write_table(pa.table({"id": ids, "label": labels, "image": pixels}, schema=mf.SCHEMA))
            for column in (ids, labels, pixels):
                column.clear()
            spent["write_s"] += time.perf_counter() - clock

        for records in index.batches(store, args.raw):
            for rec in records:
                clock = time.perf_counter()
                data = store.read_bytes(index.url(args.raw, rec))
                decoded = time.perf_counter()
                spent["read_s"] += decoded - clock
                try:
                    pixels.append(decode(data, args.image_size, name=rec.path).tobytes())
                except UndecodableImage:
                    continue
                finally:
                    spent["decode_s"] += time.perf_counter() - decoded
                ids.append(rec.path)
                labels.append(rec.label)
                images += 1
                if len(ids) >= FLOOR_BATCH:
                    flush()
        if ids:
            flush()
    print(json.dumps({"images": images, **{k: round(v, 2) for k, v in spent.items()}}))


# -- the measurement ----------------------------------------------------------------------------------------


def measure(
    engine: str,
    raw: str,
    *,
    count: int,
    size: int,
    workdir: Path,
    attempt: int,
    env_extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    out = workdir / "out" / f"{engine}-{size}px-{count}"
    shutil.rmtree(out, ignore_errors=True)  # a committed dataset would make the job a no-op
    env = {**os.environ, "CIFARFLOW_SPARK_UI": "0", **(env_extra or {})}
    if engine.startswith("spark"):
        args = [
            "preprocess",
            "--raw",
            raw,
            "--out",
            str(out),
            "--image-size",
            str(size),
            "--master",
            "local[2]",
        ]
        command, cores = cifarflow(*args), SPARK_CORES
    else:
        out.mkdir(parents=True)
        script = str(Path(__file__).resolve())
        args = ["floor", "--raw", raw, "--out", str(out / "images.parquet"), "--image-size", str(size)]
        command, cores = [sys.executable, script, *args], 1
    seconds, peaks, text = measured(command, env, workdir / f"{engine}-{size}px-{count}-{attempt}.log")
    load_after = os.getloadavg()[0]
    detail = phases(text) if engine.startswith("spark") else json.loads(text.strip().splitlines()[-1])
    parquet = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    shutil.rmtree(out)
    cpu = peaks.cpu_seconds
    return {
        "benchmark": "image folder preprocess",
        "engine": engine,
        "command": " ".join(["cifarflow" if engine.startswith("spark") else "floor", *args]),
        "images": count,
        "size": size,
        "attempt": attempt,
        "seconds": round(seconds, 2),
        "images_per_s": round(count / seconds, 1),
        "images_per_s_per_core": round(count / seconds / cores, 1),
        "cores": cores,
        "cpu_s": round(cpu, 1),
        "images_per_cpu_s": round(count / max(cpu, 1e-9), 1),
        "cpu_s_by_role": peaks.cpu_by_role(),
        "phases": detail,
        "parquet_bytes": parquet,
        "peak_rss": peaks.rss,
        "peak_total_rss": peaks.total_rss,
        "peak_total_pss": peaks.total_pss,
        "load_avg_1m_after": round(load_after, 2),
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }


def cases(given: list[str] | None) -> list[tuple[int, int]]:
    out = []
    for case in given or DEFAULT_CASES:
        count, _, size = case.partition(":")
        out.append((int(count), int(size)))
    return out


def run(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    for count, size in cases(args.case):
        raw = prepare(workdir, count, size)
        for attempt in range(args.repeat):
            # Alternate which engine goes first, so a load change between the two hits each as often.
            order = ("spark", "floor") if attempt % 2 == 0 else ("floor", "spark")
            for engine in order:
                record(NAME, measure(engine, raw, count=count, size=size, workdir=workdir, attempt=attempt))


# -- where the job's worker time goes -----------------------------------------------------------------------

# Loaded by every Python process that has the folder on PYTHONPATH, active only in Spark's Python daemon (the
# parent of the forked workers): wraps the image tasks' steps and writes, per worker, CPU seconds (the calling
# thread's, so other load on the machine does not count) and calls per step, at most every 0.5 s.
SITECUSTOMIZE = """
import os

if os.environ.get("PYTHON_WORKER_FACTORY_SECRET") and os.environ.get("CIFARFLOW_BENCH_PROFILE_DIR"):
    import functools, hashlib, json, time

    from cifarflow.data import images, manifest
    from cifarflow.data.preprocess import keys
    from cifarflow.storage import Store

    _OUT, _SPENT, _LAST = os.environ["CIFARFLOW_BENCH_PROFILE_DIR"], {}, [0.0]
    os.register_at_fork(after_in_child=lambda: (_SPENT.clear(), _LAST.__setitem__(0, 0.0)))

    def _add(name, started, flush=False):
        entry = _SPENT.setdefault(name, [0, 0.0])
        entry[0] += 1
        entry[1] += time.thread_time() - started
        if flush or time.monotonic() - _LAST[0] > 0.5:
            _LAST[0] = time.monotonic()
            with open(os.path.join(_OUT, f"{os.getpid()}.json"), "w") as handle:
                json.dump({"steps": _SPENT, "process_cpu_s": time.process_time()}, handle)

    def _timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            started = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                _add(name, started)
        return wrapper

    def _timed_iter(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            it = fn(*args, **kwargs)
            while True:
                started = time.thread_time()
                try:
                    item = next(it)
                except StopIteration:
                    _add(name, started, flush=True)  # a task's end: write what it did
                    return
                _add(name, started)
                yield item
        return wrapper

    from cifarflow.data.preprocess import folders, tasks

    def _patch(owner, attr, name, wrap=_timed):
        # Also where a module imported the name itself (``from cifarflow.data.images import decode``).
        original = getattr(owner, attr)
        wrapped = wrap(name, original)
        for module in (owner, folders, tasks, keys, manifest):
            if getattr(module, attr, None) is original:
                setattr(module, attr, wrapped)

    _patch(images, "decode", "decode")
    _patch(keys, "content_hashes", "blake2b of pixels")
    _patch(manifest, "write_table", "parquet encode, sha256, write file")
    _patch(hashlib, "sha256", "sha256")
    _patch(Store, "read_bytes", "read file")
    folders.image_scan_task = _timed_iter("pass 1 task", folders.image_scan_task)
    tasks._write_task = _timed_iter("pass 2 task", tasks._write_task)
"""


def profile(args: argparse.Namespace) -> None:
    """One Spark run with the worker steps timed (module-level SITECUSTOMIZE); recorded as ``spark-profiled``
    with the steps' CPU seconds summed over the workers. The wrappers cost a little: not a throughput figure."""
    workdir = Path(args.workdir)
    site, steps_dir = workdir / "profile-site", workdir / "profile-steps"
    for folder in (site, steps_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": str(site), "CIFARFLOW_BENCH_PROFILE_DIR": str(steps_dir)}
    for count, size in cases(args.case):
        raw = prepare(workdir, count, size)
        result = measure(
            "spark-profiled", raw, count=count, size=size, workdir=workdir, attempt=0, env_extra=env
        )
        steps: dict[str, list[float]] = {}
        worker_cpu = 0.0
        for path in steps_dir.glob("*.json"):
            data = json.loads(path.read_text())
            worker_cpu += data["process_cpu_s"]
            for name, (calls, seconds) in data["steps"].items():
                entry = steps.setdefault(name, [0, 0.0])
                entry[0] += calls
                entry[1] += seconds
            path.unlink()
        result["profile"] = {
            "steps_cpu_s": {name: round(seconds, 2) for name, (_, seconds) in steps.items()},
            "steps_calls": {name: int(calls) for name, (calls, _) in steps.items()},
            "forked_workers_cpu_s": round(worker_cpu, 2),
        }
        record(NAME, result)


# -- plot ---------------------------------------------------------------------------------------------------


def best_runs() -> dict[tuple[str, int, int], dict[str, Any]]:
    """The fastest run of each (engine, size, images): other work on a shared machine only slows a run down."""
    best: dict[tuple[str, int, int], dict[str, Any]] = {}
    for r in _latest(NAME):
        key = (r["engine"], r["size"], r["images"])
        if key not in best or r["seconds"] < best[key]["seconds"]:
            best[key] = r
    return best


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_runs()
    sizes = sorted({s for _, s, _ in best})
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 4.2), squeeze=False)
    cpus = next(iter(best.values()))["machine"]["cpus"] if best else "?"
    fig.suptitle(
        f"Image folders: cifarflow preprocess vs one-process decode+resize+Parquet, {cpus} cores "
        "(ratio: Spark / floor images/s, and floor / Spark CPU seconds)",
        fontsize=9,
    )
    styles = {"spark": ("#1f77b4", "Spark job, local[2]"), "floor": ("#9e9e9e", "one-process floor")}
    for ax, size in zip(axes[0], sizes, strict=True):
        for engine, (color, label) in styles.items():
            points = sorted(
                (n, r["images_per_s"]) for (e, s, n), r in best.items() if e == engine and s == size
            )
            if points:
                ax.plot(*zip(*points, strict=True), "o-", color=color, label=label)
            if points and engine == "floor":  # the aim for the job: 1.6x the floor
                ax.plot(
                    [n for n, _ in points],
                    [1.6 * v for _, v in points],
                    ":",
                    color=color,
                    label="aim: 1.6x floor",
                )
        for (e, s, n), r in best.items():
            other = best.get(("floor", s, n))
            if e == "spark" and s == size and other:
                wall = r["images_per_s"] / other["images_per_s"]
                cpu = other["cpu_s"] / r["cpu_s"]
                text = f"x{wall:.2f} wall\nx{cpu:.2f} CPU"
                ax.annotate(
                    text,
                    (n, r["images_per_s"]),
                    textcoords="offset points",
                    xytext=(0, 8),
                    ha="center",
                    fontsize=7,
                    bbox={"boxstyle": "round", "fc": "white", "ec": "#1f77b4", "alpha": 0.9},
                )
        ax.set_xscale("log")
        ax.set_xlim(500, 200_000)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("images")
        ax.set_title(f"{size} px", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("images / s (whole command, best run)")
    axes[0][0].legend(fontsize=8)
    out = REPO / "docs" / "img" / "image_preprocess_benchmark.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    log.info("wrote %s", out)


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


def table(args: argparse.Namespace) -> None:
    """The docs' tables (markdown) from the best runs: throughput and CPU, then where the job's time goes."""
    best = best_runs()
    rows = [
        "| images | px | Spark: wall s (load) | images/s | floor: wall s (load) | images/s | Spark/floor images/s "
        "| CPU s Spark / floor | floor/Spark CPU | peak RSS Spark / floor |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    parts = [
        "| images | px | Spark wall s | start+plan+commit s | pass 1 s | pass 2 s | CPU s: JVM / workers / driver "
        "| floor: read / decode / write s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (engine, size, count), spark in sorted(best.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        floor_run = best.get(("floor", size, count))
        if engine != "spark" or floor_run is None:
            continue
        load = (spark["machine"]["load_avg_1m_before"], floor_run["machine"]["load_avg_1m_before"])
        rows.append(
            f"| {count:,} | {size} | {spark['seconds']} ({load[0]}) | {spark['images_per_s']:,.0f} "
            f"| {floor_run['seconds']} ({load[1]}) | {floor_run['images_per_s']:,.0f} "
            f"| {spark['images_per_s'] / floor_run['images_per_s']:.2f} "
            f"| {spark['cpu_s']} / {floor_run['cpu_s']} | {floor_run['cpu_s'] / spark['cpu_s']:.2f} "
            f"| {_mb(spark['peak_total_rss'])} / {_mb(floor_run['peak_total_rss'])} |"
        )
        ph, roles, fl = spark["phases"], spark["cpu_s_by_role"], floor_run["phases"]
        rest = spark["seconds"] - ph.get("pass1_s", 0) - ph.get("pass2_s", 0)
        parts.append(
            f"| {count:,} | {size} | {spark['seconds']} | {rest:.1f} | {ph.get('pass1_s')} | {ph.get('pass2_s')} "
            f"| {roles.get('jvm')} / {roles.get('workers')} / {roles.get('driver')} "
            f"| {fl['read_s']} / {fl['decode_s']} / {fl['write_s']} |"
        )
    print("\n".join([*rows, "", *parts]))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p_run = sub.add_parser("run", help="time the job and the floor on some cases")
    p_run.add_argument("--repeat", type=int, default=1)
    p_profile = sub.add_parser("profile", help="one Spark run with its worker steps timed")
    for p in (p_run, p_profile):
        p.add_argument(
            "--case", action="append", help="IMAGES:PIXELS (default: the issue's grid but 100k:224)"
        )
        p.add_argument("--workdir", default="/tmp/cifarflow-bench/images")
    p_floor = sub.add_parser("floor", help="(internal) the one-process loop, timed by `run`")
    p_floor.add_argument("--raw", required=True)
    p_floor.add_argument("--out", required=True)
    p_floor.add_argument("--image-size", type=int, required=True)
    sub.add_parser("plot")
    sub.add_parser("table", help="markdown tables of the best runs")
    args = parser.parse_args()
    {"run": run, "floor": floor, "profile": profile, "plot": plot, "table": table}[args.what](args)


if __name__ == "__main__":
    main()
