"""Training commands: ``train`` (also what each TFJob replica runs) and ``evaluate``."""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.progress import Progress, TaskID

from cifarflow.cli.common import S3Endpoint, app, make_store, out, progress
from cifarflow.cli.data import Backend
from cifarflow.train.config import TrainConfig, parse_config

log = logging.getLogger(__name__)


class ModelChoice(StrEnum):
    resnet20 = "resnet20"
    resnet9 = "resnet9"


class Schedule(StrEnum):
    onecycle = "onecycle"
    cosine = "cosine"


class Switch(StrEnum):
    auto = "auto"
    on = "on"
    off = "off"


# TrainConfig's defaults, so the CLI and the library never disagree.
DEFAULTS: dict[str, Any] = {name: field.default for name, field in TrainConfig.model_fields.items()}


Data = Annotated[
    str, typer.Option("--data", help="Dataset folder (DATASETS/<dataset-id>) or its _manifest.json.")
]
Epochs = Annotated[int, typer.Option("--epochs", min=1)]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Global batch, split over all replicas.")]
Model = Annotated[ModelChoice, typer.Option("--model")]


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


def run_training(cfg: TrainConfig) -> Any:
    """Train with progress bars on a terminal (plain log lines in pods and CI)."""
    from cifarflow.train import trainer

    with progress() as bar:
        return trainer.train(cfg, hooks=ProgressHooks(bar))


@app.command()
def train(
    *,
    data: Data,
    out_url: Annotated[
        str, typer.Option("--out", help="Model URL: saved_model/, checkpoints/, tensorboard/, report.html...")
    ],
    epochs: Epochs = DEFAULTS["epochs"],
    batch_size: BatchSize = DEFAULTS["batch_size"],
    model: Model = ModelChoice.resnet20,
    depth: Annotated[int, typer.Option("--depth", help="resnet20 family: 6n+2 layers (20, 32, 56...).")] = 20,
    width: Annotated[
        int | None,
        typer.Option("--width", min=1, help="First-stage channels (default: 16 resnet20, 64 resnet9)."),
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Peak learning rate (default: 0.1 x batch/128).")
    ] = None,
    schedule: Annotated[Schedule, typer.Option("--schedule")] = Schedule.onecycle,
    label_smoothing: Annotated[float, typer.Option("--label-smoothing", min=0.0, max=0.99)] = DEFAULTS[
        "label_smoothing"
    ],
    weight_decay: Annotated[float, typer.Option("--weight-decay", min=0.0, help="Decoupled.")] = DEFAULTS[
        "weight_decay"
    ],
    checkpoint_every: Annotated[
        int,
        typer.Option("--checkpoint-every", min=0, help="Steps between checkpoints (0: at epoch ends only)."),
    ] = DEFAULTS["checkpoint_every"],
    mixed_precision: Annotated[
        Switch, typer.Option("--mixed-precision", help="auto: on with a GPU.")
    ] = Switch.auto,
    xla: Annotated[Switch, typer.Option("--xla", help="auto: on with a GPU.")] = Switch.auto,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    evaluate: Annotated[
        bool, typer.Option("--evaluate/--no-evaluate", help="Score the test split after.")
    ] = True,
    backend: Annotated[
        Backend, typer.Option("--backend", help="local: train here; k8s: submit a TFJob and watch it.")
    ] = Backend.local,
    s3_endpoint: S3Endpoint = None,
) -> None:
    """Train a ResNet on a committed dataset (one process, or one replica of a TFJob via TF_CONFIG)."""
    cfg = parse_config(
        {
            "data": data,
            "out": out_url,
            "epochs": epochs,
            "batch_size": batch_size,
            "model": model.value,
            "depth": depth,
            "width": width,
            "lr": lr,
            "schedule": schedule.value,
            "label_smoothing": label_smoothing,
            "weight_decay": weight_decay,
            "checkpoint_every": checkpoint_every,
            "mixed_precision": mixed_precision.value,
            "xla": xla.value,
            "seed": seed,
            "evaluate": evaluate,
            "s3_endpoint": s3_endpoint,
        }
    )  # checked here, so a bad option is one line before a TFJob is submitted
    if backend is Backend.k8s:
        from cifarflow.k8s import cli_support

        extra = cli_support.forwarded_args(train, locals())
        cli_support.train_on_k8s(data=data, out=out_url, extra_args=extra)
        return
    result = run_training(cfg)
    if not result.is_chief:
        return  # the chief reports; the other replicas' logs stay quiet
    out(f"model: {result.model_url}")
    out(f"saved_model: {result.saved_model_url}")
    if cfg.evaluate:
        from cifarflow.train.evaluate import evaluate as evaluate_model

        print_scores(evaluate_model(data, out_url, out_url, store=make_store(s3_endpoint)))


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
