"""The CLI on top: ``--backend k8s`` against the fake API server, ``cifarflow k8s ...`` subcommands."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifarflow.cli import main
from cifarflow.k8s import names
from cifarflow.k8s.client import SPARK_APPLICATION
from cifarflow.train.config import parse_config

from . import scenarios as sc
from .conftest import REPO, Api


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_.value.code or 0), captured.out, captured.err


@pytest.fixture
def cluster_env(api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Api:
    monkeypatch.setenv("KUBECONFIG", str(api.server.kubeconfig(tmp_path / "kubeconfig", "admin-token")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("CIFARFLOW_RUN_ID", raising=False)
    monkeypatch.setenv("CIFARFLOW_K8S_WATCH__WINDOW_S", "0.2")
    monkeypatch.setenv("CIFARFLOW_K8S_WATCH__TIMEOUT_S", "20")
    return api


PREPROCESS = ["preprocess", "--raw", "s3://cifarflow/work/raw", "--out", "s3://cifarflow/work/datasets"]


def test_preprocess_backend_k8s_prints_the_job_and_its_results(
    cluster_env: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_env.cluster.default_scenario = lambda plural, name: sc.spark_success(name, "dataset: 3f2a\n")
    code, out, _ = run([*PREPROCESS, "--backend", "k8s"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("job: SparkApplication/cifarflow-preprocess-") and lines[0].endswith(
        "(namespace cifarflow)"
    )
    assert lines[1:] == ["state: COMPLETED", "dataset: 3f2a"]
    # The same command again re-attaches to (here: reuses) the same job.
    code, again, _ = run([*PREPROCESS, "--backend", "k8s"], capsys)
    assert code == 0 and again.splitlines()[0] == lines[0] and "state: COMPLETED (reused)" in again
    assert len(cluster_env.cluster.created("sparkapplications")) == 1


def test_preprocess_backend_k8s_passes_the_image_folder_options_to_the_spark_application(
    cluster_env: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    """--image-size and --strict reach the driver's `cifarflow preprocess` unchanged, and name their own job
    (the same raw data at another size is another dataset)."""
    cluster_env.cluster.default_scenario = lambda plural, name: sc.spark_success(name, "dataset: 3f2a\n")
    kube = cluster_env.kube()
    apps = []
    for extra in (["--image-size", "48", "--strict"], ["--image-size", "64"], []):
        code, out, err = run([*PREPROCESS, "--backend", "k8s", *extra], capsys)
        assert code == 0, err
        name = out.splitlines()[0].split("/")[1].split()[0]
        app = kube.get(SPARK_APPLICATION, name)
        assert app is not None
        apps.append(app)
    (strict48, plain64, default) = (app["spec"]["arguments"] for app in apps)
    assert strict48 == [*PREPROCESS, "--val-fraction", "0.1", "--seed", "0", "--image-size", "48", "--strict"]
    assert plain64[-2:] == ["--image-size", "64"] and "--strict" not in plain64
    assert "--image-size" not in default and "--strict" not in default
    assert len({app["metadata"]["name"] for app in apps}) == 3
    assert len(cluster_env.cluster.created("sparkapplications")) == 3


def test_a_failed_job_is_one_error_line_and_exit_2(
    cluster_env: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    log = "error: s3://cifarflow/work/raw has no _ingest.json (fix: run `cifarflow ingest` first)\n"
    cluster_env.cluster.default_scenario = lambda plural, name: sc.spark_driver_failed(name, log)
    code, out, err = run([*PREPROCESS, "--backend", "k8s"], capsys)
    assert code == 2 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: SparkApplication cifarflow-preprocess-")
    assert last.endswith("s3://cifarflow/work/raw has no _ingest.json (fix: run `cifarflow ingest` first)")


def test_no_cluster_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, _, err = run([*PREPROCESS, "--backend", "k8s"], capsys)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: no Kubernetes credentials:")


def test_render_prints_an_overlay(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    code, out, _ = run(["k8s", "render", "--overlay", "minikube"], capsys)
    assert code == 0
    assert "kind: SparkApplication" in out and "kind: TFJob" in out and "image: cifarflow-pipeline" in out


def test_render_an_unknown_overlay(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["k8s", "render", "--overlay", "prod", "--dir", str(REPO / "k8s")], capsys)
    assert code == 2
    assert err.strip() == "error: no overlay named 'prod' for trainer v1 (fix: use one of: gke, minikube)"


def test_generate_check_passes_on_the_committed_tree(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["k8s", "generate", "--check", "--dir", str(REPO / "k8s")], capsys)
    assert (code, out.strip()) == (0, "up to date")


def test_ensure_credentials_creates_once(cluster_env: Api, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["k8s", "ensure-credentials"], capsys)
    assert (code, out.strip()) == (0, "secret: cifarflow/cifarflow-s3 (created)")
    code, out, _ = run(["k8s", "ensure-credentials"], capsys)
    assert (code, out.strip()) == (0, "secret: cifarflow/cifarflow-s3 (exists)")
    data = cluster_env.cluster.secrets[("kubeflow", "cifarflow-s3")]["stringData"]
    assert set(data) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "s3.json"}
    assert data["AWS_SECRET_ACCESS_KEY"] in data["s3.json"]


def test_ensure_bucket_against_a_real_s3_api(s3_server, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    args = ["k8s", "ensure-bucket", "--bucket", "cf-bootstrap-test", "--s3-endpoint", s3_server.endpoint]
    assert run(args, capsys)[:2] == (0, "bucket: cf-bootstrap-test (created)\n")
    assert run(args, capsys)[:2] == (0, "bucket: cf-bootstrap-test (exists)\n")
    s3_server.client().delete_bucket(Bucket="cf-bootstrap-test")


def test_ensure_bucket_gives_up_with_one_line(dead_endpoint: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(
        ["k8s", "ensure-bucket", "--bucket", "b", "--s3-endpoint", dead_endpoint, "--timeout", "1"], capsys
    )
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(f"error: cannot create bucket b at {dead_endpoint}:")


def test_settings_shows_the_effective_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CIFARFLOW_K8S_TRAIN__WORKERS", "5")
    code, out, _ = run(["k8s", "settings"], capsys)
    assert code == 0 and '"workers": 5' in out


def test_train_backend_k8s_forwards_the_options_the_user_set(
    cluster_env: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_env.cluster.default_scenario = lambda plural, name: sc.tf_success(
        name, "model: s3://b/m\nsaved_model: s3://b/m/saved_model\n"
    )
    argv = ["train", "--data", "s3://b/ds/3f2a", "--out", "s3://b/m", "--epochs", "3", "--model", "resnet9"]
    code, out, _ = run([*argv, "--no-evaluate", "--backend", "k8s"], capsys)
    assert code == 0
    assert out.splitlines()[1:] == [
        "state: Succeeded",
        "model: s3://b/m",
        "saved_model: s3://b/m/saved_model",
    ]
    (job,) = [o for k, o in cluster_env.cluster.objects.items() if k[1] == "tfjobs"]
    args = job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["args"]
    assert args == [
        "--data",
        "s3://b/ds/3f2a",
        "--out",
        "s3://b/m",
        "--model",
        "resnet9",
        "--epochs",
        "3",
        "--no-evaluate",
    ]  # TrainConfig's settings that differ from its defaults, in its field order
    # Named by the run (its settings and dataset), as the pipeline's train step names its job: not by the argv.
    cfg = parse_config(
        {"data": argv[2], "out": "s3://b/m", "epochs": 3, "model": "resnet9", "evaluate": False}
    )
    assert job["metadata"]["name"] == names.job_name("train", f"{cfg.run_name('3f2a')}-s3://b/m")


def test_render_trainer_v2_prints_the_trainjob_and_the_runtime(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    code, out, _ = run(["k8s", "render", "--overlay", "gke", "--trainer", "v2"], capsys)
    assert code == 0
    assert "kind: TrainJob" in out and "kind: ClusterTrainingRuntime" in out and "kind: TFJob" not in out


def test_train_backend_k8s_follows_the_trainer_setting(
    cluster_env: Api, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFARFLOW_K8S_TRAINER", "trainjob")
    cluster_env.cluster.default_scenario = lambda plural, name: sc.tj_success(name, "model: s3://b/m\n")
    code, out, _ = run(["train", "--data", "s3://b/ds/3f2a", "--out", "s3://b/m", "--backend", "k8s"], capsys)
    assert code == 0
    assert out.splitlines()[0].startswith("job: TrainJob/cifarflow-train-")
    assert out.splitlines()[1:] == ["state: Complete", "model: s3://b/m"]
    assert [k[1] for k in cluster_env.cluster.objects] == ["trainjobs"]


def test_a_missing_namespace_is_named_not_taken_for_a_missing_crd(
    cluster_env: Api, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFARFLOW_K8S_NAMESPACE", "ml-team")
    code, _, err = run(["train", "--data", "s3://b/ds/3f2a", "--out", "s3://b/m", "--backend", "k8s"], capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: namespace ml-team does not exist (fix: ")
    assert "not installed" not in line
