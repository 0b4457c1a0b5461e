"""One declaration per parameter: the CLI, the configs, the pipeline and the compiled IR agree on defaults and
descriptions, and every component input carries a description for the KFP UI."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import typer
import yaml

from cifarflow.backends import BackendName
from cifarflow.cli import app, main
from cifarflow.config import DeployConfig, PreprocessConfig, PromoteConfig, defaults
from cifarflow.pipeline import definition
from cifarflow.train.config import ModelName, Schedule, Switch, TrainConfig, settings_fields

COMPILED = Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / "cifar10_pipeline.yaml"
# pipeline parameter -> (config, field); partitions and image_size are 0 in the pipeline for the config's None.
PIPELINE = {
    "model": (TrainConfig, "model"),
    "epochs": (TrainConfig, "epochs"),
    "batch_size": (TrainConfig, "batch_size"),
    "seed": (TrainConfig, "seed"),
    "val_fraction": (PreprocessConfig, "val_fraction"),
    "strict": (PreprocessConfig, "strict"),
    "min_accuracy": (PromoteConfig, "min_accuracy"),
    "tolerance": (PromoteConfig, "tolerance"),
    "max_recall_drop": (PromoteConfig, "max_recall_drop"),
    "deploy_name": (DeployConfig, "name"),
    "canary_percent": (DeployConfig, "canary_percent"),
}


def _options(name: str) -> dict[str, Any]:
    """The command's click parameters by name (typer vendors its own click: duck-typed)."""
    command: Any = typer.main.get_command(app)
    return {p.name: p for p in command.commands[name].params if p.name}


def test_cli_train_options_are_the_configs_fields_with_its_defaults_and_help() -> None:
    options = _options("train")
    fields = TrainConfig.model_fields
    assert set(settings_fields()) <= set(options)  # every training setting is an option
    for name in settings_fields():
        assert options[name].default == fields[name].default, name
        assert options[name].help == fields[name].description, name


def test_choices_are_the_configs_literals(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = capsys.readouterr().out
    for name, literal in (
        ("model", ModelName),
        ("schedule", Schedule),
        ("xla", Switch),
        ("backend", BackendName),
    ):
        assert f"--{name} <{'|'.join(get_args(literal))}>" in shown


def test_cli_preprocess_options_are_the_configs_fields() -> None:
    options = _options("preprocess")
    for name, field in PreprocessConfig.model_fields.items():
        assert options[name].default == field.default, name
        assert options[name].help == field.description, name


@pytest.mark.parametrize(
    ("command", "config"), [("promote", PromoteConfig), ("deploy", DeployConfig), ("serve", None)]
)
def test_cli_promote_and_deploy_options_are_the_configs_fields(command: str, config: Any) -> None:
    options = _options(command)
    for name, field in (config or DeployConfig).model_fields.items():
        if config is None and name != "name":
            continue  # serve takes the model's name only
        assert options[name].default == field.default, name
        assert options[name].help == field.description, name


def test_pipeline_and_compiled_ir_defaults_are_the_configs() -> None:
    declared = {k: v.default for k, v in definition.pipeline_func().component_spec.inputs.items()}
    spec = next(iter(yaml.safe_load_all(COMPILED.read_text())))
    compiled = {k: v.get("defaultValue") for k, v in spec["root"]["inputDefinitions"]["parameters"].items()}
    for parameter, (config, field) in PIPELINE.items():
        expected = defaults(config)[field]
        assert declared[parameter] == compiled[parameter] == expected, parameter
    assert defaults(TrainConfig)["seed"] == defaults(PreprocessConfig)["seed"]  # one seed parameter for both
    for unset in ("partitions", "image_size"):
        assert declared[unset] == compiled[unset] == 0 and defaults(PreprocessConfig)[unset] is None, unset
    # Every field of the Spark job's config is a pipeline parameter (no option is lost on the cluster).
    assert set(PreprocessConfig.model_fields) <= set(declared)


def test_every_component_input_has_a_description_in_the_compiled_ir() -> None:
    spec = next(iter(yaml.safe_load_all(COMPILED.read_text())))
    missing: list[str] = []
    for name, component in spec["components"].items():
        if name.startswith("comp-condition-"):
            continue  # KFP's own sub-DAGs of dsl.If: they pass the pipeline's described inputs through
        inputs: dict[str, Any] = component.get("inputDefinitions", {})
        for kind in ("parameters", "artifacts"):
            for key, value in inputs.get(kind, {}).items():
                if not value.get("description"):
                    missing.append(f"{name}.{key}")
    assert missing == []
