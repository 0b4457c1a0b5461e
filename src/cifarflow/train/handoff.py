"""What a finished run hands on: the :class:`TrainResult` its caller gets and, from the chief, the serving copy
of the final weights exported as a SavedModel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cifarflow.storage import Store
from cifarflow.train.config import TrainConfig
from cifarflow.train.source import DataSource


@dataclass
class TrainResult:
    model_url: str
    is_chief: bool
    steps: int
    epochs: int
    resumed_from_step: int  # 0 for a fresh run
    history: list[dict[str, float]]
    fingerprint: str  # sha256 of all weights: equal on every worker of a job
    seconds: float
    images_per_second: float  # training steps only (no validation, checkpoints or export)
    saved_model_url: str | None = None
    replicas: int = 1


def export_serving(cfg: TrainConfig, source: DataSource, store: Store, weights: list[Any]) -> str:
    """A float32, non-distributed copy of the model (same weights) is what gets served."""
    from cifarflow.train import export, model

    serving = model.build(
        cfg,
        num_classes=source.num_classes,
        mean=source.stats.mean,
        std=source.stats.std,
        shape=source.shape,
    )
    serving.set_weights(weights)
    return export.export(serving, source.class_names, store, cfg.out)
