"""What each cifarflow identity does through the Kubernetes API, for the Roles in ``k8s/`` and their tests.

The launcher's and the bootstrap's calls are recorded by the tests against a fake API server; the Spark
driver's calls happen inside Spark, so they are listed here from Spark 4's Kubernetes backend, with where each
one is made. ``tests/k8s/test_rbac.py`` checks the Roles grant exactly these.
"""

from __future__ import annotations

from typing import NamedTuple


class Call(NamedTuple):
    verb: str
    group: str
    resource: str
    why: str


SPARK_DRIVER_CALLS: tuple[Call, ...] = (
    Call("get", "", "pods", "ExecutorPodsAllocator reads its own driver pod (owner of the executors)"),
    Call("create", "", "pods", "ExecutorPodsAllocator creates executor pods"),
    Call(
        "list", "", "pods", "ExecutorPodsPollingSnapshotSource polls executor pods; kills list running ones"
    ),
    Call("watch", "", "pods", "ExecutorPodsWatchSnapshotSource watches executor pods"),
    Call("patch", "", "pods", "KubernetesDriverEndpoint labels each executor with its id (pods().edit)"),
    Call("delete", "", "pods", "ExecutorPodsLifecycleManager removes finished or lost executors by name"),
    Call("deletecollection", "", "pods", "scheduler backend stop() / kill deletes executors by label"),
    Call("create", "", "configmaps", "setUpExecutorConfigMap: the executors' spark conf"),
    Call("deletecollection", "", "configmaps", "stop() deletes the executor ConfigMap by label"),
    Call(
        "deletecollection", "", "services", "stop() deletes the driver Service by label (deleteOnTermination)"
    ),
)
# Not granted on purpose: stop() also deletes PersistentVolumeClaims labelled with the app id. cifarflow's
# jobs
# use no PVCs, and a driver able to delete PVCs could delete the store's; Spark logs the 403 and carries on.


def triples(calls: tuple[Call, ...]) -> set[tuple[str, str, str]]:
    return {(c.verb, c.group, c.resource) for c in calls}
