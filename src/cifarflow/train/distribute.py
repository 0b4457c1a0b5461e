"""Who this process is in a training job, and the tf.distribute strategy that follows from it.

A TFJob injects ``TF_CONFIG`` into every replica's pod::

    {"cluster": {"chief": ["job-chief-0:2222"], "worker": ["job-worker-0:2222", "job-worker-1:2222"]},
     "task": {"type": "worker", "index": 1}}

Every Chief and Worker replica takes part in training (MultiWorkerMirroredStrategy: synchronous data
parallelism, one all-reduce of the gradients per step). The chief is ``chief:0`` when the job has a Chief
replica, else ``worker:0``; only the chief writes to the bucket. Without ``TF_CONFIG`` (a laptop,
``cifarflow run``) one process trains on all its local GPUs, or on the CPU.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cifarflow.errors import InputError
from cifarflow.train import cluster_spec

log = logging.getLogger(__name__)

TRAINING_TYPES = ("chief", "worker")


@dataclass(frozen=True)
class Role:
    """This process's place in the job."""

    task_type: str  # "chief", "worker", or "local" without TF_CONFIG
    task_index: int
    num_workers: int  # processes taking part, chief included
    is_chief: bool
    has_chief_replica: bool = False

    @property
    def multi_worker(self) -> bool:
        return self.num_workers > 1

    @property
    def rank(self) -> int:
        """0 for the chief, then the workers in order (as MultiWorkerMirroredStrategy numbers tasks)."""
        if self.task_type in ("chief", "local"):
            return 0
        return self.task_index + (1 if self.has_chief_replica else 0)

    def describe(self) -> str:
        if not self.multi_worker:
            return "single process"
        chief = " (chief)" if self.is_chief else ""
        return f"{self.task_type}:{self.task_index} of {self.num_workers} workers{chief}"


LOCAL = Role("local", 0, 1, True)


def role_from_env(env: Mapping[str, str] | None = None) -> Role:
    """Parse ``TF_CONFIG`` as a TFJob writes it; one clear error for anything this trainer cannot run."""
    # Under Kubeflow Trainer v2 (JobSet) there is no TF_CONFIG: derive it from the pod's index and peers.
    env = cluster_spec.resolve(os.environ if env is None else env)
    raw = env.get("TF_CONFIG", "").strip()
    if not raw:
        return LOCAL
    fix = (
        'set TF_CONFIG like a TFJob does: {"cluster": {"worker": ["host:port", ...]}, '
        '"task": {"type": "worker", "index": 0}}'
    )
    try:
        config: Any = json.loads(raw)
        cluster: dict[str, list[str]] = config.get("cluster") or {}
        task: dict[str, Any] = config.get("task") or {}
        task_type, task_index = str(task.get("type", "")), int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError) as exc:
        raise InputError(f"TF_CONFIG is not valid JSON of the TFJob shape ({exc})", fix) from exc
    if "ps" in cluster:
        raise InputError(
            "TF_CONFIG has parameter servers (ps): this trainer is synchronous all-reduce, it has no ps mode",
            "run the TFJob with Worker (and optionally one Chief) replicas only",
        )
    if task_type not in TRAINING_TYPES:
        raise InputError(
            f"TF_CONFIG task type {task_type!r} does not train", f"use task type chief or worker; {fix}"
        )
    members = cluster.get(task_type) or []
    if not 0 <= task_index < len(members):
        raise InputError(
            f"TF_CONFIG task {task_type}:{task_index} is not in its cluster ({len(members)} {task_type}s)",
            fix,
        )
    if len(cluster.get("chief") or []) > 1:
        raise InputError("TF_CONFIG has more than one chief", "a TFJob has at most one Chief replica")
    has_chief = bool(cluster.get("chief"))
    total = len(cluster.get("chief") or []) + len(cluster.get("worker") or [])
    is_chief = task_type == "chief" or (not has_chief and task_index == 0)
    return Role(task_type, task_index, total, is_chief, has_chief_replica=has_chief)


def make_strategy(role: Role) -> Any:
    """MultiWorkerMirroredStrategy for a multi-worker job, else Mirrored over local GPUs, else the default.

    Must run before any other TensorFlow op: the multi-worker strategy configures the process's runtime.
    """
    import tensorflow as tf

    if role.multi_worker:
        gpus = tf.config.list_physical_devices("GPU")
        # NCCL between GPUs; gRPC ring all-reduce between CPU-only workers.
        impl = (
            tf.distribute.experimental.CommunicationImplementation.NCCL
            if gpus
            else tf.distribute.experimental.CommunicationImplementation.RING
        )
        options = tf.distribute.experimental.CommunicationOptions(implementation=impl)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        log.info(
            "multi-worker training: %s, %d replicas in sync", role.describe(), strategy.num_replicas_in_sync
        )
        return strategy
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
        log.info("training on %d local GPUs", len(gpus))
        return strategy
    if gpus:
        log.info("training on one GPU")
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    log.info("training on the CPU (no GPU found)")
    return tf.distribute.get_strategy()
