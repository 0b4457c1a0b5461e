"""Checkpoints in the bucket: written by the chief only, committed by a marker, restored by every worker.

Layout under ``MODEL_URL/checkpoints/``::

    ckpt-000000500/ckpt.index, ckpt.data-00000-of-00001   <- tf.train.Checkpoint files
    latest.json                                           <- written last: the commit

Saving is collective under MultiWorkerMirroredStrategy (every worker must call it), so every worker writes the
checkpoint to a local folder; the chief then uploads its copy through the store (any bucket, no TensorFlow
filesystem plugins) and the others delete theirs. A checkpoint a crash cut short is never listed in
``latest.json``, so a restarted job resumes from the last complete one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cifarflow.errors import ConflictError, InputError
from cifarflow.storage import Store, basename, join, redact

log = logging.getLogger(__name__)

LATEST = "latest.json"
PREFIX = "ckpt"


@dataclass(frozen=True)
class Saved:
    name: str  # ckpt-<step>
    step: int
    epoch: float
    architecture: str  # TrainConfig.fingerprint: checkpoints of another architecture cannot be restored
    batch_size: int  # the global batch fixes what a step is: resuming with another would shift the epochs


@contextlib.contextmanager
def removed_on_failure(store: Store, url: str) -> Iterator[None]:
    """An upload cut short (a full disk, a lost connection) leaves nothing behind at ``url``."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            store.remove(url, recursive=True)
        raise


class BucketCheckpoints:
    """Save and restore a ``tf.train.Checkpoint`` at ``url`` (``MODEL_URL/checkpoints``)."""

    def __init__(
        self,
        store: Store,
        url: str,
        checkpoint: Any,
        *,
        is_chief: bool,
        keep: int,
        architecture: str,
        batch_size: int,
    ) -> None:
        self.store = store
        self.url = url
        self.checkpoint = checkpoint
        self.is_chief = is_chief
        self.keep = keep
        self.architecture = architecture
        self.batch_size = batch_size
        self.local = tempfile.mkdtemp(prefix="cifarflow-ckpt-")

    def close(self) -> None:
        shutil.rmtree(self.local, ignore_errors=True)

    # -- reading ------------------------------------------------------------------------------------------
    def saved_any(self) -> bool:
        return self.store.exists(join(self.url, LATEST))

    def latest(self) -> Saved | None:
        marker = join(self.url, LATEST)
        if not self.store.exists(marker):
            return None
        try:
            saved = Saved(**json.loads(self.store.read_text(marker)))
        except (ValueError, TypeError) as exc:
            raise InputError(
                f"{redact(marker)} is not a cifarflow checkpoint marker",
                "point --out at a fresh folder, or delete the checkpoints/ folder to start over",
            ) from exc
        if saved.architecture != self.architecture:
            raise ConflictError(
                f"{redact(self.url)} holds checkpoints of a different model "
                f"(architecture {saved.architecture}, this run is {self.architecture})",
                "use another --out, or the same --model/--depth/--width as the run that wrote them",
            )
        if saved.batch_size != self.batch_size:
            raise ConflictError(
                f"{redact(self.url)} holds checkpoints of a run with global batch {saved.batch_size}, "
                f"not {self.batch_size}",
                f"pass --batch-size {saved.batch_size} to resume it, or use another --out",
            )
        return saved

    def restore(self) -> Saved | None:
        """Load the latest committed checkpoint into ``checkpoint``; ``None`` when there is none."""
        saved = self.latest()
        if saved is None:
            return None
        folder = os.path.join(self.local, "restore", saved.name)
        os.makedirs(folder, exist_ok=True)
        remote = join(self.url, saved.name)
        for url in self.store.list(remote):
            with self.store.open(url, "rb") as src, open(os.path.join(folder, basename(url)), "wb") as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
        status = self.checkpoint.read(os.path.join(folder, PREFIX))
        status.assert_existing_objects_matched()
        shutil.rmtree(folder, ignore_errors=True)
        log.info(
            "restored %s (step %d, epoch %.2f) from %s", saved.name, saved.step, saved.epoch, redact(remote)
        )
        return saved

    # -- writing ------------------------------------------------------------------------------------------
    def save(self, step: int, epoch: float) -> None:
        """Every worker calls this at the same step; only the chief's copy reaches the bucket."""
        name = f"{PREFIX}-{step:09d}"
        folder = os.path.join(self.local, "save", name)
        self.checkpoint.write(os.path.join(folder, PREFIX))
        try:
            if not self.is_chief:
                return
            remote = join(self.url, name)
            with removed_on_failure(self.store, remote):
                for file in sorted(os.listdir(folder)):
                    self.store.put_file(os.path.join(folder, file), join(remote, file))
            marker = Saved(name, step, epoch, self.architecture, self.batch_size)
            self.store.write_text(join(self.url, LATEST), json.dumps(marker.__dict__, indent=2) + "\n")
            log.info("checkpoint %s saved to %s", name, redact(remote))
            self._prune(keep_name=name)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _prune(self, keep_name: str) -> None:
        names = sorted(basename(u) for u in self.store.list(self.url) if basename(u).startswith(PREFIX + "-"))
        old = [n for n in names if n < keep_name][: max(len(names) - self.keep, 0)]
        for name in old:
            self.store.remove(join(self.url, name), recursive=True)
