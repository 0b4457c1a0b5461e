"""preprocess on a real Spark standalone cluster (a master and two workers on 127.0.0.1), with an executor
SIGKILLed in the middle of the write pass: the job must finish with a manifest byte-identical to an
undisturbed run's; and an image folder (mixed sizes, a broken file) decoded and resized by the executors into
the dataset Spark local mode writes.

The cluster is started with pyspark's bundled ``bin/spark-class`` and always torn down (each daemon is in its
own process group, so executors and their Python workers go with it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cifarflow.data import manifest as mf
from cifarflow.data import preprocess as pre
from cifarflow.data.ingest import ingest
from cifarflow.data.manifest import MANIFEST, STATS
from cifarflow.data.synth_folders import write_image_folder
from cifarflow.storage import Store

from .test_images_e2e import with_a_broken_file

pytestmark = pytest.mark.slow

SPARK_HOME = Path(str(__import__("pyspark").__file__)).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    master: str
    work_dir: Path
    env: dict[str, str]

    def executors(self) -> list[int]:
        """Pids of this cluster's executor JVMs (their working directory is under our workers' work dir)."""
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
                cwd = os.readlink(proc / "cwd")
            except OSError:
                continue
            if b"CoarseGrainedExecutorBackend" in cmdline and cwd.startswith(str(self.work_dir)):
                pids.append(int(proc.name))
        return pids


def _wait(what: str, check: object, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"a Spark daemon exited ({proc.args!r}) before {what}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def _alive_workers(ui: str) -> int:
    try:
        with urllib.request.urlopen(f"{ui}/json/", timeout=2) as resp:
            return int(json.load(resp).get("aliveworkers", 0))
    # Not up yet: no answer, or (on a busy machine) a page that is not the JSON yet.
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("spark-cluster")
    port, ui_port = free_port(), free_port()
    env = {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOG_DIR": str(root / "logs"),
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_DAEMON_MEMORY": "256m",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    commands = [
        [
            spark_class,
            "org.apache.spark.deploy.master.Master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(ui_port),
        ],
    ]
    master = f"spark://127.0.0.1:{port}"
    for i in range(2):
        commands.append(
            [
                spark_class,
                "org.apache.spark.deploy.worker.Worker",
                "--host",
                "127.0.0.1",
                "--cores",
                "1",
                "--memory",
                "1g",
                "--webui-port",
                str(free_port()),
                "--work-dir",
                str(root / "work" / str(i)),
                master,
            ]
        )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, command in enumerate(commands):
            with open(root / f"daemon-{i}.log", "wb") as log:
                procs.append(
                    subprocess.Popen(
                        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
            if i == 0:
                _wait(
                    "the master",
                    lambda: _alive_workers(f"http://127.0.0.1:{ui_port}") >= 0 and _port_open(port),
                    120,
                    procs,
                )
        _wait("two workers", lambda: _alive_workers(f"http://127.0.0.1:{ui_port}") == 2, 120, procs)
        yield Cluster(master, root / "work", env)
    finally:
        for proc in reversed(procs):
            _stop_group(proc)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a daemon and everything it started (executors, Python workers): they share its process group."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            # Executors may outlive the worker by a moment; they are in the same group.
            time.sleep(0.5)
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _preprocess(cluster: Cluster, raw: str, out: Path, delay: float, *extra: str) -> subprocess.Popen[bytes]:
    env = {
        **cluster.env,
        "CIFARFLOW_TEST_TASK_DELAY_S": str(delay),
        # Small executors: two fit this machine beside the driver.
        "PYSPARK_SUBMIT_ARGS": "--conf spark.executor.memory=512m pyspark-shell",
        "CIFARFLOW_SPARK_UI": "0",
    }
    command = [
        sys.executable,
        "-m",
        "cifarflow",
        "preprocess",
        "--raw",
        raw,
        "--out",
        str(out),
        "--master",
        cluster.master,
        "--seed",
        "3",
        *extra,
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[bytes], timeout: float = 300) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"preprocess did not finish in {timeout:.0f} s:\n{err.decode()[-3000:]}")
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode(), err.decode()


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> str:
    from cifarflow.data.ingest import ingest
    from cifarflow.data.synth import write_archive

    root = tmp_path_factory.mktemp("cluster-data")
    store = Store()
    archive = write_archive(str(root), train=3000, test=600, fmt="python", classes=10, seed=5, store=store)
    return ingest(archive, str(root / "work"), store=store).raw_url


def test_an_executor_killed_mid_job_changes_nothing(cluster: Cluster, raw: str, tmp_path: Path) -> None:
    # 6 input splits (5 train batches, 1 test) on 2 one-core executors: 3 waves per pass.
    calm = tmp_path / "calm"
    out, err = _finish(_preprocess(cluster, raw, calm, delay=0.0))
    assert "\tat " not in err, err  # a quiet happy path: no Java stack traces
    dataset_id = out.split("dataset: ")[1].split()[0]

    rough = tmp_path / "rough"
    proc = _preprocess(cluster, raw, rough, delay=2.0)
    # Kill when the write pass has produced its first shard (in the run's attempt folder until the commit):
    # other tasks are in flight on both executors.
    deadline = time.monotonic() + 180
    while not list(rough.glob(f"_attempt-{dataset_id}-*/*/part-*.parquet")):
        assert proc.poll() is None, proc.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline, "the write pass never started"
        time.sleep(0.2)
    victims = cluster.executors()
    assert len(victims) == 2, victims
    os.kill(victims[0], signal.SIGKILL)
    _, err = _finish(proc)
    assert "Lost executor" in err, err  # Spark noticed, and recovered

    for name in (MANIFEST, STATS):
        assert (rough / dataset_id / name).read_bytes() == (calm / dataset_id / name).read_bytes(), name
    listed = json.loads((rough / dataset_id / MANIFEST).read_text())["splits"]
    on_disk = {str(p.relative_to(rough / dataset_id)) for p in (rough / dataset_id).glob("*/*")}
    assert on_disk == {
        f["path"] for split in listed.values() for f in split["files"]
    }  # no strays, no orphans
    assert [p.name for p in rough.iterdir()] == [dataset_id]  # the attempt folder went with the commit
    assert victims[0] not in cluster.executors()  # it really died (the worker started a new one)


def test_preprocess_on_a_standalone_cluster_reads_an_image_folder(cluster: Cluster, tmp_path: Path) -> None:
    """Two one-core executors decode and resize a mixed-size folder with a broken file: the same dataset, byte
    for byte, as Spark local mode writes."""
    store = Store()
    src = str(tmp_path / "src")
    write_image_folder(src, classes=4, train=240, test=60, size=36, seed=4, vary=0.25, store=store)
    with_a_broken_file(store, src)
    raw = ingest(src, str(tmp_path / "bucket"), store=store).raw_url

    on_cluster, _ = _finish(_preprocess(cluster, raw, tmp_path / "cluster", 0.0, "--image-size", "32"))
    local = pre.preprocess(raw, str(tmp_path / "local"), seed=3, image_size=32, store=store)
    dataset_id = on_cluster.split("dataset: ")[1].split()[0]
    assert local.dataset_id == dataset_id
    for name in (MANIFEST, STATS):
        cluster_bytes = (tmp_path / "cluster" / dataset_id / name).read_bytes()
        assert cluster_bytes == (tmp_path / "local" / dataset_id / name).read_bytes(), name
    manifest, base = mf.load(store, str(tmp_path / "cluster" / dataset_id))
    mf.verify(store, manifest, base)
    assert (manifest.image.height, manifest.image.width) == (32, 32) and manifest.num_classes == 4
    stats = mf.load_stats(store, manifest, base)
    assert stats.skipped is not None and stats.skipped.undecodable == 1
    assert sum(s.rows for s in manifest.splits.values()) == 300
