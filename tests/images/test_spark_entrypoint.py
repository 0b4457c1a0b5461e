"""The spark image's entrypoint honours Spark's Kubernetes container contract (and decom.sh its preStop hook).

Run on the host against stand-ins for spark-submit and java that print the command they were given, so each
mode's exact command line is checked without a cluster; tests/images/test_containers.py runs the real one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .helpers import REPO

ENTRYPOINT = REPO / "images" / "spark" / "entrypoint.sh"
DECOM = REPO / "images" / "spark" / "decom.sh"
BACKEND = "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend"

EXECUTOR_ENV = {
    "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@10.0.0.7:7078",
    "SPARK_EXECUTOR_ID": "3",
    "SPARK_EXECUTOR_CORES": "2",
    "SPARK_EXECUTOR_MEMORY": "1024m",
    "SPARK_APPLICATION_ID": "spark-1a2b",
    "SPARK_EXECUTOR_POD_IP": "10.0.0.9",
    "SPARK_EXECUTOR_POD_NAME": "preprocess-exec-3",
    "SPARK_RESOURCE_PROFILE_ID": "0",
}


def echo_tool(path: Path) -> None:
    """A stand-in binary that prints its name and then each argument on a line of its own."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho {path.name}\nfor a in "$@"; do echo "$a"; done\n')
    path.chmod(0o755)


@pytest.fixture
def homes(tmp_path: Path) -> dict[str, str]:
    spark, java = tmp_path / "spark", tmp_path / "java"
    echo_tool(spark / "bin" / "spark-submit")
    echo_tool(java / "bin" / "java")
    return {"PATH": os.environ["PATH"], "SPARK_HOME": str(spark), "JAVA_HOME": str(java)}


def entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), *args], env=env, check=False, capture_output=True, text=True, timeout=30
    )


DRIVER_ARGS = [
    "--properties-file",
    "/opt/spark/conf/spark.properties",
    "--class",
    "org.apache.spark.deploy.PythonRunner",
    "local:///opt/cifarflow/main.py",
    "preprocess",
    "--raw",
    "s3://bucket/raw",
]


def test_driver_is_spark_submit_in_client_mode_bound_to_the_pod_ip(homes: dict[str, str]) -> None:
    proc = entrypoint(homes | {"SPARK_DRIVER_BIND_ADDRESS": "10.0.0.7"}, "driver", *DRIVER_ARGS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "spark-submit",
        "--deploy-mode",
        "client",
        "--conf",
        "spark.driver.bindAddress=10.0.0.7",
        *DRIVER_ARGS,
    ]


def test_driver_without_a_bind_address_lets_spark_choose(homes: dict[str, str]) -> None:
    proc = entrypoint(homes, "driver", "--master", "local[2]", "app.py")
    assert proc.stdout.splitlines() == [
        "spark-submit",
        "--deploy-mode",
        "client",
        "--master",
        "local[2]",
        "app.py",
    ]


def test_executor_is_the_kubernetes_executor_backend_configured_from_the_environment(
    homes: dict[str, str],
) -> None:
    opts = {
        "SPARK_JAVA_OPT_0": "-Dspark.a=1",
        "SPARK_JAVA_OPT_10": "-Dspark.c=3",
        "SPARK_JAVA_OPT_2": "-Dspark.b=2",
    }
    proc = entrypoint(homes | EXECUTOR_ENV | opts | {"SPARK_CONF_DIR": "/opt/spark/conf"}, "executor")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "java",
        # Numeric order: _10 after _2, because later options override earlier ones.
        "-Dspark.a=1",
        "-Dspark.b=2",
        "-Dspark.c=3",
        "-Xms1024m",
        "-Xmx1024m",
        "-cp",
        f"/opt/spark/conf:{homes['SPARK_HOME']}/jars/*",
        BACKEND,
        "--driver-url",
        "spark://CoarseGrainedScheduler@10.0.0.7:7078",
        "--executor-id",
        "3",
        "--cores",
        "2",
        "--app-id",
        "spark-1a2b",
        "--hostname",
        "10.0.0.9",
        "--resourceProfileId",
        "0",
        "--podName",
        "preprocess-exec-3",
    ]


def test_executor_classpath_takes_hadoop_conf_and_extra_entries(homes: dict[str, str]) -> None:
    extra = {"HADOOP_CONF_DIR": "/etc/hadoop", "SPARK_EXTRA_CLASSPATH": "/opt/extra/*"}
    lines = entrypoint(homes | EXECUTOR_ENV | extra, "executor").stdout.splitlines()
    classpath = lines[lines.index("-cp") + 1]
    assert classpath == f"/etc/hadoop:{homes['SPARK_HOME']}/conf:{homes['SPARK_HOME']}/jars/*:/opt/extra/*"


def test_executor_started_by_hand_names_what_is_missing(homes: dict[str, str]) -> None:
    env = homes | {
        k: v for k, v in EXECUTOR_ENV.items() if k not in ("SPARK_DRIVER_URL", "SPARK_EXECUTOR_POD_IP")
    }
    proc = entrypoint(env, "executor")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        "error: executor mode is missing SPARK_DRIVER_URL SPARK_EXECUTOR_POD_IP "
        "(fix: start executors through spark-submit on Kubernetes (the driver sets these), not by hand)\n"
    )


def test_other_commands_run_as_given(homes: dict[str, str]) -> None:
    proc = entrypoint(homes, "sh", "-c", "echo hello from $0", "cifarflow")
    assert (proc.returncode, proc.stdout) == (0, "hello from cifarflow\n")


def test_no_command_is_an_error(homes: dict[str, str]) -> None:
    proc = entrypoint(homes)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: no command given (fix: ")


def test_decom_asks_the_executor_jvm_to_decommission_and_waits_for_it() -> None:
    # A process that looks like an executor JVM; SIGPWR's default action ends it, as Spark's handler would.
    fake = subprocess.Popen(["bash", "-c", f"exec -a 'java {BACKEND}' sleep 60"])
    try:
        time.sleep(0.2)
        started = time.monotonic()
        proc = subprocess.run([str(DECOM)], check=False, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert f"(pid {fake.pid})" in proc.stderr
        assert fake.wait(timeout=5) == -signal.SIGPWR
        assert time.monotonic() - started < 10
    finally:
        fake.kill()
