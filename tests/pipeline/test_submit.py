"""``cifarflow pipeline submit`` with the real kfp.Client against a fake KFP v2beta1 API server on
127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from cifarflow import __version__
from cifarflow.pipeline import definition

from .conftest import Result
from .fake_kfp import FakeKFP, Server


@pytest.fixture
def kfp_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKFP]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("KF_PIPELINES_TOKEN", "KFP_TOKEN", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    with Server() as state:
        yield state


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return definition.compile_to(tmp_path_factory.mktemp("c") / "p.yaml").read_bytes()


def test_submit_uploads_the_compiled_pipeline_and_starts_a_run_with_the_parameters(
    cli: Callable[..., Result], kfp_server: FakeKFP, compiled: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "t0ken")
    res = cli(
        "pipeline",
        "submit",
        "--host",
        kfp_server.host,
        "--experiment",
        "nightly",
        "--param",
        "epochs=3",
        "--param",
        "source=s3://data/cifar-10-python.tar.gz",
        "--param",
        "val_fraction=0.2",
        "--service-account",
        "pipeline-runner",
    )
    assert res.code == 0, res.err

    # One upload, carrying exactly the compiled pipeline, under the pipeline's name.
    uploads = kfp_server.calls("POST", "/pipelines/upload")
    assert len(uploads) == 1
    assert uploads[0].upload == compiled
    assert uploads[0].query["name"] == "cifarflow-cifar10"
    spec, platform = yaml.safe_load_all(uploads[0].upload)
    assert spec["pipelineInfo"]["name"] == "cifarflow-cifar10"
    assert "kubernetes" in platform["platforms"]

    # The run: that pipeline's version, typed parameters, the workdir as pipeline root, the SA, the
    # experiment.
    (run_req,) = kfp_server.calls("POST", "/runs")
    body = run_req.json
    (pipeline_id,) = kfp_server.pipelines
    assert body["pipeline_version_reference"] == {
        "pipeline_id": pipeline_id,
        "pipeline_version_id": kfp_server.versions[pipeline_id][0]["pipeline_version_id"],
    }
    assert body["runtime_config"]["parameters"] == {
        "epochs": 3,
        "source": "s3://data/cifar-10-python.tar.gz",
        "val_fraction": 0.2,
    }
    assert "pipeline_root" not in body["runtime_config"]  # KFP's configured root
    assert body["service_account"] == "pipeline-runner"
    (experiment,) = kfp_server.experiments.values()
    assert experiment["display_name"] == "nightly"
    assert body["experiment_id"] == experiment["experiment_id"]

    # Every request carried the token; stdout holds the run URL and nothing else.
    assert all(r.headers.get("authorization") == "Bearer t0ken" for r in kfp_server.requests)
    (run_id,) = kfp_server.runs
    assert res.out.splitlines() == [f"run: {kfp_server.host}/#/runs/details/{run_id}"]


def test_resubmitting_the_same_pipeline_uploads_nothing_and_a_change_uploads_a_named_version(
    cli: Callable[..., Result], kfp_server: FakeKFP, compiled: bytes, tmp_path: Path
) -> None:
    assert cli("pipeline", "submit", "--host", kfp_server.host).code == 0
    (pipeline_id,) = kfp_server.pipelines
    # The server already has this content under another name (its first version): simulate a code change by
    # renaming what it has, so the next submit must upload a version named after the content.
    kfp_server.versions[pipeline_id][0]["display_name"] = "older"
    res = cli("pipeline", "submit", "--host", kfp_server.host, "--pipeline-root", "gs://team-bucket/kfp")
    assert res.code == 0, res.err
    (version_upload,) = kfp_server.calls("POST", "/pipelines/upload_version")
    digest = definition.digest(_write(tmp_path / "p.yaml", compiled))
    assert version_upload.query == {"name": f"{__version__}-{digest}", "pipelineid": pipeline_id}
    assert version_upload.upload == compiled

    # A third submit finds that version by name: still one pipeline upload, one version upload.
    assert cli("pipeline", "submit", "--host", kfp_server.host).code == 0
    assert len(kfp_server.calls("POST", "/pipelines/upload")) == 1
    assert len(kfp_server.calls("POST", "/pipelines/upload_version")) == 1
    runs = [r.json for r in kfp_server.calls("POST", "/runs")]
    assert len(runs) == 3
    assert runs[1]["runtime_config"]["pipeline_root"] == "gs://team-bucket/kfp"
    assert (
        runs[2]["pipeline_version_reference"]["pipeline_version_id"]
        == runs[1]["pipeline_version_reference"]["pipeline_version_id"]
    )


def test_unreachable_host_is_one_error_line(cli: Callable[..., Result], kfp_server: FakeKFP) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = cli("pipeline", "submit", "--host", f"http://127.0.0.1:{port}")
    assert res.code == 2
    assert res.err.splitlines() == [
        f"error: cannot reach the KFP API at http://127.0.0.1:{port} (connection refused) (fix: check --host "
        "and that KFP is up (minikube: kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80, then "
        "--host http://localhost:8080))"
    ]
    assert res.out == ""


def test_a_rejected_pipeline_is_one_error_line_with_the_servers_reason(
    cli: Callable[..., Result], kfp_server: FakeKFP
) -> None:
    kfp_server.failures[("POST", "/pipelines/upload")] = (
        400,
        "Failed to create a pipeline and a pipeline version: Invalid input error: pipeline spec is invalid",
    )
    res = cli("pipeline", "submit", "--host", kfp_server.host)
    assert res.code == 2
    assert res.err.splitlines() == [
        f"error: KFP at {kfp_server.host} rejected the pipeline upload (HTTP 400: Failed to create a "
        "pipeline and a pipeline version: Invalid input error: pipeline spec is invalid) (fix: fix what the "
        "server names and submit again)"
    ]
    assert not kfp_server.runs


def test_a_rejected_token_names_the_token_variable(cli: Callable[..., Result], kfp_server: FakeKFP) -> None:
    kfp_server.failures[("GET", "/healthz")] = (401, "Unauthenticated: invalid bearer token")
    res = cli("pipeline", "submit", "--host", kfp_server.host)
    assert res.code == 2
    assert len(res.err.splitlines()) == 1
    assert "HTTP 401: Unauthenticated: invalid bearer token" in res.err
    assert "(fix: set KF_PIPELINES_TOKEN" in res.err


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("epochs=three", "error: --param epochs='three' is not an integer (fix: give epochs an integer)"),
        ("epoch=3", "error: unknown pipeline parameter 'epoch' (fix: use one of: backend, batch_size,"),
        ("epochs", "error: --param 'epochs' is not KEY=VALUE (fix: write it like --param epochs=5)"),
        ("backend=cloud", "error: pipeline parameter backend='cloud' is not one of local, k8s (fix: pass"),
        ("model=vgg", "error: pipeline parameter model='vgg' is not one of resnet20, resnet9 (fix: pass"),
    ],
)
def test_bad_parameters_fail_before_anything_is_sent(
    cli: Callable[..., Result], kfp_server: FakeKFP, param: str, expected: str
) -> None:
    res = cli("pipeline", "submit", "--host", kfp_server.host, "--param", param)
    assert res.code == 2
    assert len(res.error_lines) == 1
    assert res.error_lines[0].startswith(expected)
    assert kfp_server.requests == []


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
