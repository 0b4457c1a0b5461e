"""Fixtures for the serving tests: a small model trained on tiny synthetic data, and `cifarflow serve` running
as a real process on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from k8s.conftest import api, rendered  # noqa: F401  (the fake Kubernetes API server, the manifests)
from pipeline.conftest import cli  # noqa: F401  (the CLI in-process: exit code, stdout, stderr)
from train.conftest import tiny_dataset  # noqa: F401  (the training tests' dataset fixture)
from train.helpers import SMALL, Proc, free_port, start, wait_for

MODEL_NAME = "cifarflow"


@pytest.fixture(scope="session")
def small_model(tiny_dataset: str, tmp_path_factory: pytest.TempPathFactory) -> str:  # noqa: F811
    """One epoch of a tiny ResNet, evaluated (metrics.json): what it predicts matters, not how well."""
    out = tmp_path_factory.mktemp("served") / "model"
    args = ["train", "--data", tiny_dataset, "--out", str(out), "--epochs", "1", "--batch-size", "64"]
    proc = start([*args, *SMALL], out.parent, "train")
    assert proc.wait(timeout=600) == 0, proc.err()[-3000:]
    return str(out)


@dataclass
class Server:
    proc: Proc
    url: str

    def infer_url(self, name: str = MODEL_NAME) -> str:
        return f"{self.url}/v2/models/{name}/infer"


def start_server(model: str, logs: Path, name: str, *extra: str) -> Server:
    port = free_port()
    proc = start(["serve", "--model", model, "--port", str(port), *extra], logs, name)
    server = Server(proc, f"http://127.0.0.1:{port}")

    def ready() -> bool:
        try:
            return httpx.get(f"{server.url}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 120, "the server to be ready", [proc])
    return server


@pytest.fixture(scope="module")
def server(small_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Limits small enough to hit in a test: 64 images and 2 MiB a request."""
    logs = tmp_path_factory.mktemp("serve-logs")
    srv = start_server(small_model, logs, "serve", "--max-batch", "64", "--max-request-mb", "2")
    try:
        yield srv
    finally:
        srv.proc.kill()
