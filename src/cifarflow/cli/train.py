"""Training commands: ``train`` (also what each TFJob replica runs) and ``evaluate``."""

from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import typer
from rich.progress import Progress, TaskID

from cifarflow.backends import TrainRequest, get_backend
from cifarflow.cli.common import (
    BackendChoice,
    S3Endpoint,
    app,
    field_option,
    make_store,
    out,
    print_result,
    progress,
)
from cifarflow.config import choices, defaults
from cifarflow.train.config import HalfType, ModelName, Schedule, Switch, TrainConfig, parse_config

log = logging.getLogger(__name__)

# The choices and defaults of the options are TrainConfig's (one declaration: cifarflow.train.config); typer
# needs an Enum for choices, made from the Literal. mypy sees the strings those enums hold.
if TYPE_CHECKING:
    ModelChoice: TypeAlias = str
    ScheduleChoice: TypeAlias = str
    SwitchChoice: TypeAlias = str
    HalfChoice: TypeAlias = str
else:
    ModelChoice = choices("ModelChoice", ModelName)
    ScheduleChoice = choices("ScheduleChoice", Schedule)
    SwitchChoice = choices("SwitchChoice", Switch)
    HalfChoice = choices("HalfChoice", HalfType)
DEFAULTS: dict[str, Any] = defaults(TrainConfig)


def _option(name: str, **kw: Any) -> Any:
    return field_option(TrainConfig, name, **kw)


Data = Annotated[str, _option("data")]
Epochs = Annotated[int, _option("epochs")]
BatchSize = Annotated[int, _option("batch_size")]
Model = Annotated[ModelChoice, _option("model")]


class ProgressHooks:
    """Rich progress bars for the training loop: epochs overall, steps within the current epoch."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.epochs: TaskID | None = None
        self.steps: TaskID | None = None
        self.steps_per_epoch = 1

    def on_start(self, *, epochs: int, steps_per_epoch: int, step: int) -> None:
        self.steps_per_epoch = steps_per_epoch
        done = step // steps_per_epoch
        self.epochs = self.bar.add_task("epochs", total=epochs, completed=done)
        self.steps = self.bar.add_task(
            f"epoch {done + 1}", total=steps_per_epoch, completed=step % steps_per_epoch
        )

    def on_step(self, step: int) -> None:
        if self.steps is not None:
            self.bar.update(self.steps, completed=(step - 1) % self.steps_per_epoch + 1)

    def on_epoch(self, epoch: int, logs: dict[str, float]) -> None:
        if self.epochs is not None and self.steps is not None:
            self.bar.update(self.epochs, completed=epoch)
            self.bar.reset(self.steps, description=f"epoch {epoch + 1}")


def print_scores(scored: Any, *, metrics: bool = False) -> None:
    """The facts scripts read from an evaluation (``key: value`` lines on stdout)."""
    out(f"test_accuracy: {scored.accuracy:.4f}")
    if metrics:
        out(f"metrics: {scored.metrics_url}")
    out(f"report: {scored.report_url}")


def quiet_tensorflow() -> None:
    """Import TensorFlow without its start-up notices (all of them with --verbose): see train/tfenv.py."""
    from cifarflow.train import tfenv

    tfenv.load()


def train_with(backend: str, cfg: TrainConfig, run_name: str) -> Any:
    """Train ``cfg`` on a backend, with progress bars on a terminal (plain log lines in pods and CI)."""
    chosen = get_backend(backend, store=make_store(cfg.s3_endpoint))
    with progress() as bar:
        return chosen.train(TrainRequest(cfg, run_name=run_name, hooks=ProgressHooks(bar)))


@app.command()
def train(
    *,
    data: Data,
    out_url: Annotated[str, _option("out")],
    model: Model = DEFAULTS["model"],
    depth: Annotated[int, _option("depth")] = DEFAULTS["depth"],
    width: Annotated[int | None, _option("width")] = DEFAULTS["width"],
    epochs: Epochs = DEFAULTS["epochs"],
    batch_size: BatchSize = DEFAULTS["batch_size"],
    lr: Annotated[float | None, _option("lr")] = DEFAULTS["lr"],
    schedule: Annotated[ScheduleChoice, _option("schedule")] = DEFAULTS["schedule"],
    warmup: Annotated[float, _option("warmup")] = DEFAULTS["warmup"],
    momentum: Annotated[float, _option("momentum")] = DEFAULTS["momentum"],
    weight_decay: Annotated[float, _option("weight_decay")] = DEFAULTS["weight_decay"],
    label_smoothing: Annotated[float, _option("label_smoothing")] = DEFAULTS["label_smoothing"],
    augment: Annotated[bool, _option("augment")] = DEFAULTS["augment"],
    mixed_precision: Annotated[SwitchChoice, _option("mixed_precision")] = DEFAULTS["mixed_precision"],
    mixed_type: Annotated[HalfChoice, _option("mixed_type")] = DEFAULTS["mixed_type"],
    xla: Annotated[SwitchChoice, _option("xla")] = DEFAULTS["xla"],
    checkpoint_every: Annotated[int, _option("checkpoint_every")] = DEFAULTS["checkpoint_every"],
    keep_checkpoints: Annotated[int, _option("keep_checkpoints")] = DEFAULTS["keep_checkpoints"],
    shuffle_buffer: Annotated[int, _option("shuffle_buffer")] = DEFAULTS["shuffle_buffer"],
    seed: Annotated[int, _option("seed")] = DEFAULTS["seed"],
    evaluate: Annotated[bool, _option("evaluate")] = DEFAULTS["evaluate"],
    backend: Annotated[
        BackendChoice,
        typer.Option(
            "--backend", help="local: train here; k8s: a TFJob or TrainJob (CIFARFLOW_K8S_TRAINER)."
        ),
    ] = "local",
    s3_endpoint: S3Endpoint = None,
) -> None:
    """Train a ResNet on a committed dataset (one process, or one replica of a TFJob via TF_CONFIG)."""
    from cifarflow.layout import dataset_id_of

    values = {name: value for name, value in locals().items() if name in DEFAULTS}
    values.update(data=data, out=out_url)
    # Checked here, so a bad option is one line before a job is submitted.
    cfg = parse_config({k: v.value if isinstance(v, Enum) else v for k, v in values.items()})
    # A job trains one run: it is named by the run (cifarflow.train.runs), as the pipeline's train step names it.
    print_result(train_with(str(backend), cfg, cfg.run_name(dataset_id_of(data))))


@app.command()
def evaluate(
    *,
    data: Data,
    model: Annotated[str, typer.Option("--model", help="Model URL written by `cifarflow train`.")],
    out_url: Annotated[
        str | None, typer.Option("--out", help="Where metrics.json and report.html go (default: --model).")
    ] = None,
    s3_endpoint: S3Endpoint = None,
) -> None:
    """Score a trained model's SavedModel on the test split; write metrics.json and report.html."""
    from cifarflow.train.evaluate import evaluate as evaluate_model

    print_scores(evaluate_model(data, model, out_url or model, store=make_store(s3_endpoint)), metrics=True)
