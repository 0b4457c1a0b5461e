"""What a run records in its model folder as it goes (chief only): ``training.json`` (the settings, the dataset,
the job and the per-epoch history, which a resumed run reads back) and TensorBoard's scalars."""

from __future__ import annotations

import json
import os
from typing import Any

from cifarflow.storage import Store, join, redact
from cifarflow.train import runs
from cifarflow.train.config import TrainConfig
from cifarflow.train.source import DataSource

TRAINING_JSON = runs.TRAINING_JSON
TENSORBOARD = "tensorboard"


def load_history(store: Store, out: str, done_epochs: int) -> list[dict[str, float]]:
    """The history of the epochs a checkpoint already covers (a later epoch's entry is redone)."""
    url = join(out, TRAINING_JSON)
    if not store.exists(url):
        return []
    epochs: list[dict[str, float]] = json.loads(store.read_text(url)).get("history", [])
    return [h for h in epochs if h.get("epoch", 0) <= done_epochs]


def write_history(
    store: Store,
    cfg: TrainConfig,
    source: DataSource,
    *,
    job: dict[str, Any],
    history: list[dict[str, float]],
) -> None:
    """``training.json``, rewritten whole after every epoch."""
    record = {
        "config": cfg.public(),
        "architecture": cfg.architecture(source.num_classes, source.shape[:2]),
        "dataset": {
            "id": source.manifest.dataset_id,
            "url": redact(source.base),
            "class_names": source.class_names,
            "rows": {s: source.rows(s) for s in source.manifest.splits},
        },
        "job": job,
        "history": history,
    }
    store.write_text(join(cfg.out, TRAINING_JSON), json.dumps(record, indent=2) + "\n")


class Scalars:
    """Per-epoch TensorBoard scalars, written locally under ``tmp`` and uploaded to ``out/tensorboard``."""

    def __init__(self, store: Store, out: str, tmp: str) -> None:
        self.store, self.out = store, out
        self.local = os.path.join(tmp, TENSORBOARD)
        self._writer: Any = None

    def write(self, logs: dict[str, float]) -> None:
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.local)
        # tf.summary.scalar lives in the tensorboard package, which TF 2.21 no longer installs; the core op
        # plus the scalars plugin's metadata writes exactly what TensorBoard reads, without a dependency.
        from tensorflow.core.framework import summary_pb2

        metadata = summary_pb2.SummaryMetadata()
        metadata.plugin_data.plugin_name = "scalars"
        with self._writer.as_default(step=int(logs["step"])):
            for key, value in logs.items():
                if key not in ("epoch", "step"):
                    tf.summary.write(key, tf.constant(value, tf.float32), metadata=metadata)
        self._writer.flush()
        for name in os.listdir(self.local):  # events files only grow; re-uploading them whole keeps it simple
            self.store.put_file(os.path.join(self.local, name), join(self.out, TENSORBOARD, name))
