"""Image folders end to end with real engines, in a fresh process: ``cifarflow run`` on a synthetic folder that
lives in an S3 bucket (the moto server: ingest from a bucket prefix, Spark tasks reading the bucket, TensorFlow
training and evaluation writing to it). The standalone-cluster run of an image folder is in test_spark_cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from cifarflow.data import manifest as mf
from cifarflow.data.synth_folders import write_image_folder
from cifarflow.storage import Store, join

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java 17+ (make check-java)"),
]


def cifarflow(env: dict[str, str], *args: str) -> dict[str, str]:
    """``cifarflow ARGS`` in a fresh process with ``env`` over ours; its ``key: value`` lines."""
    proc = subprocess.run(
        [sys.executable, "-m", "cifarflow", *args],
        env={**os.environ, "CIFARFLOW_SPARK_UI": "0", "TF_CPP_MIN_LOG_LEVEL": "2", **env},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "\tat " not in proc.stderr, proc.stderr[-3000:]
    return dict(line.split(": ", 1) for line in proc.stdout.splitlines() if ": " in line)


def with_a_broken_file(store: Store, root: str) -> str:
    """Add a file named like a JPEG that is not one to the first train class; returns its class folder."""
    first = store.list(join(root, "train"))[0]
    store.write_bytes(join(first, "broken.jpg"), b"not a jpeg at all")
    return first.rsplit("/", 1)[-1]


def test_run_on_an_image_folder_in_an_s3_bucket(s3_server: Any, s3_bucket: str) -> None:
    """Mixed sizes and formats under s3://bucket/src, one broken file: `cifarflow run --image-size 24` lands
    them, Spark reads and resizes them from the bucket, the broken file is skipped and recorded, and the model,
    its metrics and report land in the bucket."""
    store = s3_server.store()
    src = f"{s3_bucket}/src"
    write_image_folder(src, classes=3, train=150, test=30, size=40, seed=2, vary=0.2, store=store)
    broken_class = with_a_broken_file(store, src)
    work = f"{s3_bucket}/work"

    args = ["run", "--source", src, "--workdir", work, "--image-size", "24", "--epochs", "1"]
    facts = cifarflow(s3_server.env, *args, "--batch-size", "16")

    assert facts["dataset"].startswith(f"{work}/datasets/") and facts["model"].startswith(f"{work}/models/")
    manifest, base = mf.load(store, facts["dataset"])
    mf.verify(store, manifest, base)
    assert (manifest.image.height, manifest.image.width, manifest.image.channels) == (24, 24, 3)
    assert manifest.num_classes == 3
    stats = mf.load_stats(store, manifest, base)
    assert stats.skipped is not None and stats.skipped.undecodable == 1
    assert stats.skipped.paths[0].endswith(f"{broken_class}/broken.jpg")
    assert sum(s.rows for s in manifest.splits.values()) == 180
    metrics = json.loads(store.read_text(join(facts["model"], "metrics.json")))
    assert metrics["test"]["images"] == manifest.splits["test"].rows == 30
    assert np.isfinite(float(facts["test_accuracy"]))
    assert store.exists(join(facts["model"], "saved_model", "saved_model.pb"))
    assert facts["report"].startswith(facts["model"]) and store.exists(facts["report"])
