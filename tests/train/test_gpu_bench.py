"""benchmarks/gpu_bench.py runs end to end: on CPU (``--dry-run``), a few hundred images, both kinds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_bench.py"


def test_gpu_bench_dry_run_records_both_kinds(tmp_path: Path) -> None:
    cmd = [sys.executable, str(BENCH), "--dry-run", "--models", "resnet9", "--images", "256", "--batch", "64"]
    proc = subprocess.run(
        [*cmd, "--results", str(tmp_path), "--workdir", str(tmp_path)],
        capture_output=True,
        check=False,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (tmp_path / "gpu_bench.json").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["dry_run"] and record["precision"] == "bfloat16" and record["xla"] and record["epochs"] == 3
    assert [(r["model"], r["kind"]) for r in record["results"]] == [
        ("resnet9", "loop"),
        ("resnet9", "keras-fit"),
    ]
    for row in record["results"]:
        assert row["images"] == 2 * 4 * 64  # epochs 2 and 3, 4 steps of 64 each
        assert row["images_per_s"] > 0 and row["cpu_s"] > 0
        assert row["gpu_busy"] is None and row["devices"] == []  # no GPU in a dry run
