"""The handful of Kubernetes API calls cifarflow makes, with errors a user can act on.

Everything the launchers do goes through :class:`Kube`, so the verbs below are the whole of what the pipeline
runner's Role must grant (``k8s/base/rbac.yaml``; a test records the calls against a fake API server and
compares):

- ``get`` / ``create`` / ``watch`` / ``delete`` sparkapplications, tfjobs and trainjobs: re-attach, submit,
  follow status, delete on timeout or before a retry;
- ``list`` pods: spot image pulls and OOM kills, find the driver or chief;
- ``get`` pods/log: the failed driver's or chief's log.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from cifarflow.errors import JobError

log = logging.getLogger(__name__)


class AlreadyExists(JobError):
    """create() found an object of that name (another attempt submitted it first)."""


RBAC_FIX = (
    "grant it in k8s/base/rbac.yaml (Role cifarflow-launcher) and bind it to the service account in use"
)


@dataclass(frozen=True)
class JobKind:
    """A custom resource the launchers manage."""

    group: str
    version: str
    plural: str
    kind: str
    operator: str  # who must be installed for the kind to exist

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


SPARK_APPLICATION = JobKind(
    "sparkoperator.k8s.io", "v1beta2", "sparkapplications", "SparkApplication", "Spark Operator v2.5.2"
)
TFJOB = JobKind("kubeflow.org", "v1", "tfjobs", "TFJob", "Training Operator v1.9.4")
TRAINJOB = JobKind(
    "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob", "Kubeflow Trainer v2.3.0 (with JobSet)"
)


def connect(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """In a pod: the pod's service account. Elsewhere: the kubeconfig (``KUBECONFIG`` or ~/.kube/config)."""
    try:
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            cfg = client.Configuration()
            config.load_incluster_config(client_configuration=cfg)
            return client.ApiClient(cfg)
        # KUBECONFIG is read now, not when the kubernetes package was imported (its default is frozen then).
        return config.new_client_from_config(
            config_file=kubeconfig or os.environ.get("KUBECONFIG") or None, context=context
        )
    except config.ConfigException as exc:
        raise JobError(
            f"no Kubernetes credentials: {exc}",
            "point KUBECONFIG at your cluster (minikube: `minikube update-context`) or run in the cluster",
        ) from None


class Kube:
    """Namespaced custom-object and pod calls with one-line errors."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    # -- custom objects -------------------------------------------------------------------------------------
    def get(self, kind: JobKind, name: str) -> dict[str, Any] | None:
        with self._errors("get", kind):
            try:
                obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                    kind.group, kind.version, self.namespace, kind.plural, name
                )
                return obj
            except ApiException as exc:
                # A 404 naming the object means "no such job"; any other 404 means "no such resource type".
                if exc.status == 404 and _status(exc).get("details", {}).get("name") == name:
                    return None
                raise

    def create(self, kind: JobKind, body: dict[str, Any]) -> dict[str, Any]:
        with self._errors("create", kind):
            try:
                # Strict: a field the CRD does not declare is an error, not silently pruned by the server.
                obj: dict[str, Any] = self.custom.create_namespaced_custom_object(
                    kind.group, kind.version, self.namespace, kind.plural, body, field_validation="Strict"
                )
                return obj
            except ApiException as exc:
                if exc.status == 409:
                    raise AlreadyExists(f"{kind.kind} {body['metadata']['name']} already exists") from None
                raise

    def patch(self, kind: JobKind, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386): the fields given replace the stored ones (``cifarflow deploy``)."""
        with self._errors("patch", kind):
            obj: dict[str, Any] = self.custom.patch_namespaced_custom_object(
                kind.group, kind.version, self.namespace, kind.plural, name, patch
            )
            return obj

    def delete(self, kind: JobKind, name: str) -> None:
        """Delete with its pods (background propagation); already gone is fine."""
        with self._errors("delete", kind):
            try:
                self.custom.delete_namespaced_custom_object(
                    kind.group,
                    kind.version,
                    self.namespace,
                    kind.plural,
                    name,
                    body=client.V1DeleteOptions(propagation_policy="Background"),
                )
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def watch(
        self, kind: JobKind, name: str, resource_version: str | None, timeout_s: float
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event type, object) for one object until ``timeout_s`` passes; the caller loops around it."""
        w = watch.Watch()
        kwargs: dict[str, Any] = {
            "field_selector": f"metadata.name={name}",
            "timeout_seconds": max(int(timeout_s), 1),
            # A dead connection must not hang the launcher past its window.
            "_request_timeout": max(int(timeout_s), 1) + 15,
        }
        if resource_version:
            kwargs["resource_version"] = resource_version
        try:
            for event in w.stream(
                self.custom.list_namespaced_custom_object,
                kind.group,
                kind.version,
                self.namespace,
                kind.plural,
                **kwargs,
            ):
                yield event["type"], event["raw_object"]
        except ApiException as exc:
            if exc.status == 410:  # resourceVersion too old: the caller re-reads the object and watches again
                return
            raise self._error(exc, "watch", kind) from None
        except (urllib3.exceptions.HTTPError, TimeoutError) as exc:
            # A watch that drops is normal (API server restarts, idle timeouts): the caller re-reads and
            # resumes.
            log.debug("watch on %s/%s ended: %s", kind.plural, name, exc)
        finally:
            w.stop()

    # -- pods ------------------------------------------------------------------------------------------------
    def pods(self, selector: str) -> list[client.V1Pod]:
        with self._errors("list", "pods"):
            items: list[client.V1Pod] = self.core.list_namespaced_pod(
                self.namespace, label_selector=selector
            ).items
            return items

    def pod_log(self, pod: str, container: str | None, tail_lines: int) -> str:
        """The container's log tail; '' when it cannot be read (the failure itself is reported elsewhere)."""
        try:
            text: str = self.core.read_namespaced_pod_log(
                pod, self.namespace, container=container, tail_lines=tail_lines
            )
            return text
        except ApiException as exc:
            log.warning("cannot read the log of pod %s: %s", pod, _message(exc))
            return ""
        except urllib3.exceptions.HTTPError as exc:
            log.warning("cannot read the log of pod %s: %s", pod, exc)
            return ""

    # -- secrets (deploy-time bootstrap only) ---------------------------------------------------------------
    def read_secret(self, name: str, namespace: str | None = None) -> dict[str, str] | None:
        """The Secret's decoded data, or None if it does not exist."""
        with self._errors("get", "secrets"):
            try:
                secret = self.core.read_namespaced_secret(name, namespace or self.namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
        data = secret.data or {}
        out = {k: base64.b64decode(v).decode() for k, v in data.items()}
        out.update(secret.string_data or {})
        return out

    def create_secret(
        self, name: str, data: dict[str, str], labels: dict[str, str], namespace: str | None = None
    ) -> bool:
        """Create an Opaque Secret; False if one by that name appeared meanwhile (never overwritten)."""
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, labels=labels), type="Opaque", string_data=data
        )
        with self._errors("create", "secrets"):
            try:
                self.core.create_namespaced_secret(namespace or self.namespace, body)
                return True
            except ApiException as exc:
                if exc.status == 409:
                    return False
                raise

    # -- errors ----------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, verb: str, what: JobKind | str) -> Iterator[None]:
        """API and connection errors raised inside become one-line JobErrors."""
        try:
            yield
        except ApiException as exc:
            raise self._error(exc, verb, what) from None
        except urllib3.exceptions.HTTPError as exc:
            raise self._unreachable(exc) from None

    def _error(self, exc: ApiException, verb: str, resource: JobKind | str) -> JobError:
        kind = resource if isinstance(resource, JobKind) else None
        what = kind.plural if kind else str(resource)
        msg = _message(exc)
        if exc.status == 403:
            return JobError(f"forbidden: cannot {verb} {what} in namespace {self.namespace}: {msg}", RBAC_FIX)
        if exc.status == 401:
            return JobError(
                f"the Kubernetes API at {self.server} rejected the credentials: {msg}",
                "refresh your kubeconfig credentials (gcloud container clusters get-credentials / minikube)",
            )
        if exc.status == 404 and _status(exc).get("details", {}).get("kind") == "namespaces":
            return JobError(
                f"namespace {self.namespace} does not exist",
                "deploy k8s/overlays/<env> (it creates the namespace), or set CIFARFLOW_K8S_NAMESPACE to an "
                "existing one",
            )
        if exc.status == 404 and kind is not None:
            return JobError(
                f"the {kind.kind} resource ({kind.api_version}) is not installed in the cluster",
                f"install {kind.operator} (k8s/install/install-operators.sh)",
            )
        if exc.status == 404:
            return JobError(
                f"namespace {self.namespace} or {what} not found: {msg}", "deploy k8s/overlays/<env>"
            )
        if exc.status in (400, 422):
            return JobError(
                f"the API server rejected the {what} spec: {msg}", "check the settings it was built from"
            )
        return JobError(
            f"Kubernetes API error {exc.status} on {verb} {what}: {msg}",
            "retry; check the API server's health",
        )

    def _unreachable(self, exc: Exception) -> JobError:
        return JobError(
            f"cannot reach the Kubernetes API at {self.server}: {type(exc).__name__}",
            "check the cluster is running and KUBECONFIG points at it",
        )


def _status(exc: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _message(exc: ApiException) -> str:
    return str(_status(exc).get("message") or exc.reason or exc.status)
