"""The served model: a SavedModel written by ``cifarflow train``, its class names, and batched prediction.

Everything here is protocol-free (numpy in, numpy out) so the HTTP layer only translates tensors. Requests
are checked here against what the model takes: uint8 images of the signature's height and width, or encoded
PNG/JPEG photos (decoded, and resized when they are not the model's size).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from cifarflow.storage import Store, join, redact

log = logging.getLogger(__name__)

INPUT = "images"
OUTPUTS = ("probabilities", "class_id", "class_name")
CHANNELS = 3


class BadTensor(ValueError):
    """A request tensor the model cannot take; the message is the 4xx answer's text."""


@dataclass(frozen=True)
class ModelInfo:
    url: str
    class_names: list[str]
    height: int
    width: int

    @property
    def input_shape(self) -> list[int]:
        return [-1, self.height, self.width, CHANNELS]


class Classifier:
    """``predict(uint8[N, H, W, 3]) -> (float32[N, classes], int32[N])`` through the serving signature."""

    def __init__(self, fn: Any, info: ModelInfo, max_batch: int) -> None:
        self.fn = fn
        self.info = info
        self.max_batch = max_batch

    @classmethod
    def load(cls, store: Store, model_url: str, *, max_batch: int = 1024) -> Classifier:
        from cifarflow.train import export

        with export.downloaded(store, model_url) as local:
            fn = export.load_signature(local)  # variables are restored now: the copy can go afterwards
        height, width = export.input_size(fn)  # the training dataset's size, as exported
        classes = int(fn.structured_outputs["probabilities"].shape[-1])
        info = ModelInfo(redact(model_url), class_names(store, model_url, classes), height, width)
        log.info("loaded %s: %dx%d images, %d classes", info.url, height, width, classes)
        return cls(fn, info, max_batch)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import tensorflow as tf

        probabilities, ids = [], []
        for start in range(0, len(images), self.max_batch):
            out = self.fn(images=tf.constant(images[start : start + self.max_batch]))
            probabilities.append(out["probabilities"].numpy().astype(np.float32))
            ids.append(out["class_id"].numpy().astype(np.int32))
        return np.concatenate(probabilities), np.concatenate(ids)

    # -- request tensors -------------------------------------------------------------------------------------
    def images_from_uint8(self, shape: list[int], data: Any) -> np.ndarray:
        """A V2 ``UINT8`` tensor (flat or nested data, row-major) as ``uint8[N, H, W, 3]``."""
        want = [self.info.height, self.info.width, CHANNELS]
        if len(shape) != 4 or list(shape[1:]) != want:
            raise BadTensor(f"shape {shape} is not [N, {', '.join(map(str, want))}] (HWC images)")
        self._check_batch(shape[0])
        try:
            array = np.asarray(data)
        except ValueError:
            raise BadTensor("data is ragged: every image must have the same size") from None
        if array.dtype.kind not in "iu":
            raise BadTensor(f"data must be integers 0-255 for UINT8, got {_kind(array)}")
        if array.size != int(np.prod(shape)):
            raise BadTensor(f"data has {array.size} values, shape {shape} needs {int(np.prod(shape))}")
        if array.size and (array.min() < 0 or array.max() > 255):
            raise BadTensor("UINT8 values must lie in 0-255")
        return array.astype(np.uint8).reshape(shape)

    def images_from_bytes(self, shape: list[int], data: Any) -> np.ndarray:
        """A V2 ``BYTES`` tensor of base64-encoded PNG/JPEG files as ``uint8[N, H, W, 3]``."""
        if len(shape) != 1 or not isinstance(data, list) or len(data) != shape[0]:
            raise BadTensor(f"a BYTES tensor holds one encoded image per element: shape [N], got {shape}")
        self._check_batch(shape[0])
        return np.stack([self._decode(i, item) for i, item in enumerate(data)])

    def _decode(self, index: int, item: Any) -> np.ndarray:
        import tensorflow as tf

        if not isinstance(item, str):
            raise BadTensor(f"element {index} is not a base64 string")
        try:
            raw = base64.b64decode(item, validate=True)
            image = tf.io.decode_image(raw, channels=CHANNELS, expand_animations=False)
        except (binascii.Error, ValueError):
            raise BadTensor(f"element {index} is not valid base64") from None
        except tf.errors.InvalidArgumentError:
            raise BadTensor(f"element {index} is not a PNG, JPEG, GIF or BMP image") from None
        size = (self.info.height, self.info.width)
        if tuple(image.shape[:2]) != size:
            image = tf.cast(tf.round(tf.image.resize(image, size, antialias=True)), tf.uint8)
        return np.asarray(image.numpy(), dtype=np.uint8)

    def _check_batch(self, n: int) -> None:
        if n < 1:
            raise BadTensor(f"the batch must hold at least one image, got {n}")
        if n > self.max_batch:
            raise BadTensor(f"{n} images exceed the server's limit of {self.max_batch} a request")


def class_names(store: Store, model_url: str, classes: int) -> list[str]:
    """The dataset's class names recorded next to the model (training.json, else metrics.json)."""
    from cifarflow.train.evaluate import METRICS
    from cifarflow.train.trainer import TRAINING_JSON

    for name, path in ((TRAINING_JSON, ("dataset", "class_names")), (METRICS, ("class_names",))):
        url = join(model_url, name)
        if not store.exists(url):
            continue
        value: Any = json.loads(store.read_text(url))
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, list) and len(value) == classes:
            return [str(v) for v in value]
    log.warning("no class names recorded next to the model: answering with class numbers")
    return [str(i) for i in range(classes)]


def _kind(array: np.ndarray) -> str:
    return {"f": "floats", "b": "booleans", "U": "strings", "O": "mixed values"}.get(
        array.dtype.kind, str(array.dtype)
    )
