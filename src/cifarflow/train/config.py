"""What a training run is: one validated, serialisable configuration shared by the CLI, the TFJob and KFP."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cifarflow import config
from cifarflow.errors import InputError

ModelName = Literal["resnet20", "resnet9"]
Schedule = Literal["onecycle", "cosine"]
Switch = Literal["auto", "on", "off"]
# The half type of mixed precision: float16 needs loss scaling; bfloat16 (Ampere and later GPUs, TPUs) has
# float32's range and does not.
HalfType = Literal["float16", "bfloat16"]

# Per-model defaults: (base width, peak learning rate at a global batch of 128).
MODEL_DEFAULTS: dict[str, tuple[int, float]] = {"resnet20": (16, 0.1), "resnet9": (64, 0.1)}
REFERENCE_BATCH = 128

# The stem follows the image size: the CIFAR stem (3x3, stride 1) up to this many pixels a side, the ImageNet
# stem (7x7/2 convolution + 3x3/2 max-pool) above, so a large image costs what it must and no more.
CIFAR_STEM_MAX = 64
Stem = Literal["cifar", "imagenet"]


def stem_for(height: int, width: int) -> Stem:
    """The stem the models use for ``height`` x ``width`` images (see :data:`CIFAR_STEM_MAX`)."""
    return "cifar" if max(height, width) <= CIFAR_STEM_MAX else "imagenet"


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
        "mixed_type",
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


# Fields that say where the run reads and writes: their own options, never forwarded as training settings.
PLACEMENT = ("data", "out", "s3_endpoint")


def parse_config(
    values: Mapping[str, Any], *, option: Callable[[str, Any], str] = config.cli_option
) -> TrainConfig:
    """A :class:`TrainConfig` from user input; a refused value is one :class:`InputError` naming its option."""
    return config.parse(TrainConfig, values, option=option, fixes=FIXES)


def settings_fields() -> list[str]:
    """The training settings (every field but :data:`PLACEMENT`), in declaration order: each is a
    ``cifarflow train`` option."""
    return [name for name in TrainConfig.model_fields if name not in PLACEMENT]


def container_args(cfg: TrainConfig) -> list[str]:
    """The settings that differ from their defaults, as ``cifarflow train`` arguments for the same run inside
    a pod: ``["--model", "resnet9", "--epochs", "3", "--no-evaluate"]`` (``--data``/``--out`` come first)."""
    args: list[str] = []
    for name in settings_fields():
        value, default = getattr(cfg, name), TrainConfig.model_fields[name].default
        if value == default or value is None:
            continue
        if isinstance(value, bool):
            args.append(f"--{'' if value else 'no-'}{config.flag(name)}")
        else:
            args += [f"--{config.flag(name)}", str(value)]
    return args


class TrainConfig(BaseModel):
    """A training run. ``data`` is a committed dataset folder (or its manifest), ``out`` the model URL."""

    # NaN passes every bound check (all comparisons are false) and inf passes `gt`: refuse both.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # Each description is the help of the field's `cifarflow train` option (see cli/train.py).
    data: str = Field(description="Dataset folder (DATASETS/<dataset-id>) or its _manifest.json.")
    out: str = Field(description="Model URL: saved_model/, checkpoints/, tensorboard/, report.html...")
    model: ModelName = Field(default="resnet20", description="The network: resnet20 family or resnet9.")
    depth: int = Field(default=20, ge=8, description="resnet20 family: 6n+2 layers (20, 32, 56...).")
    width: int | None = Field(
        default=None, ge=1, description="First-stage channels (default: 16 resnet20, 64 resnet9)."
    )
    epochs: int = Field(default=30, ge=1, description="Training epochs.")
    batch_size: int = Field(default=128, ge=1, description="Global batch, split over all replicas.")
    lr: float | None = Field(default=None, gt=0, description="Peak learning rate (default: 0.1 x batch/128).")
    schedule: Schedule = Field(default="onecycle", description="Learning-rate schedule.")
    warmup: float = Field(default=0.15, ge=0, lt=1, description="Share of the steps spent warming up.")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum.")
    # Decoupled (w -= lr * wd * w each step, as Keras applies it): 5e-3 matches the usual coupled L2 of 5e-4,
    # which momentum 0.9 amplifies about tenfold.
    weight_decay: float = Field(default=5e-3, ge=0, description="Decoupled weight decay.")
    label_smoothing: float = Field(default=0.1, ge=0, lt=1, description="Label smoothing in [0, 1).")
    augment: bool = Field(default=True, description="Random crops and flips while training.")
    mixed_precision: Switch = Field(default="auto", description="auto: on with a GPU.")
    mixed_type: HalfType = Field(
        default="float16", description="Half type under mixed precision (bfloat16: no loss scaling)."
    )
    xla: Switch = Field(default="auto", description="auto: on with a GPU.")
    checkpoint_every: int = Field(
        default=500, ge=0, description="Steps between checkpoints (0: at epoch ends only)."
    )
    keep_checkpoints: int = Field(default=3, ge=1, description="Checkpoints kept.")
    shuffle_buffer: int = Field(default=10_000, ge=1, description="Images in the shuffle buffer.")
    seed: int = Field(default=0, description="Seed of initialisation and shuffling.")
    evaluate: bool = Field(default=True, description="Score the test split after.")
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

    def architecture(self, num_classes: int, image: tuple[int, int]) -> dict[str, Any]:
        """What a checkpoint's variables depend on; resuming with anything else would not load. ``image`` is
        (height, width): it chooses the stem, recorded only when not the CIFAR one (older fingerprints hold)."""
        arch: dict[str, Any] = {"model": self.model, "width": self.base_width, "num_classes": num_classes}
        if self.model == "resnet20":
            arch["depth"] = self.depth
        if (stem := stem_for(*image)) != "cifar":
            arch["stem"] = stem
        return arch

    def fingerprint(self, num_classes: int, image: tuple[int, int]) -> str:
        key = json.dumps(self.architecture(num_classes, image), sort_keys=True).encode()
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
