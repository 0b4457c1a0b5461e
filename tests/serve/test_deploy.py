"""`cifarflow deploy` against the fake Kubernetes API server: the InferenceService validates against KServe's
v0.20 CRD; create, update, no-op, Ready, failures in one line, timeout, RBAC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cifarflow.k8s import deploy as dp
from cifarflow.k8s import inferenceservice as isvc
from cifarflow.k8s.settings import WatchSettings
from k8s.conftest import CRDS, FAST, Api, needs_crds
from k8s.fakeapi import load_crds

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
    from cifarflow.storage import Store

    model = tmp_path / "model"
    (model / "saved_model" / "variables").mkdir(parents=True)
    (model / "saved_model" / "saved_model.pb").write_bytes(b"pb")
    (model / "saved_model" / "variables" / "variables.index").write_bytes(b"ix")
    target = dp.publish_for_tfserving(Store(), str(model))
    assert (model / "tfserving" / "1" / "saved_model.pb").read_bytes() == b"pb"
    assert (model / "tfserving" / "1" / "variables" / "variables.index").is_file()
    assert target.endswith("tfserving/1")
