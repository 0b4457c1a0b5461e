"""The training loop: a custom ``strategy.run`` loop over Keras 3 layers and optimiser.

Why not ``model.fit``: Keras 3's ``fit`` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585).
The loop here is small and does what a TFJob needs and ``fit`` does not: chief-only checkpoints to any bucket,
resuming at the exact step, agreeing on a clean stop across workers, and keeping every replica bit-identical
(see :meth:`Trainer._replica_step` on batch-norm statistics).

One step, on every replica: augment (random crop + flip, in-graph), forward, smoothed cross-entropy scaled by
the GLOBAL batch, backward (jit-compiled with XLA on GPUs), the optimiser's all-reduce of the gradients and
update, then one packed all-reduce that averages the batch-norm statistics and sums metrics and stop flags.

Here: :func:`train` and the :class:`Trainer` (the step and the loop). Beside it: :mod:`.model_folder` (``--out``
checked first), :mod:`.stop` (SIGINT/SIGTERM ask for a clean stop), :mod:`.failures` (exit codes, TensorFlow's
errors as one line), :mod:`.records` (``training.json``, TensorBoard) and :mod:`.handoff` (the result, the
serving export).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import shutil
import tempfile
import time
from typing import Any, Protocol

from cifarflow.errors import InputError, JobError
from cifarflow.storage import StorageConfig, Store, join, redact
from cifarflow.train import records, runs, tfenv
from cifarflow.train.config import TrainConfig
from cifarflow.train.distribute import Role, make_strategy, role_from_env
from cifarflow.train.failures import RETRYABLE, Interrupted, PeerLost, translate_errors
from cifarflow.train.handoff import TrainResult, export_serving
from cifarflow.train.model_folder import check_output
from cifarflow.train.records import TENSORBOARD, TRAINING_JSON
from cifarflow.train.source import DataSource, open_source
from cifarflow.train.stop import StopRequest

log = logging.getLogger(__name__)

# Callers import these from here (the CLI, evaluate, serve, the tests); each lives in the module named for it.
__all__ = [
    "CHECKPOINTS",
    "RETRYABLE",
    "TENSORBOARD",
    "TRAINING_JSON",
    "Hooks",
    "Interrupted",
    "PeerLost",
    "TrainResult",
    "Trainer",
    "check_output",
    "smoothed_cross_entropy",
    "train",
]

CHECKPOINTS = "checkpoints"


class Hooks(Protocol):
    """What a front end (the CLI's progress bars) hears from the loop."""

    def on_start(self, *, epochs: int, steps_per_epoch: int, step: int) -> None: ...
    def on_step(self, step: int) -> None: ...
    def on_epoch(self, epoch: int, logs: dict[str, float]) -> None: ...


def train(cfg: TrainConfig, *, hooks: Hooks | None = None) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` into ``cfg.out``, resuming from ``cfg.out/checkpoints`` if any."""
    store = Store(StorageConfig.from_env(cfg.s3_endpoint))
    # Everything a user can get wrong is checked before TensorFlow starts.
    source = open_source(store, cfg.data)
    check_output(store, cfg.out)
    runs.check(store, cfg, source.manifest.dataset_id)
    role = role_from_env()
    tfenv.load()  # quietly, before anything else imports it
    strategy = make_strategy(role)  # first TensorFlow call: the multi-worker runtime must start before any op
    trainer = Trainer(cfg, source=source, store=store, role=role, strategy=strategy, hooks=hooks)
    try:
        return trainer.run()
    finally:
        trainer.close()


class Trainer:
    """One training run on one process of the job: the model, its optimiser and checkpoints, the loop."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        source: DataSource,
        store: Store,
        role: Role,
        strategy: Any,
        hooks: Hooks | None,
    ) -> None:
        import keras
        import tensorflow as tf

        from cifarflow.train import checkpoints, model, optim

        self.cfg, self.source, self.store, self.role, self.strategy = cfg, source, store, role, strategy
        self.hooks = hooks
        self.replicas = int(strategy.num_replicas_in_sync)
        if cfg.batch_size % self.replicas:
            raise InputError(
                f"--batch-size {cfg.batch_size} does not split evenly over {self.replicas} replicas",
                f"use a multiple of {self.replicas}",
            )
        self.steps_per_epoch = source.rows("train") // cfg.batch_size
        if self.steps_per_epoch < 1:
            raise InputError(
                f"the train split has {source.rows('train')} images, less than one batch of {cfg.batch_size}",
                "lower --batch-size",
            )
        self.total_steps = cfg.epochs * self.steps_per_epoch
        gpu = bool(tf.config.list_physical_devices("GPU"))
        self.mixed = cfg.mixed_precision == "on" or (cfg.mixed_precision == "auto" and gpu)
        self.xla = cfg.xla == "on" or (cfg.xla == "auto" and gpu)
        self.architecture = cfg.fingerprint(source.num_classes, source.shape[:2])

        keras.utils.set_random_seed(
            cfg.seed
        )  # same initial weights on every worker (MWMS also broadcasts them)
        with strategy.scope():
            self.model = model.build(
                cfg,
                num_classes=source.num_classes,
                mean=source.stats.mean,
                std=source.stats.std,
                shape=source.shape,
                mixed=self.mixed,
            )
            self.optimizer = optim.optimizer(cfg, self.total_steps, mixed=self.mixed)
            # Build the slots now: creating variables inside strategy.run on the first step is not allowed.
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        # The inner SGD is what is checkpointed: mixed-precision and full-precision runs share checkpoints.
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=inner, step=self.step)
        self.checkpoints = checkpoints.BucketCheckpoints(
            store,
            join(cfg.out, CHECKPOINTS),
            self.checkpoint,
            is_chief=role.is_chief,
            keep=cfg.keep_checkpoints,
            architecture=self.architecture,
            batch_size=cfg.batch_size,
        )
        self.stats_vars = [v for v in self.model.non_trainable_variables if "float" in str(v.dtype)]
        self._compute = tf.function(self._forward_backward, jit_compile=self.xla, reduce_retracing=True)
        self._train_step = tf.function(self._distributed_step)
        self._eval_step = tf.function(self._evaluate_batch, reduce_retracing=True)
        self._stop = StopRequest()
        self._tmp = tempfile.mkdtemp(prefix="cifarflow-train-")
        self._scalars = records.Scalars(store, cfg.out, self._tmp)
        self._iterator: Any = None

    def close(self) -> None:
        self.checkpoints.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    # -- the step (graph code) ----------------------------------------------------------------------------
    def _forward_backward(self, images: Any, labels: Any, seed: Any) -> tuple[Any, Any, list[Any]]:
        import tensorflow as tf

        from cifarflow.train.inputs import augment

        if self.cfg.augment:
            images = augment(images, seed)
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            per_example = smoothed_cross_entropy(
                labels, logits, self.source.num_classes, self.cfg.label_smoothing
            )
            # Scaled by the GLOBAL batch: the all-reduce SUM of the replicas' gradients is then the mean.
            loss = tf.reduce_sum(per_example) / self.cfg.batch_size
            scaled = self.optimizer.scale_loss(loss) if self.mixed else loss
        grads = tape.gradient(scaled, self.model.trainable_variables)
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        )
        return tf.reduce_sum(per_example), correct, grads

    def _replica_step(self, images: Any, labels: Any, stop: Any) -> Any:
        import tensorflow as tf

        ctx = tf.distribute.get_replica_context()
        replica = tf.cast(ctx.replica_id_in_sync_group, tf.int64)
        seed = tf.stack([tf.constant(self.cfg.seed, tf.int64) * 1_000_003 + replica, self.step])
        loss_sum, correct, grads = self._compute(images, labels, seed)
        # apply_gradients all-reduces (sums) the gradients over the replicas before the update.
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables, strict=True))
        # Keras 3 creates batch-norm statistics with aggregation "none": under strategy.run each replica
        # updates its own copy and the copies drift apart (measured). Averaging them here, in the same
        # all-reduce as the metrics, keeps every replica bit-identical for one small collective per step.
        count = tf.cast(tf.shape(labels)[0], tf.float32)
        metrics = tf.stack([loss_sum, correct, count, stop])
        flat = [tf.reshape(v.value, [-1]) for v in self.stats_vars]
        packed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.concat([*flat, metrics], axis=0))
        offset = 0
        for v, part in zip(self.stats_vars, flat, strict=True):
            size = part.shape[0]
            v.assign(tf.reshape(packed[offset : offset + size] / self.replicas, v.shape))
            offset += size
        return packed[offset:]

    def _distributed_step(self, iterator: Any, stop: Any) -> Any:
        images, labels = next(iterator)
        out = self.strategy.run(self._replica_step, args=(images, labels, stop))
        self.step.assign_add(1)
        return self.strategy.experimental_local_results(out)[0]

    def _evaluate_batch(self, images: Any, labels: Any) -> Any:
        import tensorflow as tf

        logits = self.model(images, training=False)
        per_example = smoothed_cross_entropy(labels, logits, self.source.num_classes, 0.0)
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        )
        return tf.stack([tf.reduce_sum(per_example), correct, tf.cast(tf.shape(labels)[0], tf.float32)])

    # -- the loop (Python) --------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        started = time.perf_counter()
        saved = self.checkpoints.restore()
        start = int(self.step.numpy())
        claimed = self.role.is_chief and runs.record(self.store, self.cfg, self.source.manifest.dataset_id)
        try:
            return self._run(started, saved is not None, start)
        except BaseException:
            if claimed and not self.checkpoints.saved_any():
                runs.release(self.store, self.cfg.out)  # failed before its first checkpoint: leave nothing
            raise

    def _run(self, started: float, saved: bool, start: int) -> TrainResult:
        import tensorflow as tf

        from cifarflow.train import inputs

        self._agree_on_start(start)
        history = (
            records.load_history(self.store, self.cfg.out, start // self.steps_per_epoch) if saved else []
        )
        if saved:
            log.info(
                "resuming at step %d of %d (epoch %d)",
                start,
                self.total_steps,
                start // self.steps_per_epoch + 1,
            )
        self._log_plan(start)

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            return inputs.make_dataset(
                self.source,
                "train",
                batch_size=context.get_per_replica_batch_size(self.cfg.batch_size),
                training=True,
                context=context,
                seed=self.cfg.seed + start,
                shuffle_buffer=self.cfg.shuffle_buffer,
            )

        # The iterator lives on the trainer, not in a frame: an exception's traceback keeps frames (and so their
        # locals) alive until exit, and a tf.data iterator over a Python generator that is still alive when the
        # interpreter shuts down can hang it (its thread waits for the GIL forever). `finally` drops it.
        self._iterator = iter(self.strategy.distribute_datasets_from_function(dataset_fn))
        try:
            step, train_seconds, history = self._epochs(start, history)
        finally:
            self._iterator = None
            gc.collect()
        weights = self.model.get_weights()
        from cifarflow.train.export import weights_fingerprint

        result = TrainResult(
            model_url=self.cfg.out,
            is_chief=self.role.is_chief,
            steps=step,
            epochs=self.cfg.epochs,
            resumed_from_step=start,
            history=history,
            fingerprint=weights_fingerprint(weights),
            seconds=time.perf_counter() - started,
            replicas=self.replicas,
            images_per_second=(step - start) * self.cfg.batch_size / train_seconds if train_seconds else 0.0,
        )
        log.info("weights sha256 %s (%s)", result.fingerprint, self.role.describe())
        if self.role.is_chief:
            result.saved_model_url = export_serving(self.cfg, self.source, self.store, weights)
        return result

    def _epochs(
        self, start: int, history: list[dict[str, float]]
    ) -> tuple[int, float, list[dict[str, float]]]:
        """Train from step ``start`` to the end; returns the step reached, seconds spent in steps, the history."""
        if self.hooks:
            self.hooks.on_start(epochs=self.cfg.epochs, steps_per_epoch=self.steps_per_epoch, step=start)
        step, train_seconds = start, 0.0
        with self._stop.catching_signals(), self._translate_errors():
            while step < self.total_steps:
                epoch = step // self.steps_per_epoch
                end = (epoch + 1) * self.steps_per_epoch
                t0 = time.perf_counter()
                sums, step, stopping = self._run_steps(step, end)
                seconds = time.perf_counter() - t0
                train_seconds += seconds
                if stopping:
                    self.checkpoints.save(step, step / self.steps_per_epoch)
                    raise Interrupted(
                        f"training stopped by {self._stop.signal} at step {step} of {self.total_steps}; "
                        f"checkpoint saved to {redact(join(self.cfg.out, CHECKPOINTS))}",
                        "rerun the same command to resume from it",
                        signum=self._stop.signum,
                    )
                logs = self._end_epoch(epoch, sums, seconds)
                history = [h for h in history if h["epoch"] != epoch + 1] + [logs]
                self.checkpoints.save(step, step / self.steps_per_epoch)
                self._write_history(history, start)
        return step, train_seconds, history

    def _run_steps(self, step: int, end: int) -> tuple[list[float], int, bool]:
        """Steps ``step..end``; returns the epoch's metric sums, the step reached and whether to stop.

        A step's metrics are read after the NEXT step is dispatched, so the host never waits for the device to
        go idle. Every worker reads the same all-reduced stop flag, so all stop after the same step.
        """
        import tensorflow as tf

        sums = [0.0, 0.0, 0.0]
        pending: Any = None
        stopping = False
        while step < end and not stopping:
            out = self._train_step(self._iterator, tf.constant(1.0 if self._stop.is_set() else 0.0))
            step += 1
            if pending is not None:
                stopping = self._consume(pending, sums)
            pending = out
            if self.hooks:
                self.hooks.on_step(step)
            if (
                self.cfg.checkpoint_every
                and step % self.cfg.checkpoint_every == 0
                and step < end
                and not stopping
            ):
                self.checkpoints.save(step, step / self.steps_per_epoch)
        if pending is not None:
            stopping = self._consume(pending, sums) or stopping
        return sums, step, stopping and step < self.total_steps

    @staticmethod
    def _consume(out: Any, sums: list[float]) -> bool:
        values = out.numpy()
        for i in range(3):
            sums[i] += float(values[i])
        return bool(values[3] > 0)

    def _end_epoch(self, epoch: int, sums: list[float], seconds: float) -> dict[str, float]:
        loss, correct, count = sums
        logs: dict[str, float] = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * self.steps_per_epoch,
            "loss": loss / max(count, 1),
            "accuracy": correct / max(count, 1),
            "learning_rate": float(self._learning_rate()),
            "seconds": seconds,
            "images_per_second": count / seconds if seconds else 0.0,
        }
        if self.source.has("val"):
            logs.update(self._validate())
        log.info(
            "epoch %d/%d: loss %.4f, accuracy %.4f%s, %.0f images/s",
            epoch + 1,
            self.cfg.epochs,
            logs["loss"],
            logs["accuracy"],
            _val_text(logs),
            logs["images_per_second"],
        )
        if self.role.is_chief:
            self._scalars.write(logs)
        if self.hooks:
            self.hooks.on_epoch(epoch + 1, logs)
        return logs

    def _validate(self) -> dict[str, float]:
        """Every worker scores the whole val split on its own (small, no collectives, identical numbers)."""
        from cifarflow.train import inputs

        ds = inputs.make_dataset(self.source, "val", batch_size=500, training=False)
        total = [0.0, 0.0, 0.0]
        for images, labels in ds:
            values = self._eval_step(images, labels).numpy()
            total = [a + float(b) for a, b in zip(total, values, strict=True)]
        return {"val_loss": total[0] / max(total[2], 1), "val_accuracy": total[1] / max(total[2], 1)}

    def _learning_rate(self) -> float:
        lr = getattr(self.optimizer, "inner_optimizer", self.optimizer).learning_rate
        return float(lr.numpy() if hasattr(lr, "numpy") else lr)

    # -- agreement, errors ------------------------------------------------------------------------------
    def _agree_on_start(self, start: int) -> None:
        """All workers must resume from the same step (else they would train different models)."""
        if not self.role.multi_worker:
            return
        import tensorflow as tf

        def replica(value: Any) -> Any:
            ctx = tf.distribute.get_replica_context()
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack([value, value * value]))

        with self._translate_errors():
            out = self.strategy.run(tf.function(replica), args=(tf.constant(float(start)),))
            total, squares = self.strategy.experimental_local_results(out)[0].numpy()
        if not math.isclose(squares * self.replicas, total * total):
            raise JobError(
                f"the workers restored different checkpoints (this one: step {start})",
                "restart the whole job so that every worker reads the same latest.json",
            )

    def _translate_errors(self) -> contextlib.AbstractContextManager[None]:
        checkpoints_url = redact(join(self.cfg.out, CHECKPOINTS))
        return translate_errors(multi_worker=self.role.multi_worker, checkpoints_url=checkpoints_url)

    # -- records (chief) -----------------------------------------------------------------------------------
    def _write_history(self, history: list[dict[str, float]], start: int) -> None:
        if not self.role.is_chief:
            return
        job = {
            "workers": self.role.num_workers,
            "replicas": self.replicas,
            "mixed_precision": self.mixed,
            "xla": self.xla,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "resumed_from_step": start,
        }
        records.write_history(self.store, self.cfg, self.source, job=job, history=history)

    def _log_plan(self, start: int) -> None:
        log.info(
            "%s on %s: %d classes, %s images, %d train images, global batch %d over %d replica(s), %d steps/epoch, "
            "%d epochs, peak lr %.3g, mixed precision %s, XLA %s, %s",
            self.model.name,
            self.source.manifest.dataset_id,
            self.source.num_classes,
            "x".join(map(str, self.source.shape)),
            self.source.rows("train"),
            self.cfg.batch_size,
            self.replicas,
            self.steps_per_epoch,
            self.cfg.epochs,
            self.cfg.peak_lr,
            "on" if self.mixed else "off",
            "on" if self.xla else "off",
            self.role.describe(),
        )


def smoothed_cross_entropy(labels: Any, logits: Any, num_classes: int, smoothing: float) -> Any:
    """Per-example cross-entropy against one-hot labels mixed with ``smoothing`` of the uniform."""
    import tensorflow as tf

    logits = tf.cast(logits, tf.float32)
    targets = tf.one_hot(labels, num_classes) * (1.0 - smoothing) + smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)


def _val_text(logs: dict[str, float]) -> str:
    if "val_loss" not in logs:
        return ""
    return f", val_loss {logs['val_loss']:.4f}, val_accuracy {logs['val_accuracy']:.4f}"
