"""``cifarflow deploy``: create or update the model's InferenceService, wait until it is Ready, give its URL.

- nothing there -> create; there but built from other inputs (another model, runtime, canary, size) -> merge
  patch; the same spec hash -> no change (an unchanged model is a no-op: nothing is written);
- then wait for ``Ready`` (of the generation just written) within ``watch.timeout_s``, following the object
  with watch windows and looking at the predictor pods between them;
- failures are one line each: the model cannot load (KServe's ``lastFailureInfo``), storage credentials (the
  storage-initializer fails, or the credentials Secret is missing), the image cannot be pulled, the predictor
  exits (its ``error:`` line), the revision is not ready in time.

A pipeline step calls :func:`deploy` with plain arguments and gets a :class:`DeployResult`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cifarflow.errors import JobError
from cifarflow.k8s import inferenceservice as isvc
from cifarflow.k8s import names
from cifarflow.k8s.client import Kube, connect
from cifarflow.k8s.settings import K8sSettings
from cifarflow.k8s.watch import cause_from_log, inspect_pods
from cifarflow.storage import Store, join, translate

log = logging.getLogger(__name__)

KIND = isvc.INFERENCE_SERVICE
STORAGE_INITIALIZER = "storage-initializer"


class DeployError(JobError):
    """``reason``: model, storage, image, config, crash, timeout, deleted."""

    def __init__(self, problem: str, fix: str | None, *, reason: str) -> None:
        super().__init__(problem, fix)
        self.reason = reason


@dataclass(frozen=True)
class DeployResult:
    name: str
    namespace: str
    action: str  # created, updated, unchanged
    url: str
    seconds: float
    body: dict[str, Any]


def deploy(
    model: str,
    *,
    name: str = "cifarflow",
    canary_percent: int | None = None,
    settings: K8sSettings | None = None,
    serving: isvc.ServingSettings | None = None,
    kube: Kube | None = None,
    store: Store | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> DeployResult:
    settings = settings or K8sSettings.from_env()
    serving = serving or isvc.ServingSettings.from_env()
    body = isvc.build(
        settings, serving, name=isvc.service_name(name), model=model, canary_percent=canary_percent
    )
    if serving.runtime == "tensorflow":
        publish_for_tfserving(store or Store(), model)
    kube = kube or Kube(connect(), settings.namespace)
    start = clock()
    obj, action = apply(kube, body)
    ready = wait_ready(kube, obj, settings, clock, start)
    url = str((ready.get("status") or {}).get("url") or "")
    log.info("InferenceService %s %s and Ready at %s", body["metadata"]["name"], action, url)
    return DeployResult(
        body["metadata"]["name"], kube.namespace, action, url, round(clock() - start, 3), ready
    )


def apply(kube: Kube, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Create, patch or leave alone; returns the object as stored and what was done."""
    name = body["metadata"]["name"]
    existing = kube.get(KIND, name)
    if existing is None:
        log.info("creating InferenceService %s in %s", name, kube.namespace)
        return kube.create(KIND, body), "created"
    annotations = (existing.get("metadata") or {}).get("annotations") or {}
    if (
        annotations.get(names.ANNOTATION_SPEC_HASH)
        == body["metadata"]["annotations"][names.ANNOTATION_SPEC_HASH]
    ):
        log.info("InferenceService %s already serves this model with this spec: nothing to change", name)
        return existing, "unchanged"
    log.info("updating InferenceService %s (was %s)", name, annotations.get(isvc.ANNOTATION_MODEL))
    patch = {"metadata": {"annotations": body["metadata"]["annotations"]}, "spec": body["spec"]}
    # A merge patch keeps fields it does not mention: an ended canary must be removed explicitly.
    patch["spec"]["predictor"].setdefault("canaryTrafficPercent", None)
    return kube.patch(KIND, name, patch), "updated"


@dataclass(frozen=True)
class Readiness:
    ready: bool
    state: str
    failure: tuple[str, str] | None = None  # (reason, message)


def readiness(obj: dict[str, Any]) -> Readiness:
    """Ready for the generation last written? Or failed in a way KServe itself reports?"""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    current = observed is None or generation is None or int(observed) >= int(generation)
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = conditions.get("Ready") or {}
    failure = (status.get("modelStatus") or {}).get("lastFailureInfo") or {}
    if current and failure.get("reason"):
        return Readiness(False, "Failed", (str(failure["reason"]), str(failure.get("message") or "")))
    if current and str(ready.get("status")) == "True":
        return Readiness(True, "Ready")
    return Readiness(False, str(ready.get("reason") or "NotReady"))


def wait_ready(
    kube: Kube, obj: dict[str, Any], settings: K8sSettings, clock: Callable[[], float], start: float
) -> dict[str, Any]:
    name = obj["metadata"]["name"]
    w = settings.watch
    deadline = start + w.timeout_s
    while True:
        state = readiness(obj)
        if state.ready:
            return obj
        if state.failure is not None:
            raise _failed(kube, name, *state.failure)
        _check_pods(kube, name, w.log_tail_lines)
        remaining = deadline - clock()
        if remaining <= 0:
            raise DeployError(
                f"InferenceService {name} did not become Ready within {w.timeout_s:.0f}s (last state "
                f"{state.state}): the revision is not ready",
                f"kubectl describe inferenceservice {name} -n {kube.namespace}; raise "
                "CIFARFLOW_K8S_WATCH__TIMEOUT_S if the model is just slow to load",
                reason="timeout",
            )
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        for event, current in kube.watch(KIND, name, rv, min(w.window_s, remaining)):
            if event == "DELETED":
                raise DeployError(
                    f"InferenceService {name} was deleted while cifarflow waited for it",
                    "deploy again; check who deletes it",
                    reason="deleted",
                )
            obj = current
            now = readiness(obj)
            if now.ready or now.failure is not None:
                break
        else:
            fresh = kube.get(KIND, name)
            if fresh is None:
                raise DeployError(f"InferenceService {name} disappeared", "deploy again", reason="deleted")
            obj = fresh


def _check_pods(kube: Kube, name: str, tail: int) -> None:
    """Pods that can never become ready fail the deploy now rather than at the timeout."""
    pods = kube.pods(f"{isvc.POD_LABEL}={name}")
    report = inspect_pods(pods)
    fatal = report.fatal()
    if fatal is not None and fatal.reason == "CreateContainerConfigError":
        raise DeployError(
            f"InferenceService {name}: pod {fatal.pod} cannot start: {fatal.message} (storage credentials)",
            "create the bucket credentials Secret (CIFARFLOW_K8S_STORAGE__CREDENTIALS_SECRET) in the namespace",
            reason="config",
        )
    if fatal is not None:
        raise DeployError(
            f"InferenceService {name}: pod {fatal.pod} cannot pull its image ({fatal.reason}): {fatal.message}",
            "check CIFARFLOW_SERVE_IMAGE; minikube: build with `skaffold run -p minikube`, GKE: push it to a "
            "registry the nodes can read",
            reason="image",
        )
    for problem in report.problems:
        if problem.exit_code in (None, 0):
            continue
        text = kube.pod_log(problem.pod, problem.container, tail)
        cause = cause_from_log(text) if text else None
        what = cause[0] if cause else f"exit code {problem.exit_code}"
        if problem.container == STORAGE_INITIALIZER:
            raise DeployError(
                f"InferenceService {name}: KServe's storage-initializer cannot fetch the model: {what}",
                "check the storage credentials: the service account's Secret and its serving.kserve.io/s3-* "
                "annotations (docs/serving.md)",
                reason="storage",
            )
        raise DeployError(
            f"InferenceService {name}: the predictor in pod {problem.pod} exits: {what}",
            (cause[1] if cause and cause[1] else None) or f"kubectl logs {problem.pod} -n {kube.namespace}",
            reason="crash",
        )


def _failed(kube: Kube, name: str, reason: str, message: str) -> DeployError:
    return DeployError(
        f"InferenceService {name}: the model cannot load ({reason}): {message}",
        f"check that --model points at a SavedModel written by `cifarflow train`; kubectl describe "
        f"inferenceservice {name} -n {kube.namespace}",
        reason="model",
    )


def publish_for_tfserving(store: Store, model: str) -> str:
    """TF Serving loads ``<storageUri>/<version>/saved_model.pb``: copy the SavedModel there as version 1."""
    from cifarflow.train.export import SAVED_MODEL

    target = join(isvc.tfserving_uri(model), "1")
    if not store.exists(join(target, "saved_model.pb")):
        with translate(target):
            fs, src = store.fs(join(model, SAVED_MODEL))
            _, dst = store.fs(target)
            fs.copy(src, dst, recursive=True)
    return target
