"""The local backend: Spark in local mode and the trainer in this process (a laptop, CI, a pipeline step's pod).

Deploying here cannot leave a server behind (a pipeline step's process ends; ``cifarflow serve`` is the
long-running server): it loads the model exactly as ``cifarflow serve`` does, classifies one image through the
serving signature, and reports the command that serves it.
"""

from __future__ import annotations

import importlib.util
import logging
import shlex

from cifarflow.backends.base import (
    Backend,
    DeployRequest,
    DeployResult,
    PreprocessRequest,
    PreprocessResult,
    TrainRequest,
    TrainResult,
)
from cifarflow.errors import InputError
from cifarflow.storage import redact

log = logging.getLogger(__name__)


class LocalBackend(Backend):
    name = "local"

    def preprocess(self, request: PreprocessRequest) -> PreprocessResult:
        require("pyspark", "preprocess with backend=local", "cifarflow[spark]")
        from cifarflow.data import preprocess as pre

        params = request.params
        result = pre.preprocess(
            request.raw_url,
            request.datasets_url,
            master=request.master,
            partitions=params.partitions,
            val_fraction=params.val_fraction,
            seed=params.seed,
            image_size=params.image_size,
            strict=params.strict,
            store=self.store,
        )
        return PreprocessResult(outputs={"dataset": result.dataset_id, "manifest": result.manifest_url})

    def train(self, request: TrainRequest) -> TrainResult:
        require("tensorflow", "train with backend=local", "cifarflow[train]")
        from cifarflow.train import trainer

        cfg = request.cfg
        result = trainer.train(cfg, hooks=request.hooks)
        if not result.is_chief:
            return TrainResult()  # the chief reports; the other replicas' logs stay quiet
        outputs = {"model": result.model_url, "saved_model": str(result.saved_model_url)}
        if cfg.evaluate:
            from cifarflow.train.evaluate import evaluate

            scored = evaluate(cfg.data, cfg.out, cfg.out, store=self.store)
            outputs.update(test_accuracy=f"{scored.accuracy:.4f}", report=scored.report_url)
        return TrainResult(outputs=outputs)

    def deploy(self, request: DeployRequest) -> DeployResult:
        require("tensorflow", "deploy with backend=local", "cifarflow[train]")
        import numpy as np

        from cifarflow.serve.classifier import Classifier

        classifier = Classifier.load(self.store, request.model_url, max_batch=1)
        blank = np.zeros([1, *classifier.info.input_shape[1:]], dtype=np.uint8)
        _, class_id = classifier.predict(blank)  # the signature answers: `cifarflow serve` will
        command = shlex.join(
            ["cifarflow", "serve", "--model", redact(request.model_url), "--name", request.params.name]
        )
        log.info(
            "%s is servable (a blank image -> class %d): %s", redact(request.model_url), class_id[0], command
        )
        return DeployResult(outputs={"action": "checked", "serve": command})


def require(module: str, what: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise InputError(
            f"{what} needs {module}, which this image does not have",
            f"use backend=k8s, or a pipeline image built with {extra}",
        )
