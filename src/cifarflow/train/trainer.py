"""The training loop: a custom ``strategy.run`` loop over Keras 3 layers and optimiser.

Why not ``model.fit``: Keras 3's ``fit`` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585).
The loop here is small and does what a TFJob needs and ``fit`` does not: chief-only checkpoints to any bucket,
resuming at the exact step, agreeing on a clean stop across workers, and keeping every replica bit-identical
(see :meth:`Trainer._replica_step` on batch-norm statistics).

One step, on every replica: augment (random crop + flip, in-graph), forward, smoothed cross-entropy scaled by
the GLOBAL batch, backward (jit-compiled with XLA on GPUs), the optimiser's all-reduce of the gradients and
update, then one packed all-reduce that averages the batch-norm statistics and sums metrics and stop flags.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any, Protocol

from cifarflow.errors import InputError, JobError, StorageError, unmark
from cifarflow.storage import StorageConfig, Store, join, normalize, redact, translate
from cifarflow.train import runs, tfenv
from cifarflow.train.config import TrainConfig
from cifarflow.train.distribute import Role, make_strategy, role_from_env
from cifarflow.train.source import DataSource, open_source

log = logging.getLogger(__name__)

TRAINING_JSON = runs.TRAINING_JSON
CHECKPOINTS = "checkpoints"
TENSORBOARD = "tensorboard"


# Exit codes a TFJob with restartPolicy ExitCode retries (the training operator's IsRetryableExitCode): 130,
# 137, 143 (SIGINT, SIGKILL, SIGTERM) and 138, "user-defined retryable". 1 and 2 are permanent failures.
RETRYABLE = 138


class Interrupted(JobError):
    """A clean stop on SIGINT/SIGTERM: a checkpoint was saved, rerunning resumes. Exits 128 + the signal."""

    def __init__(self, problem: str, fix: str, *, signum: int) -> None:
        super().__init__(problem, fix)
        self.exit_code = 128 + signum


class PeerLost(JobError):
    """Another replica of the job died: this one cannot go on, but a restarted job resumes (retryable)."""

    exit_code = RETRYABLE


class Hooks(Protocol):
    """What a front end (the CLI's progress bars) hears from the loop."""

    def on_start(self, *, epochs: int, steps_per_epoch: int, step: int) -> None: ...
    def on_step(self, step: int) -> None: ...
    def on_epoch(self, epoch: int, logs: dict[str, float]) -> None: ...


@dataclass
class TrainResult:
    model_url: str
    is_chief: bool
    steps: int
    epochs: int
    resumed_from_step: int  # 0 for a fresh run
    history: list[dict[str, float]]
    fingerprint: str  # sha256 of all weights: equal on every worker of a job
    seconds: float
    images_per_second: float  # training steps only (no validation, checkpoints or export)
    saved_model_url: str | None = None
    replicas: int = 1


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


def check_output(store: Store, url: str, option: str = "--out") -> None:
    """Fail at once, with the fix, when the model URL cannot be reached or written (not after an epoch)."""
    store.check_reachable(url)
    fs, path = store.fs(url)
    with translate(url):
        local = normalize(url).startswith("file://")
        blocker = _file_in_the_way(path) if local else (path if fs.isfile(path) else None)
    if blocker is not None:
        raise InputError(
            f"{option} {redact(url)} must be a folder, but {blocker} is a file",
            f"point {option} at a new or existing folder",
        )
    try:
        store.exists(join(url, TRAINING_JSON))
    except OSError as exc:
        raise StorageError(
            f"cannot read {redact(url)}: {exc}", "check the model URL and its permissions"
        ) from exc


def _file_in_the_way(path: str) -> str | None:
    """The file that stops ``path`` from being (or becoming) a local folder; raises if it cannot be written."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        current = os.path.dirname(current)
    if not os.path.isdir(current):
        return current
    if not os.access(current, os.W_OK | os.X_OK):
        raise StorageError(f"{current} is not writable", "choose a folder you can write to")
    return None


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
        self._stop = threading.Event()
        self._stop_signal = ""
        self._stop_signum = int(signal.SIGINT)
        self._tmp = tempfile.mkdtemp(prefix="cifarflow-train-")
        self._writer: Any = None
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
        history = self._load_history(start) if saved else []
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
            result.saved_model_url = self._export(weights)
        return result

    def _epochs(
        self, start: int, history: list[dict[str, float]]
    ) -> tuple[int, float, list[dict[str, float]]]:
        """Train from step ``start`` to the end; returns the step reached, seconds spent in steps, the history."""
        if self.hooks:
            self.hooks.on_start(epochs=self.cfg.epochs, steps_per_epoch=self.steps_per_epoch, step=start)
        step, train_seconds = start, 0.0
        with self._signals(), self._translate_errors():
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
                        f"training stopped by {self._stop_signal} at step {step} of {self.total_steps}; "
                        f"checkpoint saved to {redact(join(self.cfg.out, CHECKPOINTS))}",
                        "rerun the same command to resume from it",
                        signum=self._stop_signum,
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
            self._summaries(logs)
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

    # -- agreement, signals, errors -----------------------------------------------------------------------
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

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM (Ctrl-C, Kubernetes stopping the pod) ask every worker for a clean stop."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set() and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
            self._stop_signal = signal.Signals(signum).name
            self._stop_signum = signum
            self._stop.set()
            log.warning("%s received: stopping within two steps and saving a checkpoint", self._stop_signal)

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    @contextlib.contextmanager
    def _translate_errors(self) -> Iterator[None]:
        """TensorFlow wraps the input pipeline's errors and a lost peer in its own; give the user one line."""
        import tensorflow as tf

        try:
            yield
        except tf.errors.OpError as exc:
            original = unmark(exc.message or str(exc))
            if original is not None:
                raise original from None
            if self.role.multi_worker and isinstance(
                exc, tf.errors.UnavailableError | tf.errors.CancelledError
            ):
                raise PeerLost(
                    f"a worker of the job is gone, collectives were aborted ({_cause(exc.message)})",
                    "restart the job (a TFJob restarts failed replicas); training resumes from "
                    f"{redact(join(self.cfg.out, CHECKPOINTS))}",
                ) from None
            raise

    # -- outputs (chief) ----------------------------------------------------------------------------------
    def _summaries(self, logs: dict[str, float]) -> None:
        import tensorflow as tf

        local = os.path.join(self._tmp, TENSORBOARD)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(local)
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
        for name in os.listdir(local):  # events files only grow; re-uploading them whole keeps it simple
            self.store.put_file(os.path.join(local, name), join(self.cfg.out, TENSORBOARD, name))

    def _load_history(self, start: int) -> list[dict[str, float]]:
        url = join(self.cfg.out, TRAINING_JSON)
        if not self.store.exists(url):
            return []
        done = start // self.steps_per_epoch
        epochs: list[dict[str, float]] = json.loads(self.store.read_text(url)).get("history", [])
        return [h for h in epochs if h.get("epoch", 0) <= done]

    def _write_history(self, history: list[dict[str, float]], start: int) -> None:
        if not self.role.is_chief:
            return
        record = {
            "config": self.cfg.public(),
            "architecture": self.cfg.architecture(self.source.num_classes, self.source.shape[:2]),
            "dataset": {
                "id": self.source.manifest.dataset_id,
                "url": redact(self.source.base),
                "class_names": self.source.class_names,
                "rows": {s: self.source.rows(s) for s in self.source.manifest.splits},
            },
            "job": {
                "workers": self.role.num_workers,
                "replicas": self.replicas,
                "mixed_precision": self.mixed,
                "xla": self.xla,
                "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps,
                "resumed_from_step": start,
            },
            "history": history,
        }
        self.store.write_text(join(self.cfg.out, TRAINING_JSON), json.dumps(record, indent=2) + "\n")

    def _export(self, weights: list[Any]) -> str:
        """A float32, non-distributed copy of the model (same weights) is what gets served."""
        from cifarflow.train import export, model

        serving = model.build(
            self.cfg,
            num_classes=self.source.num_classes,
            mean=self.source.stats.mean,
            std=self.source.stats.std,
            shape=self.source.shape,
        )
        serving.set_weights(weights)
        return export.export(serving, self.source.class_names, self.store, self.cfg.out)

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


def _cause(text: str | None) -> str:
    """The line of a gRPC/collective error that says what happened to the peer."""
    text = text or ""
    for marker in _PEER_GONE:
        if marker in text:
            return marker
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:200] if lines else "no details"


_PEER_GONE = (
    "Connection reset by peer",
    "Connection refused",
    "Socket closed",
    "failed to connect to all addresses",
    "is down",
    "Deadline Exceeded",
)


def _val_text(logs: dict[str, float]) -> str:
    if "val_loss" not in logs:
        return ""
    return f", val_loss {logs['val_loss']:.4f}, val_accuracy {logs['val_accuracy']:.4f}"
