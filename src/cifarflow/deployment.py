"""The cluster's ``cifarflow-defaults`` ConfigMap, as the pipeline mounts it into every task (k8s/base).

It holds the workdir (``CIFARFLOW_WORKDIR``), the store (``AWS_ENDPOINT_URL``) and the launchers'
``CIFARFLOW_K8S_*`` settings of this cluster. Empty outside a cluster. Parameters and options win over it.
"""

from __future__ import annotations

import os

from cifarflow.storage import StorageConfig, Store

# Where the pipeline mounts the ConfigMap (pipelines/cifar10_pipeline.py mounts it there).
DEFAULTS_DIR = "/etc/cifarflow/defaults"
DEFAULTS_ENV = "CIFARFLOW_DEFAULTS_DIR"


def values() -> dict[str, str]:
    """The ConfigMap's keys and values; ``{}`` where none is mounted."""
    folder = os.environ.get(DEFAULTS_ENV, DEFAULTS_DIR)
    if not os.path.isdir(folder):
        return {}
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        # A mounted ConfigMap also holds ..data and timestamped folders: keys are the plain files.
        if not name.startswith(".") and os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                out[name] = handle.read()
    return out


def store(s3_endpoint: str) -> Store:
    """The store for an endpoint parameter: empty means the deployment's (``AWS_ENDPOINT_URL``), or none at all
    (GCS, AWS S3)."""
    return Store(StorageConfig.from_env(s3_endpoint or values().get("AWS_ENDPOINT_URL") or None))
