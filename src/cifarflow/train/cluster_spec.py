"""``TF_CONFIG`` for a pod of cifarflow's Kubeflow Trainer v2 runtime, derived from what JobSet provides.

A TFJob's operator injects ``TF_CONFIG``; Trainer v2 has no TensorFlow plugin, so cifarflow's
ClusterTrainingRuntime (``cifarflow.k8s.trainjob``) runs one Indexed Job of N pods and the container works the
cluster out itself from:

- ``JOB_COMPLETION_INDEX`` (the Job controller): this pod's index, 0..N-1 = its TF task index;
- ``JOBSET_NAME``, ``JOBSET_REPLICATED_JOB``, ``JOBSET_JOB_INDEX`` (the pod's JobSet labels, through the downward
  API): with them every pod's stable host name, ``<jobset>-<replicatedjob>-<jobindex>-<podindex>.<subdomain>``
  (JobSet's headless Service; its subdomain is the JobSet's name unless ``JOBSET_SUBDOMAIN`` says otherwise);
- ``CIFARFLOW_TF_NUM_WORKERS`` (the TrainJob, = ``numNodes``) and ``CIFARFLOW_TF_PORT`` (the runtime).

The result is the Worker-only cluster spec a TFJob without a Chief gets, so MultiWorkerMirroredStrategy, the
worker-0-is-chief rule, checkpoints and resume behave exactly as under TFJob.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from cifarflow.errors import InputError

JOBSET_ENV = ("JOBSET_NAME", "JOBSET_REPLICATED_JOB", "JOB_COMPLETION_INDEX", "CIFARFLOW_TF_NUM_WORKERS")
DEFAULT_PORT = 2222


def member_address(host: str, port: int) -> str:
    """How a member is dialled: its DNS name in the cluster (tests map names to local ports here)."""
    return f"{host}:{port}"


def hosts(jobset: str, replicated_job: str, job_index: int, count: int, subdomain: str) -> list[str]:
    """The pods' host names as JobSet assigns them (``enableDNSHostnames``), in task order."""
    return [f"{jobset}-{replicated_job}-{job_index}-{i}.{subdomain}" for i in range(count)]


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name, "" if default is None else str(default))
    try:
        return int(raw)
    except ValueError:
        raise InputError(
            f"{name}={raw!r} is not an integer",
            "run under cifarflow's ClusterTrainingRuntime (cifarflow-tensorflow), which sets it",
        ) from None


def tf_config_from_jobset(env: Mapping[str, str]) -> str | None:
    """The TF_CONFIG JSON for this pod, or None when the environment is not a JobSet pod of the runtime."""
    if not all(env.get(name) for name in JOBSET_ENV):
        return None
    count = _int(env, "CIFARFLOW_TF_NUM_WORKERS")
    index = _int(env, "JOB_COMPLETION_INDEX")
    if not 0 <= index < count:
        raise InputError(
            f"JOB_COMPLETION_INDEX {index} is outside the job's {count} nodes (CIFARFLOW_TF_NUM_WORKERS)",
            "keep the TrainJob's trainer.numNodes and its CIFARFLOW_TF_NUM_WORKERS env equal",
        )
    jobset = env["JOBSET_NAME"]
    port = _int(env, "CIFARFLOW_TF_PORT", DEFAULT_PORT)
    names = hosts(
        jobset,
        env["JOBSET_REPLICATED_JOB"],
        _int(env, "JOBSET_JOB_INDEX", 0),
        count,
        env.get("JOBSET_SUBDOMAIN") or jobset,
    )
    cluster = {"worker": [member_address(host, port) for host in names]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def resolve(env: Mapping[str, str]) -> Mapping[str, str]:
    """``env`` with TF_CONFIG derived from JobSet when it has none. For the process environment it is also
    exported, because MultiWorkerMirroredStrategy reads TF_CONFIG from there."""
    if env.get("TF_CONFIG", "").strip():
        return env
    derived = tf_config_from_jobset(env)
    if derived is None:
        return env
    if env is os.environ:
        os.environ["TF_CONFIG"] = derived
    return {**env, "TF_CONFIG": derived}
