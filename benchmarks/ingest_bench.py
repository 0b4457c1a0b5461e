"""Benchmark ``cifarflow ingest`` of a CIFAR archive, paired: two source trees, interleaved runs.

Each run is a fresh ``cifarflow ingest`` process (imports included, as a user runs it) on the same 1x CIFAR-10
python-format synthetic tarball (``cifarflow synth``, 50k+10k images), into an empty destination: a local
folder, or a bucket on a moto S3 server started here. Recorded per run: wall seconds, CPU seconds (user +
system of the process and its threads) and the 1-minute load average; the table is the median of the runs.

Comparing two versions of the code: ``--tree NAME=PATH`` names a ``src`` folder put first on ``PYTHONPATH``
(e.g. ``git archive HEAD src | tar -x -C /tmp/before`` for the committed code); runs alternate between trees.

    .venv/bin/python benchmarks/ingest_bench.py --tree before=/tmp/before/src --tree after=src \\
        [--dest local] [--dest s3] [--repeat 3]

Appends one JSON object to ``benchmarks/results/ingest_bench.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench_common import REPO, append

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "NO_PROXY": "127.0.0.1,localhost",
}


def archive(workdir: Path) -> Path:
    """The 1x synthetic tarball, made once."""
    path = workdir / "src" / "cifar-10-python.tar.gz"
    if not path.exists():
        cli = [sys.executable, "-m", "cifarflow", "synth", "--out", str(path.parent)]
        subprocess.run([*cli, "--train", "50000", "--test", "10000"], check=True)
    return path


@contextlib.contextmanager
def moto_server(workdir: Path) -> Iterator[str]:
    """A moto S3 server on a free port; yields its endpoint."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    moto = Path(sys.executable).with_name("moto_server")
    with open(workdir / "moto.log", "wb") as log:
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
                break
            time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait()


def make_bucket(endpoint: str, name: str) -> None:
    import boto3

    with _env(S3_ENV):
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_once(tree: str, source: Path, dest: str, env: dict[str, str]) -> dict[str, Any]:
    """One fresh ``cifarflow ingest`` process: wall, CPU seconds of the child, load average before it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "cifarflow", "ingest", "--source", str(source), "--dest", dest],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, **env, "PYTHONPATH": tree, "CIFARFLOW_LOG_LEVEL": "WARNING"},
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "load_1m": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH of a src folder")
    parser.add_argument("--dest", action="append", choices=["local", "s3"], help="default: local")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "cifarflow-ingest-bench"))
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    trees = {name: str((REPO / path).resolve()) for name, path in trees.items()}
    workdir = Path(args.workdir)
    source = archive(workdir)
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        for kind in args.dest or ["local"]:
            env: dict[str, str] = {}
            if kind == "s3":
                endpoint = stack.enter_context(moto_server(workdir))
                env = {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}
            for i in range(args.repeat):
                for name, tree in trees.items():
                    if kind == "s3":
                        bucket = f"bench-{name}-{i}".lower()
                        make_bucket(endpoint, bucket)
                        dest = f"s3://{bucket}/work"
                    else:
                        dest = str(workdir / f"dest-{name}-{i}")
                        shutil.rmtree(dest, ignore_errors=True)
                    row = {"dest": kind, "tree": name, **run_once(tree, source, dest, env)}
                    print(f"{kind:5s} {name:8s} {row['wall_s']:6.2f} s wall {row['cpu_s']:6.2f} s CPU "
                          f"(load {row['load_1m']:.2f})", flush=True)  # fmt: skip
                    runs.append(row)
                    if kind == "local":
                        shutil.rmtree(dest, ignore_errors=True)
    summary = {
        f"{kind}/{name}": {
            key: statistics.median(r[key] for r in runs if (r["dest"], r["tree"]) == (kind, name))
            for key in ("wall_s", "cpu_s", "load_1m")
        }
        for kind in args.dest or ["local"]
        for name in trees
    }
    for key, row in summary.items():
        print(f"median {key:14s} {row['wall_s']:6.2f} s wall {row['cpu_s']:6.2f} s CPU")
    append("ingest_bench", {"archive_bytes": source.stat().st_size, "runs": runs, "median": summary})


if __name__ == "__main__":
    main()
