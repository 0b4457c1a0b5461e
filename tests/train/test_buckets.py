"""Training through a real S3 API (moto_server): dataset read, checkpoints, SavedModel, report all in the bucket."""

from __future__ import annotations

import json

import pytest

from cifarflow.storage import Store
from cifarflow.train import arrays
from cifarflow.train.config import TrainConfig

from .conftest import CLASSES

pytestmark = pytest.mark.slow


class Crash(Exception):
    pass


class CrashAt:
    """Training hooks that stop the loop as a crash would, at one step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_start(self, *, epochs: int, steps_per_epoch: int, step: int) -> None:
        pass

    def on_step(self, step: int) -> None:
        if step == self.step:
            raise Crash

    def on_epoch(self, epoch: int, logs: dict[str, float]) -> None:
        pass


def test_train_resume_and_evaluate_in_an_s3_bucket(
    s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    from cifarflow.train.evaluate import evaluate
    from cifarflow.train.trainer import train

    store: Store = s3_server.store()
    data = arrays.write(
        store,
        f"{s3_bucket}/datasets/ds-1",
        {
            "train": arrays.synthetic(256),
            "val": arrays.synthetic(64, seed=1),
            "test": arrays.synthetic(128, seed=2),
        },
        class_names=CLASSES,
    )
    out = f"{s3_bucket}/models/run"
    base = dict(
        data=data, out=out, batch_size=32, depth=8, width=4, evaluate=False, s3_endpoint=s3_server.endpoint
    )
    cfg = TrainConfig(**base, epochs=2)  # type: ignore[arg-type]
    with pytest.raises(Crash):  # the process dies in epoch 2, after epoch 1's checkpoint
        train(cfg, hooks=CrashAt(step=10))
    assert json.loads(store.read_text(f"{out}/checkpoints/latest.json"))["step"] == 8

    second = train(cfg)  # the same run: it resumes
    assert second.resumed_from_step == 8 and second.steps == 16  # restored from the bucket, not from scratch
    assert [h["epoch"] for h in second.history] == [1, 2]
    assert store.exists(f"{out}/saved_model/saved_model.pb")
    assert store.list(f"{out}/tensorboard")

    result = evaluate(data, out, out, store=store)
    assert result.report_url == f"{out}/report.html" and store.exists(result.report_url)
    metrics = json.loads(store.read_text(result.metrics_url))
    assert metrics["test"]["images"] == 128 and len(metrics["history"]) == 2
