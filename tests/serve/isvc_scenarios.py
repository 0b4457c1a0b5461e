"""What KServe's controller does to an InferenceService, played by the fake API server (tests/k8s/fakeapi.py)."""

from __future__ import annotations

from typing import Any

from k8s.fakeapi import FakeCluster, Key, Step, now

Obj = dict[str, Any]


def _conditions(ready: bool, reason: str = "") -> list[Obj]:
    status = "True" if ready else "False"
    return [
        {"type": t, "status": status, "lastTransitionTime": now(), **({"reason": reason} if reason else {})}
        for t in ("PredictorReady", "Ready")
    ]


def _set(cluster: FakeCluster, key: Key, status: Obj) -> None:
    generation = cluster.objects[key]["metadata"].get("generation", 1)
    assert cluster.update_status(key, {"observedGeneration": generation, **status}), cluster.rejected_status


def ready(name: str, delay: float = 0.2) -> list[Step]:
    url = f"http://{name}-cifarflow.example.com"
    return [
        (0.05, lambda c, k: _set(c, k, {"conditions": _conditions(False, "RevisionMissing")})),
        (delay, lambda c, k: _set(c, k, {"conditions": _conditions(True), "url": url})),
    ]


def load_failed(message: str) -> list[Step]:
    failure = {"reason": "ModelLoadFailed", "message": message}
    status = {"conditions": _conditions(False, "RevisionFailed"), "modelStatus": {"lastFailureInfo": failure}}
    return [(0.1, lambda c, k: _set(c, k, status))]


def never_ready() -> list[Step]:
    return [(0.05, lambda c, k: _set(c, k, {"conditions": _conditions(False, "RevisionMissing")}))]


def pod(name: str, container: str, state: Obj, log: str | None = None, init: bool = False) -> Step:
    """A predictor pod whose ``container`` is in ``state`` (waiting/terminated)."""

    def act(c: FakeCluster, k: Key) -> None:
        statuses = [
            {
                "name": container,
                "image": "img",
                "imageID": "",
                "ready": False,
                "restartCount": 1,
                "state": state,
            }
        ]
        body = {
            "metadata": {
                "name": f"{name}-predictor-abc",
                "labels": {"serving.kserve.io/inferenceservice": name},
            },
            "status": {
                "phase": "Pending",
                ("initContainerStatuses" if init else "containerStatuses"): statuses,
            },
        }
        c.set_pod(k[2], body, owner=name, log=log)

    return (0.1, act)
