"""Optimiser and learning-rate schedules: SGD + Nesterov, decoupled weight decay, one-cycle or cosine."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from cifarflow.train.config import TrainConfig


class _WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak`` over the first ``warmup`` share of ``total_steps``, then :meth:`anneal`."""

    def __init__(self, peak: float, total_steps: int, warmup: float) -> None:
        self.peak = peak
        self.total = max(int(total_steps), 1)
        self.warm = max(round(self.total * warmup), 1)

    def __call__(self, step: Any) -> Any:
        step = ops.cast(step, "float32")
        up = (step + 1.0) / self.warm
        progress = ops.clip((step - self.warm) / max(self.total - self.warm, 1), 0.0, 1.0)
        return self.peak * ops.where(step < self.warm, up, self.anneal(progress))

    def anneal(self, progress: Any) -> Any:
        """The share of ``peak`` after warm-up, for ``progress`` going 0 -> 1."""
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"peak": self.peak, "total_steps": self.total, "warmup": self.warm / self.total}


class OneCycle(_WarmUp):
    """Linear warm-up, then linear decay to 0 (the one-cycle policy as fast CIFAR recipes use it)."""

    def anneal(self, progress: Any) -> Any:
        return 1.0 - progress


class WarmupCosine(_WarmUp):
    """Linear warm-up, then half a cosine down to 0."""

    def anneal(self, progress: Any) -> Any:
        return 0.5 * (1.0 + ops.cos(math.pi * progress))


def schedule(cfg: TrainConfig, total_steps: int) -> keras.optimizers.schedules.LearningRateSchedule:
    kind = OneCycle if cfg.schedule == "onecycle" else WarmupCosine
    return kind(cfg.peak_lr, total_steps, cfg.warmup)


def optimizer(cfg: TrainConfig, total_steps: int, *, mixed: bool = False) -> keras.optimizers.Optimizer:
    """SGD + Nesterov; weight decay on conv/dense kernels only (decaying BN scales and biases only hurts)."""
    opt: keras.optimizers.Optimizer = keras.optimizers.SGD(
        learning_rate=schedule(cfg, total_steps),
        momentum=cfg.momentum,
        nesterov=True,
        weight_decay=cfg.weight_decay or None,
    )
    opt.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    if mixed and cfg.mixed_type == "float16":
        # Dynamic loss scaling keeps float16 gradients from underflowing (bfloat16 has float32's range).
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt
