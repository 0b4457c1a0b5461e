"""The SparkApplication and TFJob builders: valid for the real CRDs, hardened, no inline credentials."""

from __future__ import annotations

import re
import typing
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from cifarflow.config import PreprocessConfig
from cifarflow.errors import InputError
from cifarflow.k8s import names, spark_app, tfjob
from cifarflow.k8s.settings import K8sSettings, StorageSettings, Toleration
from cifarflow.k8s.watch import cause_from_log, outputs_from_log, spark_status, tfjob_status

from .conftest import CRDS, needs_crds

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
VARIANTS = {
    "defaults": K8sSettings(),
    "gke": K8sSettings(
        storage=StorageSettings(s3_endpoint=None, credentials_secret=None),
        train={
            "gpus": 2,
            "chief": True,
            "gpu_node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        },
    ),
    "static-spark": K8sSettings(
        spark={
            "dynamic_allocation": {"enabled": False},
            "decommission": False,
            "executors": 4,
            "node_selector": {"pool": "spark"},
            "tolerations": [Toleration(key="dedicated", operator="Equal", value="spark")],
            "spark_conf": {"spark.sql.shuffle.partitions": "64"},
        }
    ),
}


@cache
def crd_schema(filename: str) -> dict[str, Any]:
    needs_crds()
    crd = yaml.load((CRDS / filename).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@cache
def crd_validator(filename: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft7Validator(crd_schema(filename))


def spark(settings: K8sSettings) -> dict[str, Any]:
    params = PreprocessConfig(partitions=8, val_fraction=0.1, seed=3)
    args = spark_app.preprocess_arguments("s3://b/raw", "s3://b/ds", params)
    return spark_app.build(settings, name="cifarflow-preprocess-x", arguments=args, run_id="r1")


def train(settings: K8sSettings) -> dict[str, Any]:
    return tfjob.build(settings, name="cifarflow-train-x", args=tfjob.train_arguments("s3://b/d", "s3://b/m"))


def containers(job: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod-level spec, container) pairs, for both kinds."""
    if job["kind"] == "SparkApplication":
        return [(job["spec"][role], job["spec"][role]) for role in ("driver", "executor")]
    out = []
    for replica in job["spec"]["tfReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        out += [(pod, c) for c in pod["containers"]]
    return out


# -- schema ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_jobs_validate_against_the_operators_crds(variant: str) -> None:
    crd_validator("sparkoperator.k8s.io_sparkapplications.yaml").validate(spark(VARIANTS[variant]))
    crd_validator("kubeflow.org_tfjobs.yaml").validate(train(VARIANTS[variant]))


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside Optional[...] / List[...] / Dict[str, ...], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


def test_kubeflow_spark_api_models_cover_every_field_of_the_v2_5_2_crd() -> None:
    """Why the builder uses kubeflow-spark-api 2.4.0: nothing in the v2.5.2 CRD is out of its reach."""
    from kubeflow_spark_api.models import SparkV1beta2SparkApplication

    missing: list[str] = []

    def walk(schema: dict[str, Any], model: type[BaseModel], path: str, depth: int) -> None:
        props = (schema.get("items") or schema).get("properties") or {}
        fields = {(f.alias or n): f for n, f in model.model_fields.items()}
        for key, sub in props.items():
            if key not in fields:
                missing.append(f"{path}.{key}")
                continue
            inner = _inner_model(fields[key].annotation)
            if inner is not None and depth < 6:
                walk(sub.get("items") or sub, inner, f"{path}.{key}", depth + 1)

    walk(crd_schema("sparkoperator.k8s.io_sparkapplications.yaml"), SparkV1beta2SparkApplication, "", 0)
    assert missing == []


def test_kubeflow_training_models_cover_the_tfjob_spec() -> None:
    from kubeflow.training.models import KubeflowOrgV1RunPolicy, KubeflowOrgV1TFJobSpec

    spec = crd_schema("kubeflow.org_tfjobs.yaml")["properties"]["spec"]["properties"]
    assert set(spec) <= set(KubeflowOrgV1TFJobSpec.attribute_map.values())
    assert set(spec["runPolicy"]["properties"]) <= set(KubeflowOrgV1RunPolicy.attribute_map.values())


# -- what the jobs ask for ---------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_is_hardened_and_sized(variant: str) -> None:
    for job in (spark(VARIANTS[variant]), train(VARIANTS[variant])):
        for pod, c in containers(job):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {
                "type": "RuntimeDefault"
            }
            assert pod["podSecurityContext" if "podSecurityContext" in pod else "securityContext"][
                "runAsNonRoot"
            ]
            assert {"name": "scratch", "mountPath": "/tmp"} in c["volumeMounts"]
            if job["kind"] == "SparkApplication":
                # Spark turns memory + overhead into the pod's request and limit; cores/coreLimit into CPU.
                assert {"cores", "coreRequest", "coreLimit", "memory", "memoryOverhead"} <= set(c)
            else:
                assert set(c["resources"]["requests"]) >= {"cpu", "memory"}
                assert set(c["resources"]["limits"]) >= {"cpu", "memory"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_credentials_come_from_a_secret_or_not_at_all(variant: str) -> None:
    settings = VARIANTS[variant]
    for job in (spark(settings), train(settings)):
        for _, c in containers(job):
            assert not [e for e in c.get("env", []) if e["name"].startswith("AWS_") and "KEY" in e["name"]]
            refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
            assert refs == (
                [settings.storage.credentials_secret] if settings.storage.credentials_secret else []
            )


@pytest.mark.parametrize(
    "params",
    [
        PreprocessConfig(),
        PreprocessConfig(partitions=8, val_fraction=0.25, seed=3),
        PreprocessConfig(image_size=224, strict=True),
    ],
)
def test_preprocess_arguments_are_what_the_cli_parses_back_to_the_same_config(
    params: PreprocessConfig,
) -> None:
    """Every PreprocessConfig field reaches the driver: its `cifarflow preprocess` arguments, parsed by the CLI
    itself, give the same config (a new field needs no change in the builder)."""
    import typer

    from cifarflow.cli import app

    args = spark_app.preprocess_arguments("s3://b/raw", "s3://b/ds", params)
    command: Any = typer.main.get_command(app).commands[args[0]]  # type: ignore[attr-defined]
    with command.make_context(args[0], args[1:]) as ctx:
        parsed = ctx.params
    assert (parsed["raw"], parsed["out_url"]) == ("s3://b/raw", "s3://b/ds")
    assert PreprocessConfig(**{name: parsed[name] for name in PreprocessConfig.model_fields}) == params


def test_spark_application_settings_that_matter_on_kubernetes() -> None:
    app = spark(K8sSettings())["spec"]
    assert (app["type"], app["mode"], app["mainApplicationFile"]) == (
        "Python",
        "cluster",
        "local:///opt/cifarflow/main.py",
    )
    assert app["arguments"][0] == "preprocess" and "--master" not in app["arguments"]
    assert app["restartPolicy"]["type"] == "OnFailure" and app["restartPolicy"]["onFailureRetries"] == 2
    assert app["dynamicAllocation"]["enabled"] and app["dynamicAllocation"]["shuffleTrackingEnabled"]
    assert app["sparkConf"]["spark.decommission.enabled"] == "true"
    assert app["executor"]["lifecycle"]["preStop"]["exec"]["command"][-1].startswith("kill -s PWR 1")
    assert app["driver"]["serviceAccount"] == "cifarflow-spark-driver"
    assert app["executor"]["serviceAccount"] == "cifarflow-spark-executor"
    static = spark(VARIANTS["static-spark"])["spec"]
    assert "dynamicAllocation" not in static and "spark.decommission.enabled" not in static["sparkConf"]
    assert static["sparkConf"]["spark.sql.shuffle.partitions"] == "64"
    assert static["executor"]["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "spark", "effect": "NoSchedule"}
    ]


def test_tfjob_replicas_gpus_and_run_policy() -> None:
    cpu = train(K8sSettings())["spec"]
    assert list(cpu["tfReplicaSpecs"]) == ["Worker"]
    worker = cpu["tfReplicaSpecs"]["Worker"]
    assert (worker["replicas"], worker["restartPolicy"]) == (2, "ExitCode")
    pod = worker["template"]["spec"]
    assert pod["containers"][0]["name"] == "tensorflow"
    assert pod["containers"][0]["ports"] == [{"name": "tfjob-port", "containerPort": 2222, "protocol": "TCP"}]
    assert pod["automountServiceAccountToken"] is False
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"] and "tolerations" not in pod
    assert cpu["runPolicy"] == {
        "activeDeadlineSeconds": 10800,
        "backoffLimit": 3,
        "cleanPodPolicy": "Running",
        "ttlSecondsAfterFinished": 86400,
    }
    gpu = train(VARIANTS["gke"])["spec"]["tfReplicaSpecs"]
    assert set(gpu) == {"Worker", "Chief"} and gpu["Chief"]["replicas"] == 1
    gpod = gpu["Worker"]["template"]["spec"]
    assert gpod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert gpod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert gpod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


# -- names and settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("run_id", ["run-42", "KFP Run 7f3a/2025-01-01T00:00:00", "x" * 300, "---"])
def test_job_names_are_deterministic_valid_and_short(run_id: str) -> None:
    name = names.job_name("preprocess", run_id)
    assert name == names.job_name("preprocess", run_id)
    assert DNS1123.match(name) and len(name) <= names.MAX_NAME
    assert name != names.job_name("preprocess", run_id + "1")
    assert names.job_name("train", run_id) != name


def test_settings_from_the_environment() -> None:
    env = {
        "CIFARFLOW_K8S_NAMESPACE": "ml",
        "CIFARFLOW_K8S_SPARK__EXECUTORS": "4",
        "CIFARFLOW_K8S_SPARK__EXECUTOR__MEMORY": "3g",
        "CIFARFLOW_K8S_STORAGE__CREDENTIALS_SECRET": "null",
        "CIFARFLOW_K8S_TRAIN__GPU_NODE_SELECTOR": '{"pool": "gpu"}',
        "UNRELATED": "1",
    }
    s = K8sSettings.from_env(env, train={"workers": 3})
    assert (s.namespace, s.spark.executors, s.spark.executor.memory) == ("ml", 4, "3g")
    assert s.storage.credentials_secret is None and s.train.gpu_node_selector == {"pool": "gpu"}
    assert s.train.workers == 3 and s.spark.driver.memory == "1g"


def test_a_bad_setting_is_one_line_naming_the_variable() -> None:
    with pytest.raises(InputError) as err:
        K8sSettings.from_env({"CIFARFLOW_K8S_SPARK__EXECUTOR__MEMORY": "lots"})
    assert err.value.problem.startswith("invalid Kubernetes setting spark.executor.memory:")
    assert err.value.fix == "fix CIFARFLOW_K8S_SPARK__EXECUTOR__MEMORY or the matching option"


# -- reading the operators' status -------------------------------------------------------------------------
def sa(state: str, **status: Any) -> dict[str, Any]:
    return {
        "spec": {"restartPolicy": {"type": "OnFailure", "onSubmissionFailureRetries": 2}},
        "status": {"applicationState": {"state": state}, **status},
    }


@pytest.mark.parametrize(
    ("obj", "phase"),
    [
        ({}, "pending"),
        (sa("SUBMITTED"), "pending"),
        (sa("RUNNING"), "running"),
        (sa("PENDING_RERUN"), "running"),
        (sa("COMPLETED"), "succeeded"),
        (sa("FAILED", driverInfo={"podName": "d"}), "failed"),
        (sa("SUBMISSION_FAILED", submissionAttempts=2), "pending"),  # the operator will retry
        (sa("SUBMISSION_FAILED", submissionAttempts=3), "failed"),  # retries used up
    ],
)
def test_spark_states(obj: dict[str, Any], phase: str) -> None:
    assert spark_status(obj).phase == phase


def test_a_failed_application_that_never_ran_is_a_submission_failure() -> None:
    assert spark_status(sa("FAILED")).submission_failed
    assert not spark_status(
        sa("FAILED", driverInfo={"podName": "d"}, sparkApplicationId="s")
    ).submission_failed


def test_tfjob_conditions() -> None:
    def job(*conds: tuple[str, str]) -> dict[str, Any]:
        return {"status": {"conditions": [{"type": t, "status": s} for t, s in conds]}}

    assert tfjob_status(job()).phase == "pending"
    assert tfjob_status(job(("Created", "True"))).phase == "pending"
    assert tfjob_status(job(("Created", "True"), ("Running", "True"))).phase == "running"
    assert tfjob_status(job(("Running", "False"), ("Restarting", "True"))).state == "Restarting"
    assert tfjob_status(job(("Running", "False"), ("Succeeded", "True"))).phase == "succeeded"
    assert tfjob_status(job(("Running", "False"), ("Failed", "True"))).phase == "failed"


def test_the_cause_of_a_failure_is_read_from_the_log() -> None:
    assert cause_from_log("x\nerror: bad input (fix: do this)\n") == ("bad input", "do this")
    assert cause_from_log("Traceback\n  File 'a'\nKeyError: 'label'\nshutting down\n") == (
        "KeyError: 'label'",
        None,
    )
    marked = (
        "py4j.Py4JJavaError ... CIFARFLOW-ERROR[InputError]image 7 is 3000 bytes|re-ingestCIFARFLOW-ERROR ..."
    )
    assert cause_from_log(marked) == ("image 7 is 3000 bytes", "re-ingest")
    assert cause_from_log("all good\n") is None


def test_results_are_read_from_the_log() -> None:
    text = "INFO noise: x\ndataset: 3f2a\nmanifest: s3://b/3f2a/_manifest.json\nnote: two words\n"
    assert outputs_from_log(text, ("dataset", "manifest", "note")) == {
        "dataset": "3f2a",
        "manifest": "s3://b/3f2a/_manifest.json",
    }
