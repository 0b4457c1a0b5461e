"""What a training run is: one validated, serialisable configuration shared by the CLI, the TFJob and KFP."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cifarflow.errors import InputError

ModelName = Literal["resnet20", "resnet9"]
Switch = Literal["auto", "on", "off"]

# Per-model defaults: (base width, peak learning rate at a global batch of 128).
MODEL_DEFAULTS: dict[str, tuple[int, float]] = {"resnet20": (16, 0.1), "resnet9": (64, 0.1)}
REFERENCE_BATCH = 128

# Fields that say where or how a run executes, not what it computes: they do not name the run. (Mixed
# precision and XLA are hardware choices: "auto" follows the GPU, and both kinds of run share checkpoints.)
NOT_DEFINING = frozenset(
    {
        "data",
        "out",
        "s3_endpoint",
        "evaluate",
        "checkpoint_every",
        "keep_checkpoints",
        "mixed_precision",
        "xla",
    }
)


# What to do about a refused value, by field (the bounds themselves are in TrainConfig).
FIXES = {
    "depth": "use 6n+2 layers: 8, 14, 20, 32, 44, 56 or 110",
    "lr": "give a finite learning rate above 0 (e.g. 0.05), or leave it out for 0.1 x batch/128",
    "warmup": "give a share of the steps in [0, 1), e.g. 0.15",
    "momentum": "give a value in [0, 1), e.g. 0.9",
    "label_smoothing": "give a value in [0, 1), e.g. 0.1",
}


def cli_option(name: str, value: Any) -> str:
    """How a field is given on the command line: ``batch_size`` -> ``--batch-size 0``."""
    return f"--{name.replace('_', '-')} {value}"


def parse_config(values: Mapping[str, Any], *, option: Callable[[str, Any], str] = cli_option) -> TrainConfig:
    """A :class:`TrainConfig` from user input; a refused value is one :class:`InputError` naming its option."""
    try:
        return TrainConfig.model_validate(dict(values))
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "config"
        raise InputError(
            f"{option(name, values.get(name))} is invalid: {first['msg'][0].lower()}{first['msg'][1:]}",
            FIXES.get(name, "pass a value within the bound above"),
        ) from None


class TrainConfig(BaseModel):
    """A training run. ``data`` is a committed dataset folder (or its manifest), ``out`` the model URL."""

    # NaN passes every bound check (all comparisons are false) and inf passes `gt`: refuse both.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    data: str
    out: str
    model: ModelName = "resnet20"
    depth: int = Field(
        default=20, ge=8, description="ResNet-20 family only: 6n+2 layers (20, 32, 44, 56, 110)"
    )
    width: int | None = Field(
        default=None, ge=1, description="channels of the first stage (resnet20: 16, resnet9: 64)"
    )
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(
        default=128, ge=1, description="global batch: split across all replicas of all workers"
    )
    lr: float | None = Field(
        default=None, gt=0, description="peak learning rate (default scales linearly with batch)"
    )
    schedule: Literal["onecycle", "cosine"] = "onecycle"
    warmup: float = Field(default=0.15, ge=0, lt=1, description="share of the steps spent warming up")
    momentum: float = Field(default=0.9, ge=0, lt=1)
    # Decoupled (w -= lr * wd * w each step, as Keras applies it): 5e-3 matches the usual coupled L2 of 5e-4,
    # which momentum 0.9 amplifies about tenfold.
    weight_decay: float = Field(default=5e-3, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    augment: bool = True
    mixed_precision: Switch = "auto"
    xla: Switch = "auto"
    checkpoint_every: int = Field(
        default=500, ge=0, description="steps between checkpoints (0: only at epoch ends)"
    )
    keep_checkpoints: int = Field(default=3, ge=1)
    shuffle_buffer: int = Field(default=10_000, ge=1)
    seed: int = 0
    evaluate: bool = True
    s3_endpoint: str | None = None

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.model == "resnet20" and (self.depth - 2) % 6 != 0:
            raise InputError(f"--depth {self.depth} is not a CIFAR ResNet depth", FIXES["depth"])
        return self

    @property
    def base_width(self) -> int:
        return self.width or MODEL_DEFAULTS[self.model][0]

    @property
    def peak_lr(self) -> float:
        # Linear scaling rule (Goyal et al.): the reference rate is tuned for a global batch of 128.
        return self.lr or MODEL_DEFAULTS[self.model][1] * self.batch_size / REFERENCE_BATCH

    def architecture(self, num_classes: int) -> dict[str, Any]:
        """What a checkpoint's variables depend on; resuming with anything else would not load."""
        arch: dict[str, Any] = {"model": self.model, "width": self.base_width, "num_classes": num_classes}
        if self.model == "resnet20":
            arch["depth"] = self.depth
        return arch

    def fingerprint(self, num_classes: int) -> str:
        key = json.dumps(self.architecture(num_classes), sort_keys=True).encode()
        return hashlib.sha256(key).hexdigest()[:16]

    def defining(self) -> dict[str, Any]:
        """What the trained model depends on, defaults resolved (no --lr and the default --lr are one run)."""
        values = self.model_dump(mode="json", exclude=set(NOT_DEFINING))
        values.update(width=self.base_width, lr=self.peak_lr)
        if self.model != "resnet20":
            values.pop("depth")  # only the ResNet-20 family has a depth
        return values

    def run_name(self, dataset_id: str) -> str:
        """``<model>-<10 hex>``: the same settings on the same dataset are the same run (and resume it)."""
        from cifarflow.k8s.names import spec_hash

        return f"{self.model}-{spec_hash({'dataset': dataset_id, **self.defining()})[:10]}"

    def public(self) -> dict[str, Any]:
        """The configuration as recorded next to the model (no endpoints: they are deployment details)."""
        return self.model_dump(mode="json", exclude={"s3_endpoint"})
