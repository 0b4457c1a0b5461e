"""One storage layer for every step: fsspec URLs (``file://``, ``s3://``, ``gs://``) or plain local paths.

The same :class:`Store` is used by the CLI, by the Spark driver and inside Spark tasks (it pickles: it holds only
configuration, filesystems are created where it is used). Errors from botocore/aiohttp/gcsfs are translated into
one-line :class:`~cifarflow.errors.StorageError` messages that name the fix. Credentials come from the standard
places (environment, ADC, Workload Identity, Kubernetes Secrets exposed as env) and are never logged.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

import fsspec
from fsspec.spec import AbstractFileSystem

from cifarflow.errors import StorageError

SUPPORTED = ("file", "s3", "gs", "gcs", "memory")


def normalize(url: str) -> str:
    """Turn a plain path into an absolute ``file://`` URL; check the scheme of anything else."""
    if "://" not in url:
        return "file://" + os.path.abspath(os.path.expanduser(url))
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SUPPORTED:
        raise StorageError(
            f"unsupported URL scheme {scheme!r} in {redact(url)}",
            "use a local path, file://, s3:// or gs://",
        )
    return url


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL with ``/`` (object-store semantics, also for local paths)."""
    out = url.rstrip("/")
    for part in parts:
        out = out + "/" + part.strip("/")
    return out


def basename(url: str) -> str:
    return posixpath.basename(url.rstrip("/"))


def redact(url: str) -> str:
    """A URL safe to log: any ``user:password@`` part is dropped."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        return url.replace(parts.netloc, host, 1)
    return url


@dataclass(frozen=True)
class StorageConfig:
    """Where the object stores are. Everything else (credentials) comes from the environment."""

    s3_endpoint: str | None = None
    # Fail fast on an unreachable endpoint instead of botocore's minutes of retries.
    connect_timeout: float = 10.0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, s3_endpoint: str | None = None) -> StorageConfig:
        endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return cls(s3_endpoint=endpoint or None)

    def options(self, protocol: str) -> dict[str, Any]:
        if protocol == "s3":
            opts: dict[str, Any] = {
                "config_kwargs": {
                    "connect_timeout": self.connect_timeout,
                    "read_timeout": 120,
                    "retries": {"max_attempts": 2, "mode": "standard"},
                }
            }
            if self.s3_endpoint:
                opts["endpoint_url"] = self.s3_endpoint
            return {**opts, **self.extra}
        if protocol in ("gs", "gcs"):
            return dict(self.extra)
        return {}


class Store:
    """Filesystem operations on URLs with errors a user can act on."""

    def __init__(self, config: StorageConfig | None = None) -> None:
        self.config = config or StorageConfig.from_env()

    # -- plumbing -------------------------------------------------------------------------------------------
    def fs(self, url: str) -> tuple[AbstractFileSystem, str]:
        url = normalize(url)
        protocol = url.split("://", 1)[0].lower()
        if protocol in ("gs", "gcs"):
            # gcsfs probes for hierarchical-namespace buckets by default; against emulators each probe stalls.
            os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        fs, path = fsspec.core.url_to_fs(url, **self.config.options(protocol))
        return fs, path

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]

    # -- reads ----------------------------------------------------------------------------------------------
    def exists(self, url: str) -> bool:
        with translate(url):
            fs, path = self.fs(url)
            return bool(fs.exists(path))

    def read_bytes(self, url: str) -> bytes:
        with translate(url):
            fs, path = self.fs(url)
            return bytes(fs.cat_file(path))

    def read_text(self, url: str) -> str:
        return self.read_bytes(url).decode("utf-8")

    def size(self, url: str) -> int:
        with translate(url):
            fs, path = self.fs(url)
            return int(fs.size(path))

    def list(self, url: str) -> list[str]:
        """Full URLs of the entries directly under ``url`` (empty if it does not exist)."""
        with translate(url):
            fs, path = self.fs(url)
            if not fs.exists(path):
                return []
            protocol = normalize(url).split("://", 1)[0]
            return sorted(
                f"{protocol}://{p.lstrip('/') if protocol != 'file' else p}"
                for p in fs.ls(path, detail=False)
            )

    @contextlib.contextmanager
    def open(self, url: str, mode: str = "rb", **kwargs: Any) -> Iterator[IO[Any]]:
        with translate(url):
            fs, path = self.fs(url)
            if "w" in mode and fs.protocol in ("file", ("file", "local")):
                fs.makedirs(posixpath.dirname(path), exist_ok=True)
            with fs.open(path, mode, **kwargs) as handle:
                yield handle

    # -- writes ---------------------------------------------------------------------------------------------
    def write_bytes(self, url: str, data: bytes) -> None:
        """Write a whole object atomically: readers see the old state or the new one, never a part.

        Object stores give this with a single PUT; on a local disk the bytes go to a unique temporary name in the
        same folder first and are then renamed over the target.
        """
        with translate(url):
            fs, path = self.fs(url)
            if _is_local(fs):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.tmp-{uuid.uuid4().hex}"
                with open(tmp, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            else:
                fs.pipe_file(path, data)

    def write_text(self, url: str, text: str) -> None:
        self.write_bytes(url, text.encode("utf-8"))

    def put_file(self, local_path: str, url: str) -> None:
        """Upload a local file (atomic in the same sense as :meth:`write_bytes`)."""
        with translate(url):
            fs, path = self.fs(url)
            if _is_local(fs):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tmp = f"{path}.tmp-{uuid.uuid4().hex}"
                fs.cp_file(local_path, tmp)
                os.replace(tmp, path)
            else:
                fs.put_file(local_path, path)

    def remove(self, url: str, recursive: bool = False) -> None:
        """Delete a file or (with ``recursive``) a prefix; missing is fine."""
        with translate(url):
            fs, path = self.fs(url)
            with contextlib.suppress(FileNotFoundError):
                if fs.exists(path):
                    fs.rm(path, recursive=recursive)

    def check_reachable(self, url: str) -> None:
        """Fail early, with the fix, when the bucket behind ``url`` cannot be listed."""
        with translate(url):
            fs, path = self.fs(url)
            bucket = path.split("/", 1)[0] if not _is_local(fs) else None
            if bucket is not None:
                # One request. Unlike exists(), info() raises the real reason (403, unreachable).
                try:
                    fs.info(bucket)
                except FileNotFoundError:
                    raise StorageError(
                        f"bucket {bucket!r} of {redact(url)} does not exist", "create it first"
                    ) from None


def _is_local(fs: AbstractFileSystem) -> bool:
    proto = fs.protocol
    return "file" in (proto if isinstance(proto, tuple) else (proto,))


@contextlib.contextmanager
def translate(url: str) -> Iterator[None]:
    """Turn the storage libraries' exceptions into one-line errors that name the fix."""
    shown = redact(url)
    try:
        yield
    except StorageError:
        raise
    except PermissionError as exc:
        raise StorageError(
            f"access denied to {shown}: {_short(exc)}",
            "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS or "
            "Workload Identity) and the bucket's permissions",
        ) from exc
    except FileNotFoundError:
        raise
    except Exception as exc:
        mapped = _classify(exc, shown)
        if mapped is None:
            raise
        raise mapped from exc


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _classify(exc: BaseException, shown: str) -> StorageError | None:
    """Map by class name so optional libraries (botocore, aiohttp, google-auth) need not be imported."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    chain = [exc, *(_causes(exc))]
    text = " ".join(f"{type(e).__name__}: {e}" for e in chain)
    if names & {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"}:
        return StorageError(
            f"no credentials for {shown}",
            "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (S3) or GOOGLE_APPLICATION_CREDENTIALS (GCS)",
        )
    if any(
        k in text for k in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden", "401")
    ):
        return StorageError(
            f"credentials rejected for {shown}",
            "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the service account's access to the bucket",
        )
    connect_markers = (
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ClientConnectorError",
        "ServerDisconnectedError",
        "Cannot connect to host",
        "Connection refused",
        "Could not connect",
        "Name or service not known",
        "ConnectionRefusedError",
    )
    refused = isinstance(exc, OSError) and exc.errno in (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
    )
    if refused or any(k in text for k in connect_markers):
        return StorageError(
            f"cannot reach the storage endpoint for {shown}",
            "check --s3-endpoint/AWS_ENDPOINT_URL or STORAGE_EMULATOR_HOST and that the server is up",
        )
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return StorageError(f"the bucket of {shown} does not exist", "create it first or fix the URL")
    return None


def _causes(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur = exc.__cause__ or exc.__context__
    while cur is not None and len(out) < 8:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out
