"""Smoke runs of the built images, the way a cluster runs them. Marker ``docker``: `make images-test` runs
these after building the images; the unit suite deselects them.

Every container runs as the pods do: uid 10001, read-only root filesystem with a scratch /tmp, no
capabilities, no network. One small CIFAR-format dataset flows through all three images: the spark image
generates, ingests and preprocesses it in `driver` mode with a local master, the pipeline image runs KFP
components on it exactly as KFP's launcher would, and the trainer image trains one epoch on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cifarflow.data import manifest
from cifarflow.k8s.podspec import RUN_AS
from cifarflow.storage import StorageConfig, Store

from .helpers import IMAGES, REPO

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# Enough train images for the trainer's read-ahead (8 batches of 32) after the validation split.
TRAIN, TEST = 600, 100


@dataclass(frozen=True)
class Docker:
    cli: str
    host: str
    tag: str
    data: Path  # mounted at /data in every container

    def image(self, name: str) -> str:
        return f"cifarflow-{name}:{self.tag}"

    def run(
        self,
        image: str,
        *args: str,
        env: dict[str, str] | None = None,
        entrypoint: str | None = None,
        timeout: float = 600,
    ) -> subprocess.CompletedProcess[str]:
        # No network; `localhost` as the hostname so the JVM can resolve its own name, as a pod's can.
        name = f"cifarflow-smoke-{uuid.uuid4().hex[:8]}"
        cmd = [self.cli, "-H", self.host, "run", "--rm", "--name", name]
        cmd += ["--network", "none", "--hostname", "localhost"]
        # What the pods' securityContext and scratch emptyDir give (cifarflow.k8s.podspec).
        cmd += ["--read-only", "--tmpfs", "/tmp:rw,exec,size=2g", "--cap-drop", "ALL"]
        cmd += ["--security-opt", "no-new-privileges", "--user", f"{RUN_AS}:{RUN_AS}"]
        cmd += ["-v", f"{self.data}:/data"]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        if entrypoint is not None:
            cmd += ["--entrypoint", entrypoint]
        try:
            return subprocess.run(
                [*cmd, self.image(image), *args], check=False, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as exc:
            # The client gave up, the container did not: remove it, then fail with what it printed.
            subprocess.run([self.cli, "-H", self.host, "rm", "-f", name], check=False, capture_output=True)
            output = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(exc.stderr)
            pytest.fail(
                f"{self.image(image)} {' '.join(args)} still running after {timeout:.0f}s:\n{output[-4000:]}"
            )

    def ok(self, image: str, *args: str, **kwargs: Any) -> str:
        proc = self.run(image, *args, **kwargs)
        assert proc.returncode == 0, f"{self.image(image)} {' '.join(args)} failed:\n{proc.stderr[-4000:]}"
        return proc.stdout


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Docker:
    host, cli = os.environ.get("DOCKER_HOST"), os.environ.get("CIFARFLOW_DOCKER", "docker")
    built = os.environ.get("CIFARFLOW_IMAGES", "").split(",")
    missing = [name for name in IMAGES if name not in built]
    if not host or missing:
        why = f"images {', '.join(missing)} were not built by scripts/images-test.sh (run make images-test)"
        if os.environ.get("CIFARFLOW_IMAGES_REQUIRED") == "1":
            pytest.fail(why)
        pytest.skip(why)
    data = tmp_path_factory.mktemp("docker-data")
    data.chmod(0o777)  # the containers' uid writes here
    return Docker(cli=cli, host=host, tag=os.environ.get("CIFARFLOW_IMAGE_TAG", "ci"), data=data)


@pytest.fixture(scope="module")
def dataset(docker: Docker) -> dict[str, str]:
    """A committed dataset made by the spark image: synth and ingest, then the Spark job in `driver` mode."""
    docker.ok(
        "spark", "cifarflow", "synth", "--out", "/data/synth", "--train", str(TRAIN), "--test", str(TEST)
    )
    docker.ok(
        "spark",
        "cifarflow",
        "ingest",
        "--source",
        "/data/synth/cifar-10-python.tar.gz",
        "--dest",
        "/data/work",
    )
    out = docker.ok(
        "spark",
        "driver",
        "--master",
        "local[2]",
        "--conf",
        "spark.driver.host=127.0.0.1",
        "local:///opt/cifarflow/main.py",
        "preprocess",
        "--raw",
        "/data/work/raw",
        "--out",
        "/data/work/datasets",
        env={"SPARK_DRIVER_BIND_ADDRESS": "127.0.0.1"},
    )
    facts = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return {"id": facts["dataset"], "container_url": f"/data/work/datasets/{facts['dataset']}"}


def test_images_run_as_the_pods_uid(docker: Docker) -> None:
    for name in IMAGES:
        user = subprocess.run(
            [docker.cli, "-H", docker.host, "image", "inspect", "-f", "{{.Config.User}}", docker.image(name)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert user == str(RUN_AS)
    assert docker.ok("trainer", "-un", entrypoint="id").strip() == "cifarflow"


def test_spark_image_runs_the_spark_pyspark_was_built_for(docker: Docker) -> None:
    pinned = next(
        line.split("==")[1]
        for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines()
        if line.startswith("pyspark==")
    )
    versions = docker.run("spark", "spark-submit", "--version")
    assert f"version {pinned}" in versions.stderr + versions.stdout
    assert docker.ok("spark", "python", "-c", "import pyspark; print(pyspark.__version__)").strip() == pinned
    java = docker.run("spark", "java", "-version")
    assert 'version "17.' in java.stderr


def test_spark_driver_mode_preprocesses_a_dataset(docker: Docker, dataset: dict[str, str]) -> None:
    store = Store(StorageConfig())
    found, _ = manifest.load(store, str(docker.data / "work" / "datasets" / dataset["id"]))
    assert found.dataset_id == dataset["id"]
    rows = {split: info.rows for split, info in found.splits.items()}
    assert rows["test"] == TEST
    assert rows["train"] + rows["val"] <= TRAIN and rows["val"] > 0


def test_spark_executor_mode_outside_a_cluster_fails_clearly(docker: Docker) -> None:
    proc = docker.run("spark", "executor")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: executor mode is missing SPARK_DRIVER_URL")


def test_pipeline_image_compiles_the_committed_pipeline(docker: Docker) -> None:
    compiled = docker.ok(
        "pipeline", "sh", "-c", "cifarflow pipeline compile --out /tmp/p.yaml >&2 && cat /tmp/p.yaml"
    )
    assert compiled == (REPO / "pipelines" / "compiled" / "cifar10_pipeline.yaml").read_text()


def run_component(docker: Docker, task: str, params: dict[str, Any]) -> str:
    """Run one component of the compiled pipeline in the pipeline image with KFP's own command line, as KFP's
    launcher does: ``{{$}}`` becomes the executor input, outputs come back through the output files."""
    # The first document is the pipeline spec; the second, kfp-kubernetes' platform spec.
    ir = next(yaml.safe_load_all((REPO / "pipelines" / "compiled" / "cifar10_pipeline.yaml").read_text()))
    container = ir["deploymentSpec"]["executors"][f"exec-{task}"]["container"]
    executor_input = {
        "inputs": {"parameterValues": params},
        "outputs": {
            "parameters": {"Output": {"outputFile": f"/data/kfp/{task}/Output"}},
            "outputFile": f"/data/kfp/{task}/executor_output.json",
        },
    }
    args = [json.dumps(executor_input) if arg == "{{$}}" else arg for arg in container["args"]]
    command = container["command"]
    docker.ok("pipeline", *command[1:], *args, entrypoint=command[0])
    output = json.loads((docker.data / "kfp" / task / "executor_output.json").read_text())
    return str(output["parameterValues"]["Output"])


def test_pipeline_image_runs_components_as_kfp_does(docker: Docker, dataset: dict[str, str]) -> None:
    raw_url = run_component(
        docker,
        "ingest",
        {"source": "/data/synth/cifar-10-python.tar.gz", "workdir": "/data/work", "s3_endpoint": ""},
    )
    assert raw_url.rstrip("/").endswith("/data/work/raw")
    planned = run_component(
        docker,
        "plan",
        {"raw_url": raw_url, "val_fraction": 0.1, "seed": 0, "image_size": 0, "s3_endpoint": ""},
    )
    # The pipeline names the dataset before Spark runs; it must be the one the Spark image wrote.
    assert planned == dataset["id"]


@pytest.fixture(scope="module")
def model(docker: Docker, dataset: dict[str, str]) -> str:
    """One epoch in the trainer image: the SavedModel the serving test loads."""
    docker.ok(
        "trainer",
        *("--data", dataset["container_url"], "--out", "/data/model", "--epochs", "1", "--batch-size", "32"),
        timeout=300,
    )
    return "/data/model"


def test_trainer_trains_one_epoch(docker: Docker, model: str) -> None:
    assert (docker.data / "model" / "saved_model" / "saved_model.pb").is_file()
    metrics = json.loads((docker.data / "model" / "metrics.json").read_text())
    assert metrics["test"]["images"] == TEST
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0


# Inside the container (no network): wait for the server, then one V2 inference request over loopback.
CLIENT = """
import json, sys, time, urllib.request
base = "http://127.0.0.1:8080"
for _ in range(240):
    try:
        urllib.request.urlopen(base + "/v2/health/ready", timeout=1)
        break
    except OSError:
        time.sleep(0.5)
meta = json.load(urllib.request.urlopen(base + "/v2/models/cifarflow"))
n, h, w = 2, *meta["inputs"][0]["shape"][1:3]
body = {"inputs": [{"name": meta["inputs"][0]["name"], "datatype": "UINT8", "shape": [n, h, w, 3],
                    "data": [0] * (n * h * w * 3)}]}
request = urllib.request.Request(base + "/v2/models/cifarflow/infer", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
print(json.dumps(json.load(urllib.request.urlopen(request, timeout=60))))
"""


def test_pipeline_image_serves_the_model_over_the_v2_protocol(docker: Docker, model: str) -> None:
    """The image deploy's custom predictor runs: `cifarflow serve` answers a V2 inference request."""
    script = f"cifarflow serve --model {model} --port 8080 & pid=$!; python -c '{CLIENT}'; rc=$?; kill $pid; exit $rc"
    reply = json.loads(docker.ok("pipeline", "sh", "-c", script, timeout=300).strip().splitlines()[-1])
    outputs = {output["name"]: output for output in reply["outputs"]}
    assert any(output["datatype"] == "FP32" and output["shape"][0] == 2 for output in outputs.values())
