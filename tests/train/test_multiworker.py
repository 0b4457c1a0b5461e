"""Multi-worker training exactly as a TFJob runs it: one process per replica, TF_CONFIG, ring all-reduce.

Two worker processes on 127.0.0.1 train one model together. Killing one mid-run (SIGKILL: an OOM-kill or a
lost node) makes the other fail fast with one clear line; restarting the job (what the training operator does)
resumes from the chief's last checkpoint, not from step 0, and ends with identical weights on both workers.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from .helpers import SMALL, fingerprint, free_port, latest_step, start_workers, wait_for

pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 512 // 32


def train_args(data: str, out: Path, epochs: int, *extra: str) -> list[str]:
    return [
        "train",
        "--data",
        data,
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        "--batch-size",
        "32",
        *SMALL,
        *extra,
    ]


def test_two_workers_train_one_model_with_identical_weights(tiny_dataset: str, tmp_path: Path) -> None:
    out = tmp_path / "model"
    workers = start_workers(
        train_args(tiny_dataset, out, 2, "--no-evaluate"), [free_port(), free_port()], tmp_path, "a"
    )
    for proc in workers:
        assert proc.wait(timeout=300) == 0, proc.err()[-3000:]
    chief, other = workers
    assert "worker:0 of 2 workers (chief), 2 replicas in sync" in chief.err()
    assert "worker:1 of 2 workers, 2 replicas in sync" in other.err()
    # Bit-identical weights (every variable, batch-norm statistics included) on both replicas.
    assert fingerprint(chief) == fingerprint(other)
    # Only the chief writes and reports; each worker read its own half of the files per step.
    assert f"saved_model: {out}/saved_model" in chief.out() and other.out() == ""
    assert latest_step(out) == 2 * STEPS_PER_EPOCH
    assert json.loads((out / "training.json").read_text())["job"]["replicas"] == 2


def test_a_killed_worker_fails_the_job_and_the_restarted_job_resumes(
    tiny_dataset: str, tmp_path: Path
) -> None:
    out = tmp_path / "model"
    args = train_args(tiny_dataset, out, 8, "--checkpoint-every", "8", "--no-evaluate")
    ports = [free_port(), free_port()]
    chief, worker = start_workers(args, ports, tmp_path, "first")
    wait_for(lambda: latest_step(out) >= STEPS_PER_EPOCH, 300, "a checkpoint after epoch 1", [chief, worker])
    worker.kill(signal.SIGKILL)
    # The survivor's next all-reduce fails (or MultiWorkerMirroredStrategy's peer check fires): it must exit
    # on its own, with one line saying what happened, and with exit code 138: the one the training operator's
    # restartPolicy ExitCode reserves for user-defined retryable errors, so the TFJob restarts it.
    assert chief.wait(timeout=120) == 138
    line = chief.last_line()
    assert line.startswith("error: a worker of the job is gone, collectives were aborted"), line
    assert f"training resumes from {out}/checkpoints" in line
    saved = latest_step(out)
    assert STEPS_PER_EPOCH <= saved < 8 * STEPS_PER_EPOCH

    restarted = start_workers(args, ports, tmp_path, "second")
    for proc in restarted:
        assert proc.wait(timeout=300) == 0, proc.err()[-3000:]
        assert (
            f"resuming at step {saved} of {8 * STEPS_PER_EPOCH}" in proc.err()
        )  # the step counter continued
    assert fingerprint(restarted[0]) == fingerprint(restarted[1])
    assert latest_step(out) == 8 * STEPS_PER_EPOCH
    record = json.loads((out / "training.json").read_text())
    assert record["job"]["resumed_from_step"] == saved
    assert [h["epoch"] for h in record["history"]] == list(range(1, 9))  # epochs before the kill are kept
