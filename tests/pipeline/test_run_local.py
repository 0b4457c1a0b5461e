"""``cifarflow pipeline run-local``: the compiled pipeline end to end under kfp.local, on tiny synthetic data.

Real engines throughout: every component runs as a subprocess, preprocess runs Spark in local mode, train and
evaluate run TensorFlow on the CPU. The artifacts are checked where KFP records them (each task's
executor_output.json: what the KFP UI would show) and against the files they point at.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cifarflow.data import manifest as mf
from cifarflow.data.synth import write_archive
from cifarflow.storage import Store

from .conftest import Result

STEPS = ("ingest", "plan", "preprocess", "train", "evaluate", "promote", "deploy")
TRAIN, TEST = 400, 200


def _outputs(res: Result) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in res.out.splitlines())


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _artifacts(run_dir: Path, task: str) -> dict[str, dict[str, Any]]:
    """``{output name: {"uri": ..., "metadata": ...}}`` as the task reported them to KFP."""
    record = json.loads((run_dir / task / "executor_output.json").read_text())
    return {name: arts["artifacts"][0] for name, arts in record.get("artifacts", {}).items()}


def _path(uri: str) -> Path:
    assert "://" not in uri or uri.startswith("file://"), uri
    return Path(uri.removeprefix("file://"))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = tmp_path_factory.mktemp("synth")
    return write_archive(str(out), train=TRAIN, test=TEST, fmt="python", classes=10, seed=3, store=Store())


@pytest.mark.slow
def test_run_local_end_to_end_promotes_then_keeps_the_champion_and_a_one_line_failure(
    cli: Callable[..., Result], archive: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    common = ("--workdir", str(work), "--param", f"source={archive}")
    res = cli("pipeline", "run-local", *common, "--param", "epochs=1", "--param", "batch_size=32")
    assert res.code == 0, res.err
    out = _outputs(res)

    # Every component ran, in order, and succeeded.
    log = _plain(Path(out["log"]).read_text())
    finished = re.findall(r"Task '(\w+)' finished with status (\w+)", log)
    assert finished == [(step, "SUCCESS") for step in STEPS]
    run_dir = Path(out["kfp outputs"])
    assert run_dir.parent == work / "kfp-local"  # everything stays under --workdir

    # Dataset: the artifact is the committed manifest (a byte copy); the metadata has the id, counts, origin.
    dataset = _artifacts(run_dir, "preprocess")["dataset"]
    meta = dataset["metadata"]
    assert meta["dataset_url"] == out["dataset"]
    manifest, base = mf.load(Store(), meta["dataset_url"])
    assert Path(dataset["uri"]).read_bytes() == _path(meta["manifest_url"]).read_bytes()
    assert meta["dataset_id"] == manifest.dataset_id == Path(base).name
    assert meta["train_images"] + meta["val_images"] == TRAIN
    assert meta["test_images"] == TEST == manifest.splits["test"].rows
    assert meta["class_names"] == manifest.class_names

    # Model: the artifact is a SavedModel (a copy of the one in the workdir, under the dataset's id).
    model = _artifacts(run_dir, "train")["model"]
    assert (Path(model["uri"]) / "saved_model.pb").is_file()
    assert model["metadata"]["saved_model_url"] == out["model"]
    assert (_path(out["model"]) / "saved_model.pb").read_bytes() == (
        Path(model["uri"]) / "saved_model.pb"
    ).read_bytes()
    assert f"/models/{manifest.dataset_id}/resnet20-" in out["model"]  # named by its settings

    # Metrics, confusion matrix (with class names) and the HTML report, consistent with one another.
    evaluation = _artifacts(run_dir, "evaluate")
    scores = evaluation["metrics"]["metadata"]
    matrix = evaluation["confusion"]["metadata"]["confusionMatrix"]
    names = [spec["displayName"] for spec in matrix["annotationSpecs"]]
    rows = [[int(v) for v in row["row"]] for row in matrix["rows"]]
    assert names == manifest.class_names
    assert sum(map(sum, rows)) == TEST == scores["test_images"]
    assert 0.0 <= scores["accuracy"] <= 1.0
    assert scores["accuracy"] == pytest.approx(sum(rows[i][i] for i in range(len(rows))) / TEST)
    for key in ("train_loss", "val_loss"):
        assert math.isfinite(scores[key]) and scores[key] > 0
    assert float(out["accuracy"]) == pytest.approx(scores["accuracy"], abs=1e-3)
    report = Path(evaluation["report"]["uri"]).read_bytes()
    assert report == _path(out["report"]).read_bytes()
    assert _path(out["report"]).parent == _path(out["model"]).parent  # where `cifarflow run` puts it
    assert report.lstrip().lower().startswith((b"<!doctype html", b"<html"))
    saved_metrics = json.loads(_path(scores["metrics_url"]).read_text())
    assert saved_metrics["test"]["confusion_matrix"] == rows

    # The gate: the first model on this dataset is the champion; the decision with its scores and reason is in
    # KFP's record (Metrics + Markdown) and on stdout; deploy ran with the local backend (a servability check).
    gate = _artifacts(run_dir, "promote")
    decision = gate["decision"]["metadata"]
    assert decision["promoted"] == 1.0 and out["promoted"] == "true"
    assert decision["challenger_accuracy"] == pytest.approx(scores["accuracy"])
    assert "champion_accuracy" not in decision and decision["reason"] == out["promotion"]
    assert out["promotion"].startswith("no champion yet")
    assert decision["tolerance"] == 0.0 and decision["max_recall_drop"] == pytest.approx(0.1)
    summary = Path(gate["summary"]["uri"]).read_text()
    assert summary.startswith("**promoted**: no champion yet") and "Recall per class" in summary
    champion = json.loads((work / "models" / "champion.json").read_text())
    assert champion["champion"]["model"] == model["metadata"]["model_url"]
    served = json.loads((run_dir / "deploy" / "executor_output.json").read_text())
    assert served["parameterValues"]["Output"].startswith("cifarflow serve --model ")

    # Second run, same data and settings: preprocess is a cache hit (keyed on the dataset id); the same model
    # is already the champion, so promote says no and deploy is skipped.
    res = cli("pipeline", "run-local", *common, "--param", "epochs=1", "--param", "batch_size=32")
    assert res.code == 0, res.err
    again = _outputs(res)
    assert re.search(r"Task '?preprocess'? cache hit", _plain(res.err))
    assert again["promoted"] == "false" and again["promotion"] == "it is already the champion"
    log = _plain(Path(again["log"]).read_text())
    ran = [step for step, _ in re.findall(r"Task '(\w+)' finished with status (\w+)", log)]
    assert ran == ["ingest", "plan", "train", "evaluate", "promote"]  # preprocess: cached; deploy: skipped
    assert "Skipping conditional task condition-1 (condition evaluated to False)" in log  # "promoted"

    # A bad parameter fails in its step with one error line.
    res = cli("pipeline", "run-local", *common, "--param", "epochs=0")
    assert res.code == 2
    assert res.error_lines == [
        "error: step train failed: pipeline parameter epochs=0 is invalid: "
        "input should be greater than or equal to 1 (fix: pass a value within the bound above)"
    ]


def test_a_bad_source_fails_in_ingest_with_one_error_line(cli: Callable[..., Result], tmp_path: Path) -> None:
    missing = tmp_path / "nope.tar.gz"
    res = cli(
        "pipeline", "run-local", "--workdir", str(tmp_path / "w"), "--pipeline-root", str(tmp_path / "kfp"),
        "--param", f"source={missing}",
    )  # fmt: skip
    assert res.code == 2
    assert len(res.error_lines) == 1
    assert res.error_lines[0].startswith("error: step ingest failed: ")
    assert str(missing) in res.error_lines[0]
    assert res.out == ""
