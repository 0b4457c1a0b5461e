"""Where cifarflow's jobs run: ``local`` (this process) or ``k8s`` (Kubernetes jobs), behind one
:class:`~cifarflow.backends.base.Backend`. :func:`get_backend` is the one place that reads a backend's name."""

from __future__ import annotations

from cifarflow.backends.base import (
    BACKEND_NAMES,
    Backend,
    BackendName,
    DeployRequest,
    DeployResult,
    PreprocessRequest,
    PreprocessResult,
    Result,
    TrainRequest,
    TrainResult,
)
from cifarflow.backends.kubernetes import K8sOptions
from cifarflow.errors import InputError
from cifarflow.storage import Store

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "BackendName",
    "DeployRequest",
    "DeployResult",
    "K8sOptions",
    "PreprocessRequest",
    "PreprocessResult",
    "Result",
    "TrainRequest",
    "TrainResult",
    "get_backend",
]


def get_backend(name: str, *, store: Store, k8s: K8sOptions | None = None) -> Backend:
    """The backend called ``name``; ``k8s`` options (namespace, sizes...) matter to the Kubernetes one only."""
    if name == "local":
        from cifarflow.backends.local import LocalBackend

        return LocalBackend(store)
    if name == "k8s":
        from cifarflow.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(store, k8s)
    raise InputError(f"unknown backend {name!r}", f"use backend={' or backend='.join(BACKEND_NAMES)}")
