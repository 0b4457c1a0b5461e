"""The compiled pipeline: committed, drift-free, loadable by kfp, and wired the way the docs say."""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kfp import components

from cifarflow.pipeline import definition

from .conftest import Result

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "pipelines" / "compiled" / "cifar10_pipeline.yaml"
STEPS = ["ingest", "plan", "preprocess", "train", "evaluate", "promote", "deploy"]
TOP = [*STEPS[:-1], "condition-1"]  # deploy sits in two nested conditions


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return definition.compile_to(tmp_path_factory.mktemp("compile") / "cifar10_pipeline.yaml")


@pytest.fixture(scope="module")
def docs(fresh: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    spec, platform = yaml.safe_load_all(fresh.read_bytes())
    return spec, platform


def test_committed_yaml_matches_the_code(fresh: Path) -> None:
    assert COMMITTED.is_file(), (
        "pipelines/compiled/cifar10_pipeline.yaml is missing: run `cifarflow pipeline compile`"
    )
    if fresh.read_bytes() != COMMITTED.read_bytes():
        diff = difflib.unified_diff(
            COMMITTED.read_text().splitlines(),
            fresh.read_text().splitlines(),
            "committed",
            "compiled",
            lineterm="",
        )
        pytest.fail(
            "pipelines/compiled/cifar10_pipeline.yaml is stale: "
            "run `cifarflow pipeline compile` and commit it\n" + "\n".join(list(diff)[:40])
        )


def test_compile_is_deterministic_across_processes(
    cli: Callable[..., Result], fresh: Path, tmp_path: Path
) -> None:
    # Another interpreter with another hash seed: set/dict ordering must not leak into the YAML.
    out = tmp_path / "again.yaml"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run(
        [sys.executable, "-m", "cifarflow", "pipeline", "compile", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"compiled: {out}"
    assert out.read_bytes() == fresh.read_bytes()


def test_kfp_loads_the_compiled_pipeline_back(fresh: Path) -> None:
    loaded = components.load_component_from_file(str(fresh))
    original = definition.pipeline_func()
    assert loaded.name == "cifarflow-cifar10"
    assert {k: (v.type, v.default) for k, v in loaded.component_spec.inputs.items()} == {
        k: (v.type, v.default) for k, v in original.component_spec.inputs.items()
    }
    assert set(loaded.component_spec.outputs) == {
        "dataset",
        "model",
        "metrics",
        "confusion",
        "report",
        "decision",
        "promotion",
    }
    # The loaded pipeline is usable as a component of another pipeline: KFP accepted the whole IR.
    assert loaded.component_spec.implementation.graph is not None


def test_dag_order_and_caching(docs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    spec, _ = docs
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(TOP)
    assert tasks["plan"]["dependentTasks"] == ["ingest"]
    assert sorted(tasks["preprocess"]["dependentTasks"]) == ["ingest", "plan"]
    assert tasks["train"]["dependentTasks"] == ["preprocess"]
    assert sorted(tasks["evaluate"]["dependentTasks"]) == ["preprocess", "train"]
    assert sorted(tasks["promote"]["dependentTasks"]) == ["evaluate", "train"]
    # Only preprocess is cached, and its inputs are parameters only: the planned dataset id, not an artifact.
    caching = {
        name: t["cachingOptions"].get("enableCache", False) for name, t in tasks.items() if name in STEPS
    }
    assert caching == {
        "ingest": False,
        "plan": False,
        "preprocess": True,
        "train": False,
        "evaluate": False,
        "promote": False,
    }
    assert "artifacts" not in tasks["preprocess"]["inputs"]
    assert tasks["preprocess"]["inputs"]["parameters"]["dataset_id"] == {
        "taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "plan"}
    }


def test_deploy_runs_only_when_promote_says_yes_and_deploy_is_on(
    docs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    spec, _ = docs
    promoted = spec["root"]["dag"]["tasks"]["condition-1"]
    assert promoted["taskInfo"]["name"] == "promoted"
    assert promoted["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--promote-Output'] == true"
    )
    assert promoted["inputs"]["parameters"]["pipelinechannel--promote-Output"] == {
        "taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "promote"}
    }
    (wanted,) = spec["components"]["comp-condition-1"]["dag"]["tasks"].values()
    assert wanted["taskInfo"]["name"] == "deploy-wanted"
    assert (
        wanted["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--deploy'] == true"
    )
    inner = spec["components"][wanted["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["deploy"]
    assert inner["deploy"]["cachingOptions"] == {}
    assert inner["deploy"]["inputs"]["artifacts"]["model"] == {
        "componentInputArtifact": "pipelinechannel--train-model"
    }
    assert spec["components"]["comp-promote"]["outputDefinitions"]["artifacts"] == {
        "decision": {"artifactType": {"schemaTitle": "system.Metrics", "schemaVersion": "0.0.1"}},
        "summary": {"artifactType": {"schemaTitle": "system.Markdown", "schemaVersion": "0.0.1"}},
    }


def test_every_task_runs_the_pipeline_image_without_installing_anything(
    docs: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    spec, _ = docs
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == len(STEPS)
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == "{{$.inputs.parameters['pipelinechannel--pipeline_image']}}", name
        script = " ".join(container["command"])
        assert "pip install" not in script, f"{name} would pip-install at start (air-gapped clusters fail)"


def test_kubernetes_settings_on_every_task(docs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, platform = docs
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    deadlines = {name: int(cfg["activeDeadlineSeconds"]) for name, cfg in executors.items()}
    assert deadlines == {
        "exec-ingest": 7200,
        "exec-plan": 600,
        "exec-preprocess": 21600,
        "exec-train": 172800,
        "exec-evaluate": 7200,
        "exec-promote": 7200,
        "exec-deploy": 3600,
    }
    for name, cfg in executors.items():
        (secret,) = cfg["secretAsEnv"]
        # Inside the conditions the pipeline's parameter reaches the task as a channel of the same name.
        parameter = "pipelinechannel--bucket_secret" if name == "exec-deploy" else "bucket_secret"
        assert secret["secretNameParameter"] == {"componentInputParameter": parameter}, name
        assert secret["optional"] is True
        assert {m["envVar"] for m in secret["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_compile_cli_refuses_a_non_yaml_name(cli: Callable[..., Result], tmp_path: Path) -> None:
    res = cli("pipeline", "compile", "--out", str(tmp_path / "p.json"))
    assert res.code == 2
    assert res.error_lines == [
        f"error: {tmp_path / 'p.json'} does not end in .yaml "
        "(fix: KFP reads pipeline packages as YAML: name it *.yaml)"
    ]
    assert not (tmp_path / "p.json").exists()


def test_a_missing_pipelines_folder_names_the_variable(
    cli: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(definition.ENV_DIR, str(tmp_path))
    res = cli("pipeline", "compile", "--out", str(tmp_path / "p.yaml"))
    assert res.code == 2
    assert res.error_lines == [
        f"error: no pipeline definition (cifar10_pipeline.py) in {tmp_path} (fix: run from a cifarflow "
        f"checkout, or set {definition.ENV_DIR} to the folder holding pipelines/cifar10_pipeline.py)"
    ]
