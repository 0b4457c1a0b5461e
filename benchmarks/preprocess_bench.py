"""Benchmark ``cifarflow preprocess``: images/s and peak memory at 1x and 10x CIFAR-10 size.

Each run is a fresh ``python -m cifarflow preprocess`` process (JVM start included, as a user sees it).
A sampler reads /proc every 0.1 s for the whole process tree: the Python driver, the Spark JVM (in local
mode it is the driver and the executors at once) and the Python workers. It records peak RSS per role and
the peak of their sum, and the peak proportional set size (PSS: shared pages split between the processes
that share them, so forked Python workers are not counted twice).

    .venv/bin/python benchmarks/preprocess_bench.py run --scale 1 --scale 10
    .venv/bin/python benchmarks/preprocess_bench.py formats          # raw pickle vs Parquet vs SQLite
    .venv/bin/python benchmarks/preprocess_bench.py plot             # docs/img/preprocess_benchmark.png

Results are appended to ``benchmarks/results/*.json`` (one JSON object a line).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")
LOAD_BEFORE = [0.0]  # the 1-minute load average when the last measured command started


# -- process-tree memory sampling -------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as handle:
                out += [int(c) for c in handle.read().split()]
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * PAGE
    except OSError:
        return 0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def _role(pid: int, root: int) -> str:
    if pid == root:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmd = handle.read()
    except OSError:
        return "other"
    if b"java" in cmd.split(b"\0")[0]:
        return "jvm"
    if b"python" in cmd:
        return "workers"
    return "other"


@dataclass
class Peaks:
    """Peak bytes per role (``driver``: the Python driver alone) and of the whole tree."""

    rss: dict[str, int] = field(default_factory=dict)
    total_rss: int = 0
    total_pss: int = 0
    samples: int = 0
    cpu: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds at its last sample
    roles: dict[int, str] = field(default_factory=dict)

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())

    def cpu_by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, seconds in self.cpu.items():
            role = self.roles.get(pid, "other")
            out[role] = round(out.get(role, 0.0) + seconds, 1)
        return out


class Sampler(threading.Thread):
    def __init__(self, root: int, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peaks = Peaks()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            by_role: dict[str, int] = {}
            total_rss = total_pss = 0
            # PSS walks every page table entry: on a 10 GB process that is costly, so only every 10th sample.
            with_pss = self.peaks.samples % 10 == 0
            for pid in tree(self.root):
                rss = _rss(pid)
                role = _role(pid, self.root)
                self.peaks.cpu[pid] = max(self.peaks.cpu.get(pid, 0.0), _cpu_seconds(pid))
                if role != "other" or pid not in self.peaks.roles:  # an exited process reads as "other"
                    self.peaks.roles[pid] = role
                by_role[role] = by_role.get(role, 0) + rss
                total_rss += rss
                total_pss += _pss(pid) if with_pss else 0
            for role, value in by_role.items():
                self.peaks.rss[role] = max(self.peaks.rss.get(role, 0), value)
            self.peaks.total_rss = max(self.peaks.total_rss, total_rss)
            self.peaks.total_pss = max(self.peaks.total_pss, total_pss)
            self.peaks.samples += 1
            self.stop.wait(self.interval)


def measured(
    command: list[str], env: dict[str, str] | None = None, log: Path | None = None
) -> tuple[float, Peaks, str]:
    """Run ``command``; return wall seconds, memory peaks and its stderr."""
    LOAD_BEFORE[0] = os.getloadavg()[0]  # other work on the machine skews timings; record how busy it was
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    sampler = Sampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    text = out.decode() + err.decode()
    if log is not None:
        log.write_text(text)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{text[-3000:]}")
    return seconds, sampler.peaks, text


def machine() -> dict[str, Any]:
    mem = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    cpu = ""
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "load_avg_1m_before": round(LOAD_BEFORE[0], 2),
    }


def record(name: str, result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{name}.json", "a") as handle:
        handle.write(json.dumps(result, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True))


# -- data ---------------------------------------------------------------------------------------------------


def cifarflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "cifarflow", *args]


def prepare(workdir: Path, scale: int, fmt: str) -> tuple[str, int]:
    """``scale`` x CIFAR-10 of synthetic images, ingested under workdir (cached): (raw URL, images)."""
    train, test = 50_000 * scale, 10_000 * scale
    base = workdir / f"{fmt}-x{scale}"
    raw = base / "work" / "raw"
    if not (raw / "_ingest.json").exists():
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        subprocess.run(
            cifarflow(
                "synth", "--out", str(base), "--train", str(train), "--test", str(test), "--format", fmt
            ),
            check=True,
            cwd=REPO,
        )
        archive = next(base.glob("*.tar.gz"))
        subprocess.run(
            cifarflow("ingest", "--source", str(archive), "--dest", str(base / "work")), check=True, cwd=REPO
        )
        archive.unlink()  # only the raw folder is needed from now on
    return str(raw), train + test


def _stamp(log: str, pattern: str) -> float | None:
    """The time (seconds in the day) of the first log line matching ``pattern``."""
    found = re.search(r"^\S+ (\d\d):(\d\d):(\d\d),(\d{3}) \w+ cifarflow\S* " + pattern, log, re.MULTILINE)
    if not found:
        return None
    h, m, sec, ms = (int(x) for x in found.groups())
    return h * 3600 + m * 60 + sec + ms / 1000


def phases(log: str) -> dict[str, float]:
    """Seconds per phase, from the job's own log lines (``start_s``: from the plan's line to Spark's)."""
    out: dict[str, float] = {}
    planned, started = _stamp(log, "preprocessing "), _stamp(log, r"Spark \S+, master")
    if planned is not None and started is not None:
        out["start_s"] = round(started - planned, 2)
    for key, pattern in (("pass1_s", r"pass 1: .*\(([\d.]+) s\)"), ("pass2_s", r"pass 2: .*\(([\d.]+) s\)")):
        found = re.search(pattern, log)
        if found:
            out[key] = float(found.group(1))
    return out


def run(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    for scale in args.scale:
        raw, images = prepare(workdir, scale, args.format)
        raw_bytes = sum(p.stat().st_size for p in Path(raw).rglob("*") if p.is_file())
        for attempt in range(args.repeat):
            out = workdir / "datasets" / f"{args.format}-x{scale}"
            shutil.rmtree(out, ignore_errors=True)
            command = cifarflow("preprocess", "--raw", raw, "--out", str(out), "--master", args.master)
            env = {**os.environ, "CIFARFLOW_SPARK_UI": "0"}
            seconds, peaks, log = measured(command, env, workdir / f"preprocess-x{scale}-{attempt}.log")
            dataset = next(out.iterdir())
            parquet = sum(p.stat().st_size for p in dataset.rglob("*.parquet"))
            record(
                "preprocess",
                {
                    "benchmark": "cifarflow preprocess",
                    "command": " ".join(["cifarflow", *command[3:]]),
                    "scale": scale,
                    "format": args.format,
                    "master": args.master,
                    "images": images,
                    "seconds": round(seconds, 2),
                    "images_per_s": round(images / seconds, 1),
                    # CPU time of the whole tree: less sensitive than wall time to other work on the machine.
                    "cpu_s": round(peaks.cpu_seconds, 1),
                    "cpu_s_by_role": peaks.cpu_by_role(),
                    **phases(log),
                    "raw_bytes": raw_bytes,
                    "parquet_bytes": parquet,
                    "peak_rss": peaks.rss,
                    "peak_total_rss": peaks.total_rss,
                    "peak_total_pss": peaks.total_pss,
                    "machine": machine(),
                    "when": time.strftime("%Y-%m-%d %H:%M"),
                },
            )


def paired(args: argparse.Namespace) -> None:
    """Interleaved fresh-process runs of variants (environment settings; PYTHONPATH=<tree>/src runs another
    checkout's code), alternating which goes first, so that load drifts hit every variant alike."""
    workdir = Path(args.workdir)
    raw, images = prepare(workdir, 1, args.format)
    variants = []
    for text in args.variant:
        name, _, settings = text.partition(":")
        variants.append((name, dict(x.split("=", 1) for x in settings.split(",") if x)))
    for pair in range(args.pairs):
        for name, env in variants if pair % 2 == 0 else variants[::-1]:
            out = workdir / "datasets" / f"paired-{name}"
            shutil.rmtree(out, ignore_errors=True)
            command = cifarflow("preprocess", "--raw", raw, "--out", str(out), "--master", args.master)
            seconds, peaks, log = measured(
                command, {**os.environ, "CIFARFLOW_SPARK_UI": "0", **env}, workdir / f"paired-{name}.log"
            )
            record(
                "preprocess_paired",
                {
                    "label": args.label,
                    "variant": name,
                    "env": env,
                    "pair": pair,
                    "images": images,
                    "seconds": round(seconds, 2),
                    "cpu_s": round(peaks.cpu_seconds, 1),
                    "cpu_s_by_role": peaks.cpu_by_role(),
                    **phases(log),
                    "dataset": next(out.iterdir()).name,
                    # Every variant must write the same dataset: its manifest's bytes say so.
                    "manifest_sha256": hashlib.sha256(
                        next(out.iterdir()).joinpath("_manifest.json").read_bytes()
                    ).hexdigest(),
                    "machine": machine(),
                    "when": time.strftime("%Y-%m-%d %H:%M"),
                },
            )


# -- storage formats (docs/architecture.md) ------------------------------------------------------------------


def formats(args: argparse.Namespace) -> None:
    """Sizes and read speeds of the same 60k images as raw pickles, Parquet shards and SQLite BLOB rows."""
    import sqlite3

    import numpy as np
    import pyarrow.parquet as pq

    from cifarflow.data.cifar import chw_to_hwc, restricted_loads

    workdir = Path(args.workdir)
    raw, images = prepare(workdir, 1, "python")
    out = workdir / "datasets" / "formats"
    if not out.exists():
        subprocess.run(
            cifarflow("preprocess", "--raw", raw, "--out", str(out), "--master", "local[2]"), check=True
        )
    dataset = next(out.iterdir())
    index = json.loads((Path(raw) / "_ingest.json").read_text())
    batches = [Path(raw) / index["folder"] / m["path"] for m in index["members"] if m["split"] != "meta"]
    shards = sorted(dataset.rglob("*.parquet"))
    result: dict[str, Any] = {"images": images, "machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M")}

    def best(fn: Any, repeat: int = 3) -> float:
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        return min(times)

    def read_pickles() -> None:
        for path in batches:
            chw_to_hwc(np.asarray(restricted_loads(path.read_bytes())[b"data"]))

    def read_parquet() -> None:
        for path in shards:
            table = pq.read_table(path, columns=["label", "image"])
            np.frombuffer(table.column("image").combine_chunks().buffers()[2], np.uint8)

    def read_labels_parquet() -> None:
        for path in shards:
            pq.read_table(path, columns=["label"])

    read_all = round(best(read_pickles), 3)
    # A pickle cannot be read in part: the labels cost a full read.
    result["pickle"] = {
        "bytes": sum(p.stat().st_size for p in batches),
        "read_all_s": read_all,
        "read_labels_s": read_all,
    }
    result["parquet"] = {
        "bytes": sum(p.stat().st_size for p in shards),
        "files": len(shards),
        "read_all_s": round(best(read_parquet), 3),
        "read_labels_s": round(best(read_labels_parquet), 3),
    }
    # A relational table (id, label, image BLOB): what "put it in a database" means at its simplest.
    db = workdir / "images.sqlite"
    db.unlink(missing_ok=True)
    started = time.perf_counter()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE images (id TEXT PRIMARY KEY, label INTEGER, image BLOB)")
    for path in shards:
        table = pq.read_table(path)
        con.executemany(
            "INSERT INTO images VALUES (?, ?, ?)",
            zip(*(table.column(c).to_pylist() for c in ("id", "label", "image")), strict=True),
        )
    con.commit()
    write_s = time.perf_counter() - started

    def read_sqlite() -> None:
        rows = con.execute("SELECT label, image FROM images").fetchall()
        np.frombuffer(b"".join(r[1] for r in rows), np.uint8)

    def read_labels_sqlite() -> None:
        con.execute("SELECT label FROM images").fetchall()

    result["sqlite"] = {
        "bytes": db.stat().st_size,
        "write_s": round(write_s, 2),
        "read_all_s": round(best(read_sqlite), 3),
        "read_labels_s": round(best(read_labels_sqlite), 3),
    }
    con.close()
    db.unlink()
    # The seed notebook's in-memory form: a pandas frame of 3072 float64 columns.
    result["pandas_float_frame_bytes"] = images * (3072 + 1) * 8
    record("formats", result)


# -- plot ---------------------------------------------------------------------------------------------------


def _latest(name: str) -> list[dict[str, Any]]:
    path = RESULTS / f"{name}.json"
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )


def best_runs() -> dict[tuple[str, int], dict[str, Any]]:
    """The fastest run of each (format, scale): other work on a shared machine only ever slows a run down."""
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for r in _latest("preprocess"):
        key = (r["format"], r["scale"])
        if key not in best or r["seconds"] < best[key]["seconds"]:
            best[key] = r
    return best


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The figure for the seed notebook on this machine (measured by hand before this project).
    reference = {"images_per_s": 663, "peak_total_rss": 4.0e9, "peak_rss": {}, "images": 50_000}
    baseline = _latest("seed_notebook")[-1:]
    bars: list[tuple[str, dict[str, Any]]] = [("seed notebook\n(issue's figure)", reference)]
    bars += [(f"seed notebook\n{b['images'] // 1000}k, here", b) for b in baseline]
    for (fmt, scale), r in sorted(best_runs().items(), key=lambda kv: (kv[0][1], kv[0][0])):
        bars.append((f"cifarflow {scale}x\n{fmt} {r['images'] // 1000}k", r))
    names = [n for n, _ in bars]
    colors = ["#9e9e9e" if n.startswith("seed") else "#1f77b4" for n in names]
    gb = 1e9
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    ax1.bar(names, [r["images_per_s"] for _, r in bars], color=colors)
    ax1.set_ylabel("images / s (higher is better)")
    ax1.set_title("Throughput (whole command, JVM start included)", fontsize=10)
    for i, (_, r) in enumerate(bars):
        ax1.annotate(
            f"{r['images_per_s']:,.0f}", (i, r["images_per_s"]), ha="center", va="bottom", fontsize=8
        )
    width = 0.27
    xs = list(range(len(bars)))
    series = (
        ("all processes", lambda r: r["peak_total_rss"], "#ff7f0e", -width),
        ("Spark JVM", lambda r: r["peak_rss"].get("jvm", 0), "#9467bd", 0.0),
        ("Python driver", lambda r: r["peak_rss"].get("driver", 0), "#2ca02c", width),
    )
    for label, value, color, dx in series:
        ax2.bar([x + dx for x in xs], [value(r) / gb for _, r in bars], width, label=label, color=color)
    ax2.set_xticks(xs, names)
    ax2.set_ylabel("peak RSS, GB (lower is better)")
    ax2.set_title("Memory", fontsize=10)
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=8)
    machine_info = bars[-1][1]["machine"]
    fig.suptitle(
        f"cifarflow preprocess vs the seed notebook, local[2] on {machine_info['cpus']} cores "
        "(best run of each; synthetic CIFAR-10-format data; 1x = 60k images, 10x = 600k)",
        fontsize=10,
    )
    save_figure(fig, "preprocess_benchmark.png")


def save_figure(fig: Any, name: str) -> None:
    """Lay out ``fig`` and write it to docs/img/``name``."""
    fig.tight_layout()
    out = REPO / "docs" / "img" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    p_run = sub.add_parser("run", help="time preprocess at some scales")
    p_run.add_argument("--scale", type=int, action="append", help="multiples of CIFAR-10 (default: 1 and 10)")
    p_run.add_argument("--format", default="python", choices=["python", "binary"])
    p_run.add_argument("--master", default="local[2]")
    p_run.add_argument("--repeat", type=int, default=1)
    p_paired = sub.add_parser("paired", help="interleaved 1x runs of variants (before/after tables)")
    p_paired.add_argument("--variant", action="append", required=True, help="NAME:ENV=VALUE,ENV=VALUE")
    p_paired.add_argument("--pairs", type=int, default=3)
    p_paired.add_argument("--label", default="", help="what the variants compare")
    p_paired.add_argument("--format", default="python", choices=["python", "binary"])
    p_paired.add_argument("--master", default="local[2]")
    for p in (
        p_run,
        p_paired,
        sub.add_parser("formats", help="pickle vs Parquet vs SQLite"),
        sub.add_parser("plot"),
    ):
        p.add_argument("--workdir", default="/tmp/cifarflow-bench")
    args = parser.parse_args()
    if args.what == "run":
        args.scale = args.scale or [1, 10]
        run(args)
    elif args.what == "paired":
        paired(args)
    elif args.what == "formats":
        formats(args)
    else:
        plot(args)


if __name__ == "__main__":
    main()
