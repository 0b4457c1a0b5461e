"""Run cifarflow's Spark preprocessing and TensorFlow training on Kubernetes.

The API the KFP components and the CLI use::

    from cifarflow.k8s import K8sSettings, launch_preprocess, launch_train

    settings = K8sSettings.from_env()          # defaults + CIFARFLOW_K8S_* (the cifarflow-defaults ConfigMap)
    pre = launch_preprocess(settings, run_id, raw="s3://b/work/raw", out="s3://b/work/datasets")
    pre.outputs["dataset"]                      # what the driver printed; pre.name is the SparkApplication
    fit = launch_train(settings, run_id, data=f"s3://b/work/datasets/{pre.outputs['dataset']}", out=model_url)

Both submit (or re-attach to the job an earlier attempt with the same run id submitted), watch it to the end
and return a :class:`LaunchResult`, or raise one :class:`K8sJobError` (a ``cifarflow.errors.JobError``) naming
the cause. Submodules: ``settings``, ``spark_app`` / ``tfjob`` (builders), ``client`` (API calls), ``watch``
(status and failure reading), ``launcher``, ``generate`` (k8s/base/jobs), ``bootstrap`` (in-cluster bucket
set-up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cifarflow.k8s.launcher import K8sJobError, LaunchResult, launch_preprocess, launch_train
    from cifarflow.k8s.settings import K8sSettings

__all__ = ["K8sJobError", "K8sSettings", "LaunchResult", "launch_preprocess", "launch_train"]


def __getattr__(name: str) -> Any:
    # Lazy: `cifarflow k8s settings` and the CLI's --help must not pay for the kubernetes client's import.
    if name == "K8sSettings":
        from cifarflow.k8s.settings import K8sSettings

        return K8sSettings
    if name in ("K8sJobError", "LaunchResult", "launch_preprocess", "launch_train"):
        from cifarflow.k8s import launcher

        return getattr(launcher, name)
    raise AttributeError(name)
