"""Benchmark `cifarflow serve`: requests/s, images/s and latency of V2 REST inference at batch 1 and 64.

Trains a ResNet-20 (what `cifarflow run` trains) for one short epoch on synthetic images (its weights do not
change the speed), starts `cifarflow serve` as its own process, and drives it over HTTP with keep-alive
clients (httpx), 1 and 4 at a time, each for ``--seconds`` after a warm-up. The client's JSON encoding is done
once per batch size up front, so the figures are the server's.

    .venv/bin/python benchmarks/serve_bench.py [--seconds 10]

Appends one JSON object to ``benchmarks/results/serve_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import httpx
import numpy as np

from bench_common import append, build_dataset


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cifarflow(*args: str, **popen: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.Popen([sys.executable, "-m", "cifarflow", *args], env=env, **popen)


def train_model(tmp: str) -> str:
    data = build_dataset(os.path.join(tmp, "ds"), images=1024, files=2)
    model = os.path.join(tmp, "model")
    args = ["train", "--data", data, "--out", model, "--epochs", "1", "--batch-size", "128", "--no-evaluate"]
    if cifarflow(*args, stdout=subprocess.DEVNULL).wait() != 0:
        raise SystemExit("training the benchmark model failed")
    return model


def drive(url: str, body: bytes, batch: int, clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client() -> None:
        mine = []
        with httpx.Client(timeout=60, headers={"Content-Type": "application/json"}) as http:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                answer = http.post(url, content=body)
                mine.append(time.perf_counter() - t0)
                assert answer.status_code == 200, answer.text
        with lock:
            latencies.extend(mine)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "batch": batch,
        "clients": clients,
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / wall, 1),
        "images_per_s": round(len(latencies) * batch / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "request_bytes": len(body),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    opts = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        model = train_model(tmp)
        port = free_port()
        server = cifarflow("serve", "--model", model, "--port", str(port), stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/v2/models/cifarflow/infer"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.5)
            for batch in (1, 64):
                images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
                tensor = {"name": "images", "datatype": "UINT8", "shape": list(images.shape)}
                body = json.dumps({"inputs": [{**tensor, "data": images.ravel().tolist()}]}).encode()
                drive(url, body, batch, 1, min(3.0, opts.seconds))  # warm-up
                for clients in (1, 4):
                    row = drive(url, body, batch, clients, opts.seconds)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    append("serve_bench", {"model": "resnet20", "seconds": opts.seconds, "rows": rows})


if __name__ == "__main__":
    main()
