"""The SparkApplication (Spark Operator v2.5.2, ``sparkoperator.k8s.io/v1beta2``) that runs ``cifarflow
preprocess``.

Built with ``kubeflow-spark-api`` 2.4.0's pydantic models: they cover every v1beta2 field of the v2.5.2 CRD (a
test walks the CRD schema against the models), so the typed models are used rather than hand-written dicts.

The driver runs the image's ``local:///opt/cifarflow/main.py`` (a two-line ``cifarflow.cli.main()``) with the
``preprocess`` arguments; no ``--master`` is passed, so the driver takes spark-submit's ``k8s://`` master.
Pod-level fields (security contexts, env from Secrets, volumes, tolerations) are applied by the operator's
mutating webhook, which the v2 Helm chart enables by default (``webhook.enable=true``).
"""

from __future__ import annotations

from typing import Any

from kubeflow_spark_api.models import (
    IoK8sApiCoreV1EnvFromSource,
    IoK8sApiCoreV1EnvVar,
    IoK8sApiCoreV1Lifecycle,
    IoK8sApiCoreV1PodSecurityContext,
    IoK8sApiCoreV1SecurityContext,
    IoK8sApiCoreV1Toleration,
    IoK8sApiCoreV1Volume,
    IoK8sApiCoreV1VolumeMount,
    IoK8sApimachineryPkgApisMetaV1ObjectMeta,
    SparkV1beta2DriverSpec,
    SparkV1beta2DynamicAllocation,
    SparkV1beta2ExecutorSpec,
    SparkV1beta2RestartPolicy,
    SparkV1beta2SparkApplication,
    SparkV1beta2SparkApplicationSpec,
)

from cifarflow.config import PreprocessConfig, flag
from cifarflow.k8s import names, podspec
from cifarflow.k8s.settings import K8sSettings, SparkPod

GROUP = "sparkoperator.k8s.io"
VERSION = "v1beta2"
PLURAL = "sparkapplications"
KIND = "SparkApplication"
STEP = "preprocess"
# The operator labels every driver and executor pod with the application's name.
POD_APP_LABEL = "sparkoperator.k8s.io/app-name"
COMPONENT_LABEL = "cifarflow.io/component"


def spark_conf(settings: K8sSettings) -> dict[str, str]:
    """Spark properties that matter on Kubernetes; ``settings.spark.spark_conf`` wins over these."""
    s = settings.spark
    conf = {
        # Executors are tracked with resourceVersion-aware polling: far fewer full LISTs against the API server.
        "spark.kubernetes.executor.enablePollingWithResourceVersion": "true",
        # Spark's own executor pods are removed when the application ends (the driver pod stays for its logs).
        "spark.kubernetes.executor.deleteOnTermination": "true",
        "spark.kubernetes.driver.service.deleteOnTermination": "true",
    }
    if s.decommission:
        # SIGPWR (sent by the executor's preStop hook) migrates shuffle and cached blocks before the pod goes.
        conf |= {
            "spark.decommission.enabled": "true",
            "spark.storage.decommission.enabled": "true",
            "spark.storage.decommission.shuffleBlocks.enabled": "true",
            "spark.storage.decommission.rddBlocks.enabled": "true",
            "spark.executor.decommission.forceKillTimeout": f"{max(s.executor_grace_period_s - 5, 1)}s",
        }
    return conf | s.spark_conf


def _pod_fields(
    settings: K8sSettings, pod: SparkPod, service_account: str, pod_labels: dict[str, str]
) -> dict:
    """What the driver and executor specs share: size, identity, hardening, env, scratch, placement."""
    s = settings.spark
    env = [IoK8sApiCoreV1EnvVar.from_dict(e) for e in podspec.base_env(settings)]
    env_from = [IoK8sApiCoreV1EnvFromSource.from_dict(e) for e in podspec.credentials_env_from(settings)]
    return {
        "cores": pod.cores,
        "core_request": pod.core_request,
        "core_limit": pod.core_limit,
        "memory": pod.memory,
        "memory_overhead": pod.memory_overhead,
        "service_account": service_account,
        "labels": pod_labels,
        "env": env,
        "env_from": env_from or None,
        "volume_mounts": [IoK8sApiCoreV1VolumeMount.from_dict(podspec.scratch_mount())],
        "pod_security_context": IoK8sApiCoreV1PodSecurityContext.from_dict(podspec.pod_security_context()),
        "security_context": IoK8sApiCoreV1SecurityContext.from_dict(podspec.container_security_context()),
        "node_selector": dict(s.node_selector) or None,
        "tolerations": [IoK8sApiCoreV1Toleration.from_dict(t) for t in podspec.tolerations(s.tolerations)]
        or None,
    }


def build(
    settings: K8sSettings,
    *,
    name: str,
    arguments: list[str],
    run_id: str | None = None,
    suspend: bool = False,
    env_from_config_map: str | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The SparkApplication as a JSON-ready dict (what the API server and ``kubectl`` take)."""
    s = settings.spark
    meta_labels = names.labels(STEP, run_id, settings.labels)
    pod_labels = meta_labels | {COMPONENT_LABEL: "spark"}
    driver_fields = _pod_fields(settings, s.driver, settings.service_accounts.spark_driver, pod_labels)
    executor_fields = _pod_fields(settings, s.executor, settings.service_accounts.spark_executor, pod_labels)
    if env_from_config_map:
        # Arguments may say $(VAR): the kubelet expands it from the container's env (here, a ConfigMap).
        for fields in (driver_fields, executor_fields):
            extra = IoK8sApiCoreV1EnvFromSource.from_dict({"configMapRef": {"name": env_from_config_map}})
            fields["env_from"] = [*(fields["env_from"] or []), extra]

    lifecycle = None
    if s.decommission:
        # PID 1 (tini or the JVM, per Spark's container contract) relays SIGPWR: Spark's decommission signal.
        lifecycle = IoK8sApiCoreV1Lifecycle.from_dict(
            {"preStop": {"exec": {"command": ["/bin/sh", "-c", "kill -s PWR 1 || true; sleep 5"]}}}
        )
    da = s.dynamic_allocation
    app = SparkV1beta2SparkApplication(
        api_version=f"{GROUP}/{VERSION}",
        kind=KIND,
        metadata=IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name, namespace=settings.namespace, labels=meta_labels, annotations=annotations or None
        ),
        spec=SparkV1beta2SparkApplicationSpec(
            type="Python",
            mode="cluster",
            spark_version=s.spark_version,
            image=s.image,
            image_pull_policy=settings.image_pull_policy,
            main_application_file=s.main_application_file,
            arguments=arguments,
            spark_conf=spark_conf(settings),
            suspend=suspend or None,
            time_to_live_seconds=s.ttl_seconds,
            restart_policy=SparkV1beta2RestartPolicy(
                type="OnFailure",
                on_failure_retries=s.on_failure_retries,
                on_failure_retry_interval=s.on_failure_retry_interval_s,
                on_submission_failure_retries=s.on_submission_failure_retries,
                on_submission_failure_retry_interval=s.on_submission_failure_retry_interval_s,
            ),
            dynamic_allocation=SparkV1beta2DynamicAllocation(
                enabled=True,
                initial_executors=s.executors,
                min_executors=min(da.min_executors, s.executors),
                max_executors=max(da.max_executors, s.executors),
                shuffle_tracking_enabled=True,
                shuffle_tracking_timeout=da.shuffle_tracking_timeout_ms,
            )
            if da.enabled
            else None,
            volumes=[IoK8sApiCoreV1Volume.from_dict(podspec.scratch_volume(s.scratch_size_limit))],
            driver=SparkV1beta2DriverSpec(**driver_fields),
            executor=SparkV1beta2ExecutorSpec(
                **executor_fields,
                instances=s.executors,
                delete_on_termination=True,
                lifecycle=lifecycle,
                termination_grace_period_seconds=s.executor_grace_period_s,
            ),
        ),
    )
    return app.to_dict()


def preprocess_arguments(raw: str, out: str, params: PreprocessConfig) -> list[str]:
    """``cifarflow preprocess`` arguments (no --master: the driver uses spark-submit's): every field of
    ``params`` that is set, as its option, in the config's order (an unset or false one is the CLI's default)."""
    args = ["preprocess", "--raw", raw, "--out", out]
    for name in PreprocessConfig.model_fields:
        value = getattr(params, name)
        if value is None or value is False:
            continue
        args += [f"--{flag(name)}"] if value is True else [f"--{flag(name)}", str(value)]
    return args
