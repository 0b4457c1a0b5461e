"""Deploy-time set-up for the in-cluster S3 store (minikube overlay): credentials and the bucket.

``ensure_credentials`` creates the ``cifarflow-s3`` Secret once, with random keys generated in the cluster
(never in git, never in a manifest), in the jobs' namespace and in the KFP namespace (its components read the
bucket too). The Secret holds the AWS variables the jobs take as env and SeaweedFS's ``s3.json`` identity
file. ``ensure_bucket`` waits for the store and creates the bucket. Both are idempotent: a re-deploy changes
nothing.
"""

from __future__ import annotations

import json
import logging
import secrets
import string
import time
from collections.abc import Callable
from typing import Any

from cifarflow.errors import StorageError
from cifarflow.k8s.client import Kube

log = logging.getLogger(__name__)

ACCESS_KEY = "AWS_ACCESS_KEY_ID"
SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
S3_CONFIG = "s3.json"
LABELS = {"app.kubernetes.io/part-of": "cifarflow", "app.kubernetes.io/managed-by": "cifarflow-bootstrap"}


def new_credentials(user: str = "cifarflow") -> dict[str, str]:
    alphabet = string.ascii_uppercase + string.digits
    access = "".join(secrets.choice(alphabet) for _ in range(20))
    secret = secrets.token_urlsafe(30)
    identity = {
        "identities": [
            {
                "name": user,
                "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    return {ACCESS_KEY: access, SECRET_KEY: secret, S3_CONFIG: json.dumps(identity)}


def ensure_credentials(kube: Kube, name: str, copies: list[str]) -> bool:
    """Create the Secret in ``kube.namespace`` (if missing) and the same values in each ``copies`` namespace.

    Returns True when new credentials were generated."""
    data = kube.read_secret(name)
    created = False
    if data is None:
        if kube.create_secret(name, new_credentials(), LABELS):
            log.info("created Secret %s/%s with new credentials", kube.namespace, name)
            created = True
        data = kube.read_secret(name)  # whoever won a race, use what is stored
    if data is None:
        raise StorageError(
            f"Secret {kube.namespace}/{name} vanished while it was being created", "rerun the Job"
        )
    for namespace in copies:
        if kube.read_secret(name, namespace) is None:
            kube.create_secret(name, data, LABELS, namespace=namespace)
            log.info("copied Secret %s into namespace %s", name, namespace)
    return created


def ensure_bucket(
    endpoint: str,
    bucket: str,
    *,
    timeout_s: float = 300,
    make_fs: Callable[[str], Any] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Wait for the S3 endpoint to answer, then create ``bucket`` if it is missing. True if it was created."""
    if make_fs is None:
        import s3fs

        def make_fs(url: str) -> Any:
            return s3fs.S3FileSystem(
                endpoint_url=url, config_kwargs={"connect_timeout": 5, "retries": {"max_attempts": 1}}
            )

    deadline = time.monotonic() + timeout_s
    delay = 1.0
    while True:
        try:
            fs = make_fs(endpoint)
            if fs.exists(bucket):
                log.info("bucket %s exists", bucket)
                return False
            fs.mkdir(bucket)
            log.info("created bucket %s at %s", bucket, endpoint)
            return True
        except Exception as exc:
            # The store may still be starting (connection refused) or not have loaded its identities yet.
            if time.monotonic() + delay > deadline:
                raise StorageError(
                    f"cannot create bucket {bucket} at {endpoint}: {type(exc).__name__}: {exc}",
                    "check the store's pod (kubectl logs deploy/seaweedfs) and the cifarflow-s3 Secret",
                ) from None
            log.info("waiting for %s (%s)", endpoint, type(exc).__name__)
            sleep(delay)
            delay = min(delay * 2, 15.0)
