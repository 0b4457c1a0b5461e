"""ResNets for images of any size (the dataset's), built with Keras 3 layers.

Every model takes raw ``uint8`` images: its first layer (:class:`Standardize`) applies the dataset's
per-channel mean/std, so the trained model, the checkpoint and the exported SavedModel see pixels alike.

- ``resnet20``: the CIFAR ResNet of He et al. (2016), depth ``6n+2`` (20, 32, 44, 56, 110), three stages of
  ``width``, ``2*width``, ``4*width`` channels (16/32/64 by default), projection shortcuts where the shape
  changes.
- ``resnet9``: the residual net of Page's DAWNBench entry (94% on CIFAR-10 in 24 epochs): prep, three
  stages of ``2*width``, ``4*width``, ``8*width`` channels with max-pooling, residual blocks after the first
  and third, a global max-pool and a 0.125-scaled linear head.

The stem follows the input size (:func:`config.stem_for`): up to ``CIFAR_STEM_MAX`` (64) pixels a side, the
CIFAR stem (a 3x3 convolution at full resolution, as both papers use it); above, the ImageNet stem of He et al.
(a 7x7/2 convolution and a 3x3/2 max-pool), which brings a 224 px image to 56 px before the first stage, so the
compute per image grows with the area only as far as it must.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from cifarflow.train.config import Stem, TrainConfig, stem_for

BN_MOMENTUM = 0.9  # Keras' 0.99 lags behind the weights in short runs; 0.9 is what CIFAR recipes use
BN_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="cifarflow")
class Standardize(layers.Layer):
    """uint8 HWC images -> float32, per channel ``(x / 255 - mean) / std`` (stats on the [0, 1] scale)."""

    def __init__(self, mean: list[float], std: list[float], **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")  # normalise in full precision even under a mixed policy
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def call(self, images: Any) -> Any:
        scale = ops.convert_to_tensor([1.0 / (255.0 * s) for s in self.std], "float32")
        shift = ops.convert_to_tensor([m / s for m, s in zip(self.mean, self.std, strict=True)], "float32")
        return ops.cast(images, "float32") * scale - shift

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mean": self.mean, "std": self.std}


def build(
    cfg: TrainConfig,
    *,
    num_classes: int,
    mean: list[float],
    std: list[float],
    shape: tuple[int, int, int],
    mixed: bool = False,
) -> keras.Model:
    """The model ``cfg`` names, for ``num_classes`` classes and uint8 HWC images of ``shape``; ``mixed``
    computes in ``cfg.mixed_type`` (float16 or bfloat16; variables stay float32)."""
    policy = f"mixed_{cfg.mixed_type}" if mixed else "float32"
    inputs = keras.Input(shape=shape, dtype="uint8", name="images")
    x = Standardize(mean, std, name="standardize")(inputs)
    stem = stem_for(shape[0], shape[1])
    if cfg.model == "resnet9":
        x = _resnet9_body(x, cfg.base_width, policy, stem)
    else:
        x = _resnet20_body(x, cfg.depth, cfg.base_width, policy, stem)
    # Logits in float32 whatever the policy: softmax and the loss are not safe in float16.
    logits = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    if cfg.model == "resnet9":
        logits = layers.Rescaling(0.125, dtype="float32", name="scale")(logits)
    name = f"{cfg.model}" if cfg.model == "resnet9" else f"resnet{cfg.depth}"
    return keras.Model(inputs, logits, name=f"{name}_w{cfg.base_width}")


def _conv_bn(
    x: Any, channels: int, policy: str, *, stride: int = 1, kernel: int = 3, relu: bool = True, name: str
) -> Any:
    x = layers.Conv2D(
        channels,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        dtype=policy,
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=policy, name=f"{name}_bn")(
        x
    )
    return layers.Activation("relu", dtype=policy, name=f"{name}_relu")(x) if relu else x


def _stem(x: Any, channels: int, policy: str, stem: Stem, name: str) -> Any:
    """The first convolution: full resolution for small images, /4 (7x7/2 conv, 3x3/2 max-pool) for large."""
    if stem == "cifar":
        return _conv_bn(x, channels, policy, name=name)
    x = _conv_bn(x, channels, policy, stride=2, kernel=7, name=name)
    return layers.MaxPooling2D(3, strides=2, padding="same", dtype=policy, name=f"{name}_pool")(x)


def _resnet20_body(x: Any, depth: int, width: int, policy: str, stem: Stem) -> Any:
    blocks = (depth - 2) // 6
    x = _stem(x, width, policy, stem, name="stem")
    for stage in range(3):
        channels = width * 2**stage
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"s{stage + 1}b{block + 1}"
            y = _conv_bn(x, channels, policy, stride=stride, name=f"{name}a")
            y = _conv_bn(y, channels, policy, relu=False, name=f"{name}b")
            if stride != 1 or x.shape[-1] != channels:
                x = _conv_bn(x, channels, policy, stride=stride, kernel=1, relu=False, name=f"{name}_proj")
            x = layers.Add(dtype=policy, name=f"{name}_add")([x, y])
            x = layers.Activation("relu", dtype=policy, name=f"{name}_out")(x)
    return layers.GlobalAveragePooling2D(dtype=policy, name="pool")(x)


def _resnet9_body(x: Any, width: int, policy: str, stem: Stem) -> Any:
    def stage(x: Any, channels: int, name: str, residual: bool) -> Any:
        x = _conv_bn(x, channels, policy, name=name)
        x = layers.MaxPooling2D(2, dtype=policy, name=f"{name}_pool")(x)
        if residual:
            y = _conv_bn(x, channels, policy, name=f"{name}_res1")
            y = _conv_bn(y, channels, policy, name=f"{name}_res2")
            x = layers.Add(dtype=policy, name=f"{name}_add")([x, y])
        return x

    x = _stem(x, width, policy, stem, name="prep")
    x = stage(x, 2 * width, "layer1", residual=True)
    x = stage(x, 4 * width, "layer2", residual=False)
    x = stage(x, 8 * width, "layer3", residual=True)
    return layers.GlobalMaxPooling2D(dtype=policy, name="pool")(x)
