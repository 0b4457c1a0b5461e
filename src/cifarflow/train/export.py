"""The servable model: a SavedModel whose signature takes raw uint8 images and does the normalisation itself.

``tf.saved_model.load(path).signatures["serving_default"](images=uint8[N, H, W, 3])`` returns ``logits``,
``probabilities``, ``class_id`` and ``class_name``; H and W are the training dataset's (the model's input).
The exported copy is float32 whatever the training precision, so it serves on any CPU; it is uploaded
through the store with ``saved_model.pb`` last, so a reader never loads a half-uploaded model.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from cifarflow.errors import InputError
from cifarflow.storage import Store, join, redact

log = logging.getLogger(__name__)

SAVED_MODEL = "saved_model"
SIGNATURE = "serving_default"
LAST = ("saved_model.pb", "fingerprint.pb")  # their presence makes a folder a SavedModel: upload them last


def weights_fingerprint(weights: list[np.ndarray]) -> str:
    """sha256 over every variable's bytes, in order: equal fingerprints mean bit-identical models."""
    digest = hashlib.sha256()
    for array in weights:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def export(model: keras.Model, class_names: list[str], store: Store, model_url: str) -> str:
    """Write ``model`` (float32, non-distributed) as ``MODEL_URL/saved_model``; returns its URL. The signature
    takes uint8 ``[None, H, W, 3]``, the model's own input size."""
    names = tf.constant(class_names)
    height, width, channels = model.input_shape[1:]

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = model(images, training=False)
        class_id = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits),
            "class_id": class_id,
            "class_name": tf.gather(names, class_id),
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serve",
        serve,
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name="images")],
    )
    url = join(model_url, SAVED_MODEL)
    with tempfile.TemporaryDirectory(prefix="cifarflow-export-") as tmp:
        local = os.path.join(tmp, SAVED_MODEL)
        archive.write_out(local, verbose=False)
        upload_folder(store, local, url)
    log.info("exported SavedModel to %s", redact(url))
    return url


def upload_folder(store: Store, local: str, url: str) -> None:
    """Replace ``url`` with the folder ``local``; the files that mark a SavedModel complete go up last."""
    from cifarflow.train.checkpoints import removed_on_failure

    store.remove(url, recursive=True)
    files = [os.path.relpath(os.path.join(d, f), local) for d, _, fs in os.walk(local) for f in fs]
    with removed_on_failure(store, url):
        for rel in sorted(files, key=lambda r: (r in LAST, r)):
            store.put_file(os.path.join(local, rel), join(url, rel.replace(os.sep, "/")))


@contextmanager
def downloaded(store: Store, model_url: str) -> Iterator[str]:
    """A local copy of ``MODEL_URL/saved_model`` for ``tf.saved_model.load``; removed afterwards."""
    url = join(model_url, SAVED_MODEL)
    if not store.exists(join(url, "saved_model.pb")):
        raise InputError(
            f"no SavedModel at {redact(url)}",
            "point --model at the --out of a finished `cifarflow train`",
        )
    tmp = tempfile.mkdtemp(prefix="cifarflow-model-")
    try:
        _download(store, url, tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(store: Store, url: str, local: str) -> None:
    fs, root = store.fs(url)
    for path in fs.find(root):
        rel = (
            path[len(root.rstrip("/")) + 1 :] if path.startswith(root.rstrip("/")) else os.path.basename(path)
        )
        target = os.path.join(local, *rel.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with store.open(join(url, rel), "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 16 << 20)


def input_size(fn: Any) -> tuple[int, int]:
    """(height, width) of the images a serving function (checked by :func:`load_signature`) takes."""
    height, width = fn.structured_input_signature[1]["images"].shape[1:3]
    return int(height), int(width)


def load_signature(path: str) -> Any:
    """The serving function of a local SavedModel, checked to take uint8 ``[N, H, W, 3]`` images of a fixed
    size."""
    loaded = tf.saved_model.load(path)
    if SIGNATURE not in loaded.signatures:
        raise InputError(
            f"the SavedModel has no {SIGNATURE!r} signature", "re-export it with `cifarflow train`"
        )
    fn = loaded.signatures[SIGNATURE]
    spec = fn.structured_input_signature[1].get("images")
    dims = list(spec.shape) if spec is not None and spec.shape.rank is not None else []
    if spec is None or spec.dtype != tf.uint8 or len(dims) != 4 or dims[3] != 3 or None in dims[1:3]:
        raise InputError(
            f"the SavedModel's signature takes {spec}, not uint8 [N, H, W, 3] images of a fixed size",
            "evaluate a model written by `cifarflow train`",
        )
    fn._cifarflow_owner = loaded  # keep the variables alive as long as the function
    return fn
