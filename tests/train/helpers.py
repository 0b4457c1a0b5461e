"""Run ``cifarflow`` as real processes, alone or as TFJob-like workers with TF_CONFIG on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# A model small enough that a CPU step takes tens of milliseconds.
SMALL = ["--depth", "8", "--width", "8"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tf_config(ports: list[int], index: int) -> str:
    """TF_CONFIG exactly as a TFJob with Worker replicas only injects it."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    out.update({"TF_CPP_MIN_LOG_LEVEL": "2", "CIFARFLOW_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
    out.update(extra)
    return out


@dataclass
class Proc:
    """A running ``cifarflow`` process whose stdout/stderr go to files (readable while it runs)."""

    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"cifarflow did not finish in {timeout:.0f} s; stderr:\n{self.err()[-3000:]}"
            ) from None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            if sig == signal.SIGKILL:
                self.popen.wait()

    def out(self) -> str:
        return self.stdout.read_text()

    def err(self) -> str:
        return self.stderr.read_text()

    def last_line(self) -> str:
        lines = [line for line in self.err().splitlines() if line.strip()]
        return lines[-1] if lines else ""


def start(args: list[str], logs: Path, name: str, **extra_env: str) -> Proc:
    logs.mkdir(parents=True, exist_ok=True)
    stdout, stderr = logs / f"{name}.out", logs / f"{name}.err"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        popen = subprocess.Popen(
            [sys.executable, "-m", "cifarflow", *args], stdout=out, stderr=err, env=env(**extra_env)
        )
    return Proc(popen, stdout, stderr)


def start_workers(args: list[str], ports: list[int], logs: Path, tag: str) -> list[Proc]:
    return [start(args, logs, f"{tag}-worker{i}", TF_CONFIG=tf_config(ports, i)) for i in range(len(ports))]


def wait_for(predicate: object, timeout: float, what: str, procs: list[Proc] = ()) -> None:  # type: ignore[assignment]
    """Poll ``predicate`` until true; fail early if a process died meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        for proc in procs:
            if proc.popen.poll() is not None:
                raise AssertionError(
                    f"a process exited ({proc.popen.returncode}) before {what}:\n{proc.err()[-3000:]}"
                )
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def latest_step(model_dir: Path) -> int:
    marker = model_dir / "checkpoints" / "latest.json"
    try:
        return int(json.loads(marker.read_text())["step"])
    except (OSError, ValueError, KeyError):
        return -1


def fingerprint(proc: Proc) -> str:
    for line in proc.err().splitlines():
        if "weights sha256 " in line:
            return line.split("weights sha256 ", 1)[1].split()[0]
    raise AssertionError(f"no weights fingerprint in the log:\n{proc.err()[-3000:]}")
