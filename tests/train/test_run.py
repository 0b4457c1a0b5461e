"""`cifarflow run`: the whole pipeline in one command, through the real ingest and Spark preprocess."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from cifarflow.data.synth import write_archive
from cifarflow.storage import Store

from .helpers import start
from .test_quiet import NOISE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java 17+ (make check-java)"),
]


def test_run_ingests_preprocesses_trains_evaluates_and_prints_the_report(tmp_path: Path) -> None:
    archive = write_archive(
        str(tmp_path / "src"), train=1000, test=200, fmt="python", classes=10, seed=0, store=Store()
    )
    work = tmp_path / "work"
    args = ["run", "--source", archive, "--workdir", str(work), "--epochs", "1", "--batch-size", "64"]
    proc = start(args, tmp_path, "run")
    assert proc.wait(timeout=600) == 0, proc.err()[-3000:]
    facts = dict(line.split(": ", 1) for line in proc.out().splitlines() if ": " in line)
    assert set(facts) >= {"raw", "dataset", "model", "test_accuracy", "report"}
    report = Path(facts["report"].removeprefix("file://"))
    assert report.is_file() and report.parent == Path(facts["model"].removeprefix("file://"))
    metrics = json.loads((report.parent / "metrics.json").read_text())
    assert metrics["dataset"]["id"] in facts["dataset"] and metrics["test"]["images"] == 200
    assert metrics["training"]["job"]["steps_per_epoch"] == 900 // 64  # 10% of train held out for validation
    assert float(facts["test_accuracy"]) == pytest.approx(metrics["test"]["accuracy"], abs=1e-4)
    # The model folder is named by the run's settings; TensorFlow's start-up notices stay off the terminal.
    assert re.fullmatch(r"resnet20-[0-9a-f]{10}", report.parent.name), facts["model"]
    assert not NOISE.findall(proc.err()), proc.err()
