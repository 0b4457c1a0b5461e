"""skaffold.yaml: valid for skaffold v2.24 (schema v4beta14); every built image reaches the deployed objects.

skaffold rewrites an image reference only in kinds it knows (Pod, Deployment, Job, ...) and at the paths
that ``resourceSelector.allow`` lists for other kinds. A reference it does not rewrite would deploy the bare
name, so the cluster would run whatever ``cifarflow-spark:latest`` it happens to have. These tests walk the
rendered manifests the way skaffold does and fail on any such reference.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import jsonpatch
import jsonschema
import pytest
import yaml

from .helpers import REPO, SHARED, tool

SCHEMA = SHARED / "schemas" / "skaffold-v4beta14.json"
CONFIG = yaml.safe_load((REPO / "skaffold.yaml").read_text())
ARTIFACTS = {a["image"]: a for a in CONFIG["build"]["artifacts"]}

# Kinds skaffold rewrites every `image:` field of without being told (its TransformAllowlist, v2.x).
SKAFFOLD_DEFAULT_KINDS = {
    ("", "Pod"),
    ("apps", "Deployment"),
    ("apps", "DaemonSet"),
    ("apps", "ReplicaSet"),
    ("apps", "StatefulSet"),
    ("batch", "Job"),
    ("batch", "CronJob"),
}


def profile(name: str) -> dict[str, Any]:
    (found,) = [p for p in CONFIG["profiles"] if p["name"] == name]
    return found


def overlays() -> list[str]:
    paths = [CONFIG["manifests"]["kustomize"]["paths"]] + [
        p["manifests"]["kustomize"]["paths"] for p in CONFIG["profiles"] if "manifests" in p
    ]
    return sorted({path for group in paths for path in group})


def render(overlay: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [tool("kubectl"), "kustomize", str(REPO / overlay)], check=False, capture_output=True, text=True
    )
    assert proc.returncode == 0, f"kubectl kustomize {overlay} failed: {proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def group_kind(obj: dict[str, Any]) -> tuple[str, str]:
    api = obj["apiVersion"]
    return (api.split("/")[0] if "/" in api else "", obj["kind"])


def allowed_image_paths() -> dict[tuple[str, str], set[str]]:
    out = {}
    for rule in CONFIG["resourceSelector"]["allow"]:
        kind, _, group = rule["groupKind"].partition(".")
        out[(group, kind)] = set(rule.get("image", []))
    return out


def fields(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(navpath, key, value) of every map entry; skaffold's navpath joins keys by dots and skips lists."""
    if isinstance(node, list):
        for item in node:
            yield from fields(item, path)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}.{key}", key, value
            yield from fields(value, f"{path}.{key}")


def unrewritten(obj: dict[str, Any]) -> list[str]:
    """Paths in ``obj`` that name one of our images (a field called ``*image``) but that skaffold would leave
    alone. Other fields may share the name (ServiceAccount cifarflow-trainer) without being images."""
    gk, rules = group_kind(obj), allowed_image_paths()
    missed = []
    for navpath, key, value in fields(obj):
        if (
            not key.lower().endswith("image")
            or not isinstance(value, str)
            or value.split(":")[0] not in ARTIFACTS
        ):
            continue
        if gk in SKAFFOLD_DEFAULT_KINDS and key == "image":
            continue
        if navpath in rules.get(gk, set()) or (".*" in rules.get(gk, set()) and key == "image"):
            continue
        missed.append(f"{obj['kind']}/{obj['metadata']['name']}: {navpath}")
    return missed


@pytest.mark.skipif(
    not SCHEMA.is_file(), reason="../shared/schemas is absent (CI has it beside the checkout)"
)
def test_config_validates_against_the_v4beta14_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(CONFIG)
    assert CONFIG["apiVersion"] == "skaffold/v4beta14"


@pytest.mark.skipif(
    not SCHEMA.is_file(), reason="../shared/schemas is absent (CI has it beside the checkout)"
)
def test_schema_check_catches_a_misspelled_field() -> None:
    schema = json.loads(SCHEMA.read_text())
    broken = copy.deepcopy(CONFIG)
    broken["resourceSelector"]["allow"][0]["images"] = broken["resourceSelector"]["allow"][0].pop("image")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validators.validator_for(schema)(schema).validate(broken)


def test_three_artifacts_one_dockerfile_a_target_each() -> None:
    assert list(ARTIFACTS) == ["cifarflow-spark", "cifarflow-trainer", "cifarflow-pipeline"]
    for image, artifact in ARTIFACTS.items():
        assert artifact["docker"]["dockerfile"] == "images/Dockerfile"
        assert artifact["docker"]["target"] == image.removeprefix("cifarflow-")
        assert (REPO / artifact.get("context", ".") / "images" / "Dockerfile").is_file()


def test_profiles_minikube_builds_locally_and_gke_pushes() -> None:
    minikube, gke = profile("minikube"), profile("gke")
    assert minikube["activation"] == [{"kubeContext": "minikube"}]
    assert minikube["build"]["local"]["push"] is False
    assert minikube["manifests"]["kustomize"]["paths"] == ["k8s/overlays/minikube"]
    assert gke["build"]["local"]["push"] is True
    assert gke["manifests"]["kustomize"]["paths"] == ["k8s/overlays/gke"]


@pytest.mark.parametrize(("profiles", "tf_extras"), [(["minikube"], ""), (["minikube", "gpu"], "and-cuda")])
def test_profile_patches_set_the_trainer_tensorflow_extras(profiles: list[str], tf_extras: str) -> None:
    config = copy.deepcopy(CONFIG)
    for name in profiles:
        config = jsonpatch.apply_patch(config, profile(name).get("patches", []))
    (trainer,) = [a for a in config["build"]["artifacts"] if a["image"] == "cifarflow-trainer"]
    assert trainer["docker"]["buildArgs"] == {"TF_EXTRAS": tf_extras}
    assert "ARG TF_EXTRAS=" in (REPO / "images" / "Dockerfile").read_text()


@pytest.mark.parametrize("overlay", overlays())
def test_every_artifact_is_used_by_the_rendered_manifests(overlay: str) -> None:
    text = yaml.safe_dump_all(render(overlay))
    for image in ARTIFACTS:
        assert f"image: {image}\n" in text, f"{image} is built but no object in {overlay} runs it"


@pytest.mark.parametrize("overlay", overlays())
def test_skaffold_rewrites_every_reference_to_a_built_image(overlay: str) -> None:
    missed = [path for obj in render(overlay) for path in unrewritten(obj)]
    assert not missed, (
        "skaffold would deploy these untagged (add them to resourceSelector.allow):\n" + "\n".join(missed)
    )


def test_resource_selector_covers_what_the_launchers_build() -> None:
    """The builders can add replicas (a Chief) that the committed manifests do not show."""
    from cifarflow.k8s import generate, tfjob

    settings = generate.oneshot_settings()
    settings = settings.model_copy(update={"train": settings.train.model_copy(update={"chief": True})})
    job = tfjob.build(settings, name="t", args=["--data", "d", "--out", "o"])
    assert "Chief" in job["spec"]["tfReplicaSpecs"]
    objs = [job, *generate.oneshot_manifests().values()]
    assert any(o["kind"] == "SparkApplication" for o in objs)
    assert not [path for obj in objs for path in unrewritten(obj)]


def test_the_walk_finds_a_reference_skaffold_would_miss() -> None:
    data = {"SPARK_IMAGE": "cifarflow-spark", "SERVICE_ACCOUNT": "cifarflow-trainer"}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": data}
    assert unrewritten(config_map) == ["ConfigMap/x: .data.SPARK_IMAGE"]
