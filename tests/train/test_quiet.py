"""TensorFlow's start-up notices stay off the terminal of a real `cifarflow train`/`evaluate` (unless -v)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.slow

# What TensorFlow 2.21 printed on every CPU run before: absl's C++ log lines (I0000/W0000/E0000 ...), among them
# the oneDNN notice, "Could not find cuda drivers" and "failed call to cuInit ... (303)".
NOISE = re.compile(r"^[IWE]\d{4} |absl::InitializeLog|oneDNN|cuda drivers|cuInit", re.MULTILINE)


def cifarflow(*args: str) -> subprocess.CompletedProcess[str]:
    # The user's environment: no TF_CPP_MIN_LOG_LEVEL set by the caller.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CPP_", "TF_CONFIG"))}
    return subprocess.run(
        [sys.executable, "-m", "cifarflow", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_train_and_evaluate_print_no_tensorflow_notices(tiny_dataset: str, tmp_path: Path) -> None:
    out = str(tmp_path / "model")
    train = ["train", "--data", tiny_dataset, "--out", out, "--epochs", "1", "--batch-size", "64"]
    done = cifarflow(*train, "--depth", "8", "--width", "4")  # trains, exports, then evaluates
    assert done.returncode == 0, done.stderr[-3000:]
    assert not NOISE.findall(done.stderr), done.stderr
    assert "exported SavedModel" in done.stderr and "test accuracy" in done.stderr  # our own log stays

    # --verbose is for debugging: there TensorFlow's own lines are shown.
    verbose = cifarflow("-v", "evaluate", "--data", tiny_dataset, "--model", out)
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert NOISE.search(verbose.stderr), verbose.stderr
