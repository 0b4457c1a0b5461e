"""One storage layer for every step: fsspec URLs (``file://``, ``s3://``, ``gs://``) or plain local paths.

The same :class:`Store` is used by the CLI, by the Spark driver and inside Spark tasks (it pickles: it holds only
configuration, filesystems are created where it is used). Errors from botocore/aiohttp/gcsfs are translated into
one-line :class:`~cifarflow.errors.StorageError` messages that name the fix. Credentials come from the standard
places (environment, ADC, Workload Identity, Kubernetes Secrets exposed as env) and are never logged.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import urlsplit

import fsspec
from fsspec.spec import AbstractFileSystem

from cifarflow.errors import CifarflowError, StorageError

SUPPORTED = ("file", "s3", "gs", "gcs", "memory")
GCS_ENDPOINT = "https://storage.googleapis.com"


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
            return opts
        return {}


class Store:
    """Filesystem operations on URLs with errors a user can act on."""

    def __init__(self, config: StorageConfig | None = None) -> None:
        self.config = config or StorageConfig.from_env()
        self._local: AbstractFileSystem | None = None

    # -- plumbing -------------------------------------------------------------------------------------------
    def fs(self, url: str) -> tuple[AbstractFileSystem, str]:
        url = normalize(url)
        protocol = url.split("://", 1)[0].lower()
        if protocol == "file":
            # Hot in Spark tasks that read many small files: fsspec's URL parsing costs more than the read.
            if self._local is None:
                self._local = fsspec.filesystem("file")
            return self._local, url[len("file://") :]
        if protocol in ("gs", "gcs"):
            # gcsfs probes for hierarchical-namespace buckets by default; against emulators each probe stalls.
            os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            # Off GCE, google-auth probes the metadata server 3 times x 3 s, twice, before it gives up on
            # credentials; one probe finds a GKE/GCE metadata server just as well.
            os.environ.setdefault("GCE_METADATA_DETECT_RETRIES", "1")
            # gcsfs logs a traceback for every failed retry; the translated error says it in one line.
            if not logging.getLogger("cifarflow").isEnabledFor(logging.DEBUG):
                logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
            # Before gcsfs, whose filesystem already looks for credentials when it is made.
            _probe_gcs(url, self.config.connect_timeout)
        fs, path = fsspec.core.url_to_fs(url, **self.config.options(protocol))
        return fs, path

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self._local = None

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

    def is_dir(self, url: str) -> bool:
        with translate(url):
            fs, path = self.fs(url)
            return bool(fs.isdir(path))

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

    def sizes(self, url: str) -> dict[str, int]:
        """Name -> bytes of the files directly under ``url``, from one listing (empty if it does not exist)."""
        with translate(url):
            fs, path = self.fs(url)
            if not fs.exists(path):
                return {}
            return {
                posixpath.basename(e["name"].rstrip("/")): int(e["size"])
                for e in fs.ls(path, detail=True)
                if e.get("type") == "file"
            }

    @contextlib.contextmanager
    def open(self, url: str, mode: str = "rb", **kwargs: Any) -> Iterator[IO[Any]]:
        with translate(url):
            fs, path = self.fs(url)
            if "w" in mode and fs.protocol in ("file", ("file", "local")):
                fs.makedirs(posixpath.dirname(path), exist_ok=True)
            with fs.open(path, mode, **kwargs) as handle:
                yield handle

    # -- writes ---------------------------------------------------------------------------------------------
    def write_bytes(self, url: str, data: bytes | bytearray) -> None:
        """Write a whole object atomically: readers see the old state or the new one, never a part.

        Object stores give this with a single PUT; on a local disk the bytes go to a unique temporary name in the
        same folder first and are then renamed over the target.
        """
        with translate(url):
            fs, path = self.fs(url)
            if not _is_local(fs):
                fs.pipe_file(path, bytes(data))  # bytes as they are; a bytearray copied (clients want bytes)
                return
        with self.write_atomic(url) as handle:
            handle.write(data)

    @contextlib.contextmanager
    def write_atomic(self, url: str) -> Iterator[IO[bytes]]:
        """A file to write the whole of ``url`` into: it appears at ``url`` only when the block finishes, and a
        failure (disk full, read-only, Ctrl-C, bad input) leaves nothing behind, temporary files included.

        Local disks: a unique temporary name beside ``url`` (see :func:`local_tmp`), renamed over it. Object
        stores: a local temporary file, then one upload, which becomes visible only when it completes.
        """
        with translate(url):
            fs, path = self.fs(url)
        if _is_local(fs):
            with translate(url), local_tmp(path) as tmp, open(tmp, "wb") as handle:
                yield handle
            return
        with tempfile.TemporaryDirectory(prefix="cifarflow-upload-") as tmpdir:
            tmp = os.path.join(tmpdir, basename(url))
            with translate("file://" + tmp), open(tmp, "wb") as handle:  # local disk full: one line too
                yield handle
            self.put_file(tmp, url)

    def write_text(self, url: str, text: str) -> None:
        self.write_bytes(url, text.encode("utf-8"))

    def put_file(self, local_path: str, url: str) -> None:
        """Upload a local file (atomic in the same sense as :meth:`write_bytes`)."""
        with translate(url):
            fs, path = self.fs(url)
            if _is_local(fs):
                with local_tmp(path) as tmp:
                    fs.cp_file(local_path, tmp)
            else:
                fs.put_file(local_path, path)

    def move_file(self, local_path: str, url: str) -> None:
        """Like :meth:`put_file`, consuming ``local_path``: on the same local disk a rename, not a copy."""
        with translate(url):
            fs, path = self.fs(url)
            if not _is_local(fs):
                fs.put_file(local_path, path)
            else:
                with local_tmp(path) as tmp:
                    try:
                        os.replace(local_path, tmp)
                    except OSError as exc:
                        if exc.errno != errno.EXDEV:
                            raise
                        fs.cp_file(local_path, tmp)  # another filesystem
        with contextlib.suppress(FileNotFoundError):
            os.remove(local_path)

    def move_folder(self, url: str, dest: str) -> None:
        """Move the local folder ``url`` to ``dest`` (local filesystems only): one rename when ``dest`` does not
        exist, else file by file, each replacing its namesake atomically (a reader of ``dest`` never sees a file
        missing or half-written), then ``url`` is removed."""
        with translate(dest):
            fs, path = self.fs(url)
            _, target = self.fs(dest)
            assert _is_local(fs), "move_folder moves local folders only"
            try:
                os.rename(path, target)
                return
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
            for root, _, files in os.walk(path):
                into = os.path.join(target, os.path.relpath(root, path))
                os.makedirs(into, exist_ok=True)
                for name in files:
                    os.replace(os.path.join(root, name), os.path.join(into, name))
            shutil.rmtree(path)

    def remove(self, url: str, recursive: bool = False) -> None:
        """Delete a file or (with ``recursive``) a prefix; missing is fine."""
        with translate(url):
            fs, path = self.fs(url)
            with contextlib.suppress(FileNotFoundError):
                if fs.exists(path):
                    fs.rm(path, recursive=recursive)

    def check_folder(self, url: str, option: str) -> None:
        """Refuse a local destination folder that is, or lies under, a regular file (before any work)."""
        url = normalize(url)
        if not url.startswith("file://"):
            return
        path = url[len("file://") :]
        while not os.path.lexists(path) and os.path.dirname(path) != path:
            path = os.path.dirname(path)
        if not os.path.isdir(path):
            raise StorageError(
                f"{option} {redact(url)}: {path} is a file, not a folder",
                f"choose a folder (or a new path) for {option}",
            )

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


def _gcs_endpoint() -> tuple[str, int]:
    """``(host, port)`` gcsfs will talk to: ``STORAGE_EMULATOR_HOST`` (read as gcsfs reads it) or Google's."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator in ("", "default"):
        emulator = GCS_ENDPOINT
    elif "://" not in emulator:
        emulator = "http://" + emulator
    parts = urlsplit(emulator)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


_reached: set[tuple[str, int]] = set()  # endpoints this process has connected to: probed once


def _probe_gcs(url: str, timeout: float) -> None:
    """One TCP connect to the GCS endpoint: gcsfs retries a dead network six times with back-off (over a minute,
    a traceback per attempt), so a missing network must be found before its first request."""
    endpoint = _gcs_endpoint()
    if endpoint in _reached:
        return
    try:
        with socket.create_connection(endpoint, timeout=timeout):
            _reached.add(endpoint)
    except OSError as exc:
        raise StorageError(
            f"cannot reach the storage endpoint for {redact(url)} ({endpoint[0]}:{endpoint[1]}: {_short(exc)})",
            _ENDPOINT_FIX,
        ) from exc


TMP_INFIX = ".tmp-"  # what a local atomic write is named while it is written


@contextlib.contextmanager
def local_tmp(path: str) -> Iterator[str]:
    """A unique temporary name beside ``path``, renamed over it when the block finishes and removed when it
    fails (disk full, Ctrl-C): a failed write leaves nothing behind."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}{TMP_INFIX}{uuid.uuid4().hex}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    proto = fs.protocol
    return tuple(proto) if isinstance(proto, (tuple, list)) else (proto,)


def _is_local(fs: AbstractFileSystem) -> bool:
    return "file" in _protocols(fs)


@contextlib.contextmanager
def translate(url: str) -> Iterator[None]:
    """Turn the storage libraries' exceptions into one-line errors that name the fix.

    Classification is by exception type (and errno, HTTP status or botocore error code), never by message text:
    the block may also run the caller's code (streaming a member, decoding labels), whose errors pass through
    untouched.
    """
    shown = redact(url)
    try:
        yield
    except CifarflowError:
        raise
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


_CREDENTIALS_FIX = (
    "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS or "
    "Workload Identity) and the bucket's permissions"
)
_ENDPOINT_FIX = "check --s3-endpoint/AWS_ENDPOINT_URL or STORAGE_EMULATOR_HOST and that the server is up"
# Class names, so that optional libraries (botocore, aiohttp, google-auth, requests) need not be imported.
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError"}
_REJECTED = {"RefreshError"}
_UNREACHABLE = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
    "TransportError",
    "ConnectionError",  # builtin, and requests'
    "gaierror",
}
_REJECTED_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden", "ExpiredToken"}
_UNREACHABLE_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT}


def _classify(exc: BaseException, shown: str) -> StorageError | None:
    """The first exception in the cause chain whose type says what went wrong, as a one-line error."""
    for cur in [exc, *_causes(exc)]:
        mapped = _classify_one(cur, shown)
        if mapped is not None:
            return mapped
    return None


def _classify_one(exc: BaseException, shown: str) -> StorageError | None:
    names = {cls.__name__ for cls in type(exc).__mro__}
    status = _http_status(exc)
    if names & _NO_CREDENTIALS:
        return StorageError(
            f"no credentials for {shown}",
            "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (S3) or GOOGLE_APPLICATION_CREDENTIALS (GCS)",
        )
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno == errno.EACCES):
        return StorageError(f"access denied to {shown}: {_short(exc)}", _CREDENTIALS_FIX)
    if (
        names & _REJECTED
        or status in (401, 403)
        or _error_code(exc) in _REJECTED_CODES
        or _gcs_forbidden(exc)
    ):
        return StorageError(
            f"credentials rejected for {shown}",
            "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the service account's access to the bucket",
        )
    if _error_code(exc) == "NoSuchBucket":
        return StorageError(f"the bucket of {shown} does not exist", "create it first or fix the URL")
    if names & _UNREACHABLE or (isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS):
        return StorageError(f"cannot reach the storage endpoint for {shown}", _ENDPOINT_FIX)
    if isinstance(exc, OSError):
        return _local_error(exc, shown)
    return None


def _local_error(exc: OSError, shown: str) -> StorageError | None:
    """Local file-system failures (by errno) a user can fix."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(f"no space left writing {shown}", "free some space or choose another destination")
    if exc.errno == errno.EROFS:
        return StorageError(f"{shown} is on a read-only file system", "choose a writable destination")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return StorageError(
            f"a part of the path {shown} is a file, not a folder",
            "choose a folder (or a new path) as destination",
        )
    if exc.errno == errno.EISDIR:
        return StorageError(f"{shown} is a folder, not a file", "name a file")
    if exc.errno == errno.ENAMETOOLONG:
        return StorageError(f"a name in {shown[:80]}... is too long for the file system", "use shorter names")
    return None


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status an error carries as data (aiohttp ``ClientResponseError.status``, gcsfs
    ``HttpError.code``)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    attr = "status" if "ClientResponseError" in names else "code" if "HttpError" in names else None
    value = getattr(exc, attr, None) if attr else None
    return value if isinstance(value, int) else None


def _error_code(exc: BaseException) -> str | None:
    """botocore ``ClientError``'s structured error code."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _gcs_forbidden(exc: BaseException) -> bool:
    """gcsfs reports HTTP 403 as a bare ``OSError`` (no errno) from ``gcsfs.retry.validate_response``: known by
    where it was raised, not by its text."""
    if type(exc) is not OSError or exc.errno is not None:
        return False
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__") == "gcsfs.retry"


def _causes(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur = exc.__cause__ or exc.__context__
    while cur is not None and len(out) < 8:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out
