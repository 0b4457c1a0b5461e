"""`cifarflow deploy` against the fake Kubernetes API server: the InferenceService validates against KServe's
v0.20 CRD; create, update, no-op, Ready, failures in one line, timeout, RBAC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cifarflow import deployment
from cifarflow.backends import DeployRequest, K8sOptions, get_backend
from cifarflow.config import DeployConfig
from cifarflow.errors import InputError
from cifarflow.k8s import deploy as dp
from cifarflow.k8s import inferenceservice as isvc
from cifarflow.k8s.settings import K8sSettings, WatchSettings
from cifarflow.storage import Store
from k8s.conftest import CRDS, FAST, Api, needs_crds
from k8s.fakeapi import FakeCluster, load_crds

from . import isvc_scenarios as sc

MODEL = "s3://bucket/work/models/ds-1/resnet20"
KEY = ("serving.kserve.io", "inferenceservices", "cifarflow", "cifarflow")
RUNNER = "system:serviceaccount:kubeflow:cifarflow-pipeline-runner"


def run(api: Api, model: str = MODEL, settings: Any = FAST, **kw: Any) -> dp.DeployResult:
    return dp.deploy(model, settings=settings, serving=isvc.ServingSettings(), kube=api.kube(), **kw)


@pytest.mark.parametrize("runtime", ["cifarflow", "tensorflow"])
def test_the_inferenceservice_validates_against_the_kserve_crd(runtime: str) -> None:
    needs_crds()
    crd = load_crds(CRDS)[("serving.kserve.io", "inferenceservices")]
    serving = isvc.ServingSettings(runtime=runtime, gpus=1, service_account="cifarflow-serving")
    body = isvc.build(FAST, serving, name="cifarflow", model=MODEL, canary_percent=10)
    assert not list(crd.validator.iter_errors(body))
    predictor = body["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10 and predictor["securityContext"]["runAsNonRoot"] is True
    if runtime == "cifarflow":
        (container,) = predictor["containers"]
        assert container["args"][:3] == ["serve", "--model", MODEL]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    else:
        assert predictor["model"]["storageUri"] == MODEL + "/tfserving"
        assert predictor["model"]["modelFormat"] == {"name": "tensorflow"}
    assert body["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"


def test_dry_run_prints_yaml_and_touches_nothing(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent")
    result = cli("deploy", "--model", MODEL, "--name", "Champion", "--dry-run")
    assert result.code == 0, result.err
    body = yaml.safe_load(result.out)
    assert body["kind"] == "InferenceService" and body["metadata"]["name"] == "champion"


def test_create_then_no_op_then_update(api: Api) -> None:
    needs_crds()
    api.cluster.scenario("cifarflow", sc.ready("cifarflow"))
    first = run(api)
    assert first.action == "created" and first.url == "http://cifarflow-cifarflow.example.com"
    again = run(api)
    assert again.action == "unchanged"
    assert [r.verb for r in api.cluster.requests if r.resource == "inferenceservices"][-1] == "get"
    updated = run(api, model=MODEL.replace("ds-1", "ds-2"), canary_percent=20)
    assert updated.action == "updated"
    stored = api.cluster.objects[KEY]
    assert stored["metadata"]["generation"] == 2
    assert stored["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert stored["metadata"]["annotations"][isvc.ANNOTATION_MODEL] == MODEL.replace("ds-1", "ds-2")
    run(api, model=MODEL.replace("ds-1", "ds-2"))  # the canary ends: the field goes
    assert "canaryTrafficPercent" not in api.cluster.objects[KEY]["spec"]["predictor"]


def test_a_model_that_cannot_load(api: Api) -> None:
    needs_crds()
    api.cluster.scenario("cifarflow", sc.load_failed("no SavedModel at s3://bucket/x"))
    with pytest.raises(
        dp.DeployError, match=r"the model cannot load \(ModelLoadFailed\): no SavedModel"
    ) as e:
        run(api)
    assert e.value.reason == "model"


def test_image_pull_and_missing_credentials(api: Api) -> None:
    needs_crds()
    waiting = {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}
    api.cluster.scenario("cifarflow", [*sc.never_ready(), sc.pod("cifarflow", "kserve-container", waiting)])
    with pytest.raises(dp.DeployError, match="cannot pull its image") as e:
        run(api)
    assert e.value.reason == "image"


def test_storage_initializer_failure_is_storage_credentials(api: Api) -> None:
    needs_crds()
    term = {"terminated": {"exitCode": 1, "reason": "Error"}}
    log = "botocore.exceptions.ClientError: An error occurred (403) when calling the HeadObject operation\n"
    pod = sc.pod("cifarflow", "storage-initializer", term, log=log, init=True)
    api.cluster.scenario("cifarflow", [*sc.never_ready(), pod])
    with pytest.raises(dp.DeployError, match="storage-initializer cannot fetch the model: botocore") as e:
        run(api)
    assert e.value.reason == "storage"


def test_a_predictor_that_exits_names_its_error_line(api: Api) -> None:
    needs_crds()
    term = {"terminated": {"exitCode": 2, "reason": "Error"}}
    log = "error: credentials rejected for s3://bucket/x (fix: check AWS_ACCESS_KEY_ID)\n"
    api.cluster.scenario("cifarflow", [*sc.never_ready(), sc.pod("cifarflow", "kserve-container", term, log)])
    with pytest.raises(dp.DeployError, match="exits: credentials rejected") as e:
        run(api)
    assert e.value.fix == "check AWS_ACCESS_KEY_ID" and e.value.reason == "crash"


def test_a_revision_that_never_gets_ready_times_out(api: Api) -> None:
    needs_crds()
    api.cluster.scenario("cifarflow", sc.never_ready())
    quick = FAST.model_copy(update={"watch": WatchSettings(timeout_s=1, window_s=0.3)})
    with pytest.raises(
        dp.DeployError, match=r"did not become Ready within 1s \(last state RevisionMissing\)"
    ):
        run(api, settings=quick)


def test_rbac_allows_the_runner_exactly_get_create_patch_watch(api: Api, rendered: Any) -> None:
    needs_crds()
    api.cluster.use_rbac(rendered["minikube"], {"runner": RUNNER})
    api.cluster.scenario("cifarflow", sc.ready("cifarflow", delay=0.05))
    kube = api.kube("runner")
    serving = isvc.ServingSettings()
    dp.deploy(MODEL, settings=FAST, serving=serving, kube=kube)
    dp.deploy(MODEL + "-2", settings=FAST, serving=serving, kube=kube)
    used = {(r.verb, r.resource) for r in api.cluster.requests if r.group == "serving.kserve.io"}
    assert {v for v, _ in used} == {"get", "create", "patch", "watch"}
    with pytest.raises(Exception, match="forbidden: cannot delete inferenceservices"):
        kube.delete(isvc.INFERENCE_SERVICE, "cifarflow")
    other = api.kube("runner", namespace="default")
    with pytest.raises(dp.JobError, match="forbidden"):
        dp.deploy(
            MODEL, settings=FAST.model_copy(update={"namespace": "default"}), serving=serving, kube=other
        )


def test_the_tensorflow_runtime_gets_a_versioned_copy(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "saved_model" / "variables").mkdir(parents=True)
    (model / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    (model / "saved_model" / "variables" / "variables.index").write_bytes(b"ix")
    target = dp.publish_for_tfserving(Store(), str(model))
    assert (model / "tfserving" / "1" / "saved_model.pb").read_bytes() == b"pb"
    assert (model / "tfserving" / "1" / "variables" / "variables.index").is_file()
    assert target.endswith("tfserving/1")


# -- the backend seam: `cifarflow deploy` and the pipeline's deploy go through get_backend ---------------------
def use_fake_cluster(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake API server as the CLI and the backends find a cluster (KUBECONFIG), with short watches."""
    monkeypatch.setenv("KUBECONFIG", str(api.server.kubeconfig(api.tmp / "kubeconfig", FakeCluster.ADMIN)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("CIFARFLOW_K8S_WATCH__WINDOW_S", "0.2")
    monkeypatch.setenv("CIFARFLOW_K8S_WATCH__TIMEOUT_S", "15")


def test_cli_deploy_goes_through_the_k8s_backend(api: Api, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_crds()
    use_fake_cluster(api, monkeypatch)
    api.cluster.scenario("champion", sc.ready("champion"))
    res = cli("deploy", "--model", MODEL, "--name", "champion", "--canary-percent", "30")
    assert res.code == 0, res.err
    assert res.out.splitlines() == [
        "job: InferenceService/champion (namespace cifarflow)",
        "state: Ready",
        "action: created",
        "url: http://champion-cifarflow.example.com",
    ]
    stored = api.cluster.objects[("serving.kserve.io", "inferenceservices", "cifarflow", "champion")]
    assert stored["spec"]["predictor"]["canaryTrafficPercent"] == 30
    again = cli("deploy", "--model", MODEL, "--name", "champion", "--canary-percent", "30")
    assert again.out.splitlines()[1:3] == ["state: Ready (reused)", "action: unchanged"]


def test_the_k8s_backend_reads_serving_settings_from_the_deployment(
    api: Api, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """In a pipeline pod the predictor's CIFARFLOW_SERVE_* come from the cifarflow-defaults ConfigMap, and the
    step's parameters (namespace, watch timeout) win over the deployment's."""
    needs_crds()
    use_fake_cluster(api, monkeypatch)
    defaults = tmp_path / "defaults"
    defaults.mkdir()
    (defaults / "CIFARFLOW_SERVE_IMAGE").write_text("registry/cifarflow-pipeline:v9")
    (defaults / "CIFARFLOW_SERVE_CPU").write_text("2")  # a JSON number for a quantity string
    monkeypatch.setenv(deployment.DEFAULTS_ENV, str(defaults))
    api.cluster.scenario("cifarflow", sc.ready("cifarflow"))
    backend = get_backend("k8s", store=Store(), k8s=K8sOptions(namespace="cifarflow", timeout_s=20))
    result = backend.deploy(DeployRequest(MODEL, DeployConfig()))
    assert result.outputs == {"action": "created", "url": "http://cifarflow-cifarflow.example.com"}
    (container,) = api.cluster.objects[KEY]["spec"]["predictor"]["containers"]
    assert container["image"] == "registry/cifarflow-pipeline:v9"
    assert container["resources"]["requests"]["cpu"] == "2"
    assert "canaryTrafficPercent" not in api.cluster.objects[KEY]["spec"]["predictor"]  # 100: no canary


def test_dry_run_is_the_k8s_backends_and_bad_values_are_one_line(cli: Any) -> None:
    res = cli("deploy", "--model", MODEL, "--backend", "local", "--dry-run")
    assert res.code == 2 and res.error_lines == [
        "error: --dry-run prints an InferenceService, which backend local does not make (fix: add --backend k8s)"
    ]
    res = cli("deploy", "--model", MODEL, "--canary-percent", "101", "--dry-run")
    assert res.code == 2 and res.error_lines == [
        "error: --canary-percent 101 is invalid: input should be less than or equal to 100 "
        "(fix: pass a value within the bound above)"
    ]


def test_deploy_with_the_local_backend_checks_the_model_serves(cli: Any, small_model: str) -> None:
    res = cli("deploy", "--model", small_model, "--backend", "local", "--name", "champion")
    assert res.code == 0, res.err
    assert res.out.splitlines() == [
        "action: checked",
        f"serve: cifarflow serve --model {small_model} --name champion",
    ]


def test_serving_and_kubernetes_settings_load_from_the_environment_the_same_way() -> None:
    """One loader (k8s/settings.from_env): JSON values, numbers for quantity strings, one line per bad value."""
    env = {"CIFARFLOW_SERVE_CPU": "2", "CIFARFLOW_SERVE_GPUS": "1", "CIFARFLOW_K8S_TRAIN__CPU": "2"}
    assert isvc.ServingSettings.from_env(env, runtime=None).cpu == "2"
    assert isvc.ServingSettings.from_env(env).gpus == 1
    assert K8sSettings.from_env(env).train.cpu == "2"
    with pytest.raises(InputError) as serving:
        isvc.ServingSettings.from_env({"CIFARFLOW_SERVE_GPUS": "-1"})
    assert str(serving.value) == (
        "invalid serving setting gpus: Input should be greater than or equal to 0 "
        "(fix: fix CIFARFLOW_SERVE_GPUS or the matching option)"
    )
    with pytest.raises(InputError) as k8s:
        K8sSettings.from_env({"CIFARFLOW_K8S_TRAIN__WORKERS": "0"})
    assert str(k8s.value) == (
        "invalid Kubernetes setting train.workers: Input should be greater than or equal to 1 "
        "(fix: fix CIFARFLOW_K8S_TRAIN__WORKERS or the matching option)"
    )
