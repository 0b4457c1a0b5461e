"""A small Kubernetes API server for the launcher tests, reached through the real ``kubernetes`` client.

It serves exactly what cifarflow's launchers use: namespaced custom objects (create, get, delete, list and
``?watch=true`` with a ``metadata.name`` field selector and resourceVersions), pods (list by label selector),
pod logs, and Secrets (get, create). On top of it:

- **RBAC**: bearer tokens map to service accounts; Roles and RoleBindings (loaded from the rendered
  ``k8s/base``) decide each request, with the real API server's 403 ``Status`` body when they do not allow it.
  Every request is recorded as (verb, apiGroup, resource) so a test can compare what was used with what was
  granted. 403 messages name the resource as ``plural.group``, as the real server's do.
- **What kube-apiserver does to a custom object** (``structural.py``): unknown fields are pruned with a
  ``Warning: unknown field "spec.x"`` header, or refused with a 400 under ``fieldValidation=Strict``; CRD
  defaults are applied; ``metadata.name`` must be an RFC 1123 subdomain; schema violations are a 422 whose
  message and ``details.causes`` list every error. Creates in a namespace that does not exist are a 404 naming
  ``namespaces``; an API group no CRD serves is the plain-text ``404 page not found``. Status writes by the
  controller are validated against the status schema and refused (recorded in ``rejected_status``) when the
  real server would refuse them. CEL rules are not evaluated.
- **Logs**: a pod that has not started has an empty log (200), a pod that does not exist is a 404.
- **Controller**: after a SparkApplication or TFJob is created, a scenario plays the status changes and pods
  the operators would produce (see ``scenarios.py``).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import yaml

from . import structural

Obj = dict[str, Any]
Key = tuple[str, str, str, str]  # (group, plural, namespace, name)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Request:
    verb: str
    group: str
    resource: str  # plural, with /subresource
    namespace: str
    name: str | None
    subject: str


@dataclass
class Rule:
    api_groups: list[str]
    resources: list[str]
    verbs: list[str]
    resource_names: list[str] = field(default_factory=list)

    def allows(self, req: Request) -> bool:
        return (
            (req.group in self.api_groups or "*" in self.api_groups)
            and (req.resource in self.resources or "*" in self.resources)
            and (req.verb in self.verbs or "*" in self.verbs)
            # resourceNames cannot restrict create (the name is not known to RBAC) nor collection reads.
            and (not self.resource_names or (req.name is not None and req.name in self.resource_names))
        )


class Rbac:
    """Roles + RoleBindings, namespaced; subjects are ``system:serviceaccount:<ns>:<name>``."""

    def __init__(self, manifests: list[Obj]) -> None:
        roles: dict[tuple[str, str], list[Rule]] = {}
        self.bindings: list[tuple[str, str, str]] = []  # (namespace, role, subject)
        for doc in manifests:
            kind, meta = doc.get("kind"), doc.get("metadata", {})
            if kind == "Role":
                roles[(meta.get("namespace", ""), meta["name"])] = [
                    Rule(
                        r.get("apiGroups", []),
                        r.get("resources", []),
                        r.get("verbs", []),
                        r.get("resourceNames", []),
                    )
                    for r in doc.get("rules", [])
                ]
            elif kind == "RoleBinding":
                for s in doc.get("subjects", []):
                    if s.get("kind") == "ServiceAccount":
                        subject = f"system:serviceaccount:{s['namespace']}:{s['name']}"
                        self.bindings.append((meta["namespace"], doc["roleRef"]["name"], subject))
        self.roles = roles

    def rules_for(self, subject: str, namespace: str) -> list[Rule]:
        out: list[Rule] = []
        for ns, role, subj in self.bindings:
            if subj == subject and ns == namespace:
                out.extend(self.roles.get((ns, role), []))
        return out

    def allows(self, req: Request) -> bool:
        return any(rule.allows(req) for rule in self.rules_for(req.subject, req.namespace))


Step = tuple[float, Callable[["FakeCluster", Key], None]]


@dataclass(frozen=True)
class Crd:
    """One served custom resource: what the API server needs to default, prune and validate it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    schema: Obj
    validator: jsonschema.protocols.Validator


@functools.cache
def load_crds(crd_dir: Path) -> dict[tuple[str, str], Crd]:
    """(group, plural) -> its CRD; parsed once per session (the files are large)."""
    out = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        spec = crd["spec"]
        for version in spec["versions"]:
            schema = version["schema"]["openAPIV3Schema"]
            out[(spec["group"], spec["names"]["plural"])] = Crd(
                spec["group"],
                version["name"],
                spec["names"]["plural"],
                spec["names"]["kind"],
                spec.get("scope") == "Namespaced",
                schema,
                jsonschema.Draft7Validator(schema),
            )
    return out


class FakeCluster:
    """The API server's state, its controller and its authorizer."""

    ADMIN = "admin-token"

    def __init__(self, crd_dir: Path | None = None) -> None:
        self.lock = threading.Condition()
        self.rv = itertools.count(1)
        self.objects: dict[Key, Obj] = {}
        self.events: list[tuple[int, Key, str, Obj]] = []
        self.pods: dict[tuple[str, str], Obj] = {}
        self.logs: dict[tuple[str, str], str] = {}
        self.secrets: dict[tuple[str, str], Obj] = {}
        self.requests: list[Request] = []
        self.tokens: dict[str, str] = {self.ADMIN: "admin"}
        self.rbac: Rbac | None = None
        self.scenarios: dict[str, list[Step]] = {}
        self.default_scenario: Callable[[str, str], list[Step]] | None = None
        self.crds: dict[tuple[str, str], Crd] = {}
        # Namespaces that exist: a create anywhere else is refused (NamespaceLifecycle admission).
        self.namespaces: set[str] = {"cifarflow", "kubeflow", "default", "kube-system"}
        # Status writes the real server would refuse (the scenarios must not make any; tests check).
        self.rejected_status: list[str] = []
        self.closing = False
        if crd_dir is not None and crd_dir.is_dir():
            self.crds.update(load_crds(crd_dir))

    def installed_groups(self) -> set[str]:
        return {group for group, _ in self.crds}

    # -- set-up by tests -------------------------------------------------------------------------------------
    def use_rbac(self, manifests: list[Obj], tokens: dict[str, str]) -> None:
        """Enforce these Roles; ``tokens`` maps bearer tokens to ``system:serviceaccount:ns:name``."""
        self.rbac = Rbac(manifests)
        self.tokens.update(tokens)

    def scenario(self, name: str, steps: list[Step]) -> None:
        self.scenarios[name] = steps

    def created(self, plural: str) -> list[Request]:
        return [r for r in self.requests if r.verb == "create" and r.resource == plural]

    # -- state changes (controller and handlers) -------------------------------------------------------------
    def _emit(self, key: Key, kind: str, obj: Obj) -> None:
        rv = next(self.rv)
        obj.setdefault("metadata", {})["resourceVersion"] = str(rv)
        self.events.append((rv, key, kind, json.loads(json.dumps(obj))))
        self.lock.notify_all()

    def put(self, key: Key, obj: Obj) -> Obj:
        with self.lock:
            event = "MODIFIED" if key in self.objects else "ADDED"
            self.objects[key] = obj
            self._emit(key, event, obj)
            return obj

    def update_status(self, key: Key, status: Obj) -> bool:
        """The operator's write to the /status subresource: pruned and validated against the CRD's status
        schema like the real server does; a status it would refuse is recorded and not stored."""
        with self.lock:
            obj = self.objects.get(key)
            if obj is None:
                return False
            candidate = json.loads(json.dumps(obj))
            candidate["status"] = {**obj.get("status", {}), **status}
            crd = self.crds.get((key[0], key[1]))
            if crd is not None:
                status_schema = crd.schema.get("properties", {}).get("status", {})
                structural.prune(candidate["status"], status_schema, "status")
                structural.apply_defaults(candidate["status"], status_schema)
                errors = [
                    c for c in structural.causes(candidate, crd.validator) if c["field"].startswith("status")
                ]
                if errors:
                    self.rejected_status.append(
                        structural.invalid_message(crd.kind, crd.group, key[3], errors)
                    )
                    return False
            obj["status"] = candidate["status"]
            self._emit(key, "MODIFIED", obj)
            return True

    def remove(self, key: Key) -> Obj | None:
        with self.lock:
            obj = self.objects.pop(key, None)
            if obj is not None:
                self._emit(key, "DELETED", obj)
                name = key[3]
                # Background propagation: the operator's pods go with their job.
                for pod_key in [k for k, p in self.pods.items() if p["metadata"].get("ownerName") == name]:
                    self.pods.pop(pod_key)
            return obj

    def set_pod(self, namespace: str, pod: Obj, owner: str, log: str | None = None) -> None:
        with self.lock:
            pod["metadata"]["namespace"] = namespace
            pod["metadata"]["ownerName"] = owner
            self.pods[(namespace, pod["metadata"]["name"])] = pod
            if log is not None:
                self.logs[(namespace, pod["metadata"]["name"])] = log

    def _run_scenario(self, key: Key, steps: list[Step]) -> None:
        for delay, action in steps:
            time.sleep(delay)
            with self.lock:
                if self.closing or key not in self.objects:
                    return
                action(self, key)

    def start_controller(self, key: Key) -> None:
        name = key[3]
        steps = self.scenarios.get(name)
        if steps is None and self.default_scenario is not None:
            steps = self.default_scenario(key[1], name)
        if steps:
            threading.Thread(target=self._run_scenario, args=(key, steps), daemon=True).start()


# -- HTTP ----------------------------------------------------------------------------------------------------
CUSTOM = re.compile(
    r"^/apis/(?P<group>[^/]+)/(?P<version>[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?$"
)
CORE = re.compile(
    r"^/api/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>pods|secrets)(?:/(?P<name>[^/]+)(?:/(?P<sub>log))?)?$"
)


def status_body(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


class Handler(BaseHTTPRequestHandler):
    cluster: FakeCluster
    # HTTP/1.1: watches stream chunked events, as the real API server does (the client reads chunk by chunk).
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes: without this, Nagle + delayed ACKs add 40 ms a request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing ------------------------------------------------------------------------------------------
    def _send(self, code: int, body: Obj | str, warnings: list[str] | None = None) -> None:
        data = body if isinstance(body, str) else json.dumps(body)
        raw = data.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for text in warnings or []:
            # RFC 7234 warn-code 299, as kube-apiserver sends them (kubectl prints "Warning: <text>").
            self.send_header("Warning", '299 - "' + text.replace('"', '\\"') + '"')
        self.end_headers()
        self.wfile.write(raw)

    def _body(self) -> Obj:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _subject(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        return self.cluster.tokens.get(token)

    def _authorize(self, verb: str, group: str, resource: str, ns: str, name: str | None) -> bool:
        subject = self._subject()
        if subject is None:
            self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
            return False
        req = Request(verb, group, resource, ns, name, subject)
        with self.cluster.lock:
            self.cluster.requests.append(req)
        rbac = self.cluster.rbac
        if subject != "admin" and rbac is not None and not rbac.allows(req):
            # The real message names the resource as plural.group (core: plural), and the object if any.
            base = resource.split("/", 1)[0]
            what = f"{base}.{group}" if group else base
            if name:
                what += f' "{name}"'
            self._send(
                403,
                status_body(
                    403,
                    "Forbidden",
                    f'{what} is forbidden: User "{subject}" cannot {verb} resource "{resource}" in API group '
                    f'"{group}" in the namespace "{ns}"',
                    {"name": name or "", "group": group, "kind": base},
                ),
            )
            return False
        return True

    def _served(self, group: str, plural: str) -> bool:
        """False (and the real server's answer sent) when no CRD serves this resource."""
        c = self.cluster
        if not c.crds or (group, plural) in c.crds:
            return True
        if group not in c.installed_groups():
            # No such API group at all: the aggregator's plain-text 404, not a Status.
            self._send(404, "404 page not found\n")
        else:
            self._send(404, status_body(404, "NotFound", "the server could not find the requested resource"))
        return False

    def _route(self) -> tuple[str, Obj, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        m = CUSTOM.match(parts.path)
        if m:
            return "custom", m.groupdict(), query
        m = CORE.match(parts.path)
        if m:
            return "core", m.groupdict(), query
        return "none", {}, query

    # -- verbs ---------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        kind, m, q = self._route()
        c = self.cluster
        if kind == "custom":
            group, plural, ns, name = m["group"], m["plural"], m["ns"], m["name"]
            if not self._served(group, plural):
                return
            if name:
                if not self._authorize("get", group, plural, ns, name):
                    return
                with c.lock:
                    obj = c.objects.get((group, plural, ns, name))
                if obj is None:
                    self._send(404, self._not_found(group, plural, name))
                else:
                    self._send(200, obj)
                return
            watch = q.get("watch", ["false"])[0] in ("true", "1", "True")
            if not self._authorize("watch" if watch else "list", group, plural, ns, None):
                return
            selector = q.get("fieldSelector", [""])[0]
            only = selector.removeprefix("metadata.name=") if selector.startswith("metadata.name=") else None
            if watch:
                self._watch(group, plural, ns, only, q)
            else:
                with c.lock:
                    items = [o for (g, p, n, nm), o in c.objects.items() if (g, p, n) == (group, plural, ns)]
                    rv = str(len(c.events))
                self._send(
                    200,
                    {
                        "apiVersion": f"{group}/{m['version']}",
                        "kind": "List",
                        "items": items,
                        "metadata": {"resourceVersion": rv},
                    },
                )
            return
        if kind == "core" and m["plural"] == "pods":
            ns, name = m["ns"], m["name"]
            if name and m["sub"] == "log":
                if not self._authorize("get", "", "pods/log", ns, name):
                    return
                with c.lock:
                    text = c.logs.get((ns, name))
                    exists = (ns, name) in c.pods
                if text is None and not exists:
                    self._send(404, self._not_found("", "pods", name))
                    return
                # A pod whose container has not started yet has an empty log, not an error.
                text = text or ""
                tail = int(q.get("tailLines", ["0"])[0] or 0)
                lines = text.splitlines(keepends=True)
                self._send(200, "".join(lines[-tail:] if tail else lines))
                return
            if name:
                self._send(404, status_body(404, "NotFound", "not served by the fake"))
                return
            if not self._authorize("list", "", "pods", ns, None):
                return
            wanted = dict(kv.split("=", 1) for kv in q.get("labelSelector", [""])[0].split(",") if "=" in kv)
            with c.lock:
                pods = [
                    json.loads(json.dumps(p))
                    for (n, _), p in c.pods.items()
                    if n == ns and all(p["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())
                ]
            for p in pods:
                p["metadata"].pop("ownerName", None)
            self._send(200, {"apiVersion": "v1", "kind": "PodList", "items": pods, "metadata": {}})
            return
        if kind == "core" and m["plural"] == "secrets" and m["name"]:
            ns, name = m["ns"], m["name"]
            if not self._authorize("get", "", "secrets", ns, name):
                return
            with c.lock:
                secret = c.secrets.get((ns, name))
            self._send(200, secret) if secret else self._send(404, self._not_found("", "secrets", name))
            return
        self._send(404, status_body(404, "NotFound", "the server could not find the requested resource"))

    def do_POST(self) -> None:
        kind, m, q = self._route()
        c = self.cluster
        body = self._body()
        if kind == "custom" and not m["name"]:
            self._create_custom(m["group"], m["plural"], m["ns"], body, q)
            return
        if kind == "core" and m["plural"] == "secrets" and not m["name"]:
            ns = m["ns"]
            name = body.get("metadata", {}).get("name", "")
            if not self._authorize("create", "", "secrets", ns, None):
                return
            with c.lock:
                if (ns, name) in c.secrets:
                    self._send(409, status_body(409, "AlreadyExists", f'secrets "{name}" already exists'))
                    return
                body["metadata"]["namespace"] = ns
                c.secrets[(ns, name)] = body
            self._send(201, body)
            return
        self._send(404, status_body(404, "NotFound", "the server could not find the requested resource"))

    def _create_custom(self, group: str, plural: str, ns: str, body: Obj, q: dict[str, list[str]]) -> None:
        """Create as kube-apiserver does: authorize, decode (prune unknown fields: a warning, or 400 under
        fieldValidation=Strict), admit (the namespace must exist), default, validate (422 listing every
        error), store (409 if the name is taken)."""
        c = self.cluster
        name = body.get("metadata", {}).get("name", "")
        if not self._served(group, plural) or not self._authorize("create", group, plural, ns, None):
            return
        crd = c.crds.get((group, plural))
        warnings: list[str] = []
        if crd is not None:
            dropped = structural.prune_object(body, crd.schema)
            warnings = [f'unknown field "{path}"' for path in dropped]
            if dropped and q.get("fieldValidation", [""])[0] == "Strict":
                fields = ", ".join(warnings)
                message = (
                    f'{crd.kind} in version "{crd.version}" cannot be handled as a {crd.kind}: strict decoding '
                    f"error: {fields}"
                )
                self._send(400, status_body(400, "BadRequest", message))
                return
        with c.lock:
            namespace_exists = ns in c.namespaces
        if not namespace_exists:
            details = {"name": ns, "kind": "namespaces"}
            self._send(404, status_body(404, "NotFound", f'namespaces "{ns}" not found', details))
            return
        if crd is not None:
            structural.apply_defaults(body, crd.schema)
            found = structural.causes(body, crd.validator)
            if found:
                details = {"name": name, "group": group, "kind": crd.kind, "causes": found}
                message = structural.invalid_message(crd.kind, group, name, found)
                self._send(422, status_body(422, "Invalid", message, details))
                return
        key = (group, plural, ns, name)
        with c.lock:
            if key in c.objects:
                self._send(
                    409,
                    status_body(
                        409,
                        "AlreadyExists",
                        f'{plural}.{group} "{name}" already exists',
                        {"name": name, "group": group, "kind": plural},
                    ),
                )
                return
            meta = body.setdefault("metadata", {})
            meta.update({"namespace": ns, "uid": f"uid-{name}", "creationTimestamp": now(), "generation": 1})
            obj = c.put(key, body)
            reply = json.loads(json.dumps(obj))
        c.start_controller(key)
        self._send(201, reply, warnings)

    def do_PATCH(self) -> None:
        """JSON merge patch (RFC 7386) of a custom object, as ``cifarflow deploy`` updates an InferenceService:
        the result is pruned, defaulted and validated like a create; a spec change bumps the generation."""
        kind, m, _ = self._route()
        body = self._body()
        if (
            kind != "custom"
            or not m["name"]
            or not self.headers.get("Content-Type", "").startswith("application/merge-patch+json")
        ):
            self._send(415, status_body(415, "UnsupportedMediaType", "only merge patches of custom objects"))
            return
        c, key = self.cluster, (m["group"], m["plural"], m["ns"], m["name"])
        if not self._served(key[0], key[1]) or not self._authorize("patch", *key[:3], key[3]):
            return
        with c.lock:
            old = c.objects.get(key)
            if old is None:
                self._send(404, self._not_found(key[0], key[1], key[3]))
                return
            new = merge_patch(json.loads(json.dumps(old)), body)
            crd = c.crds.get(key[:2])
            if crd is not None:
                structural.prune_object(new, crd.schema)
                structural.apply_defaults(new, crd.schema)
                found = structural.causes(new, crd.validator)
                if found:
                    message = structural.invalid_message(crd.kind, key[0], key[3], found)
                    self._send(422, status_body(422, "Invalid", message, {"causes": found}))
                    return
            if new.get("spec") != old.get("spec"):
                new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
            reply = json.loads(json.dumps(c.put(key, new)))
        c.start_controller(key)
        self._send(200, reply)

    def do_DELETE(self) -> None:
        kind, m, _ = self._route()
        c = self.cluster
        self._body()
        if kind == "custom" and m["name"]:
            group, plural, ns, name = m["group"], m["plural"], m["ns"], m["name"]
            if not self._served(group, plural) or not self._authorize("delete", group, plural, ns, name):
                return
            obj = c.remove((group, plural, ns, name))
            if obj is None:
                self._send(404, self._not_found(group, plural, name))
            else:
                self._send(
                    200,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Success",
                        "details": {"name": name, "group": group, "kind": plural},
                    },
                )
            return
        self._send(404, status_body(404, "NotFound", "the server could not find the requested resource"))

    # -- watch ---------------------------------------------------------------------------------------------
    def _watch(self, group: str, plural: str, ns: str, only: str | None, q: dict[str, list[str]]) -> None:
        c = self.cluster
        timeout = float(q.get("timeoutSeconds", ["30"])[0])
        since = int(q.get("resourceVersion", ["0"])[0] or 0)
        deadline = time.monotonic() + timeout
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def matches(key: Key) -> bool:
            return key[:3] == (group, plural, ns) and (only is None or key[3] == only)

        with c.lock:
            if since == 0:
                # No resourceVersion: the current state first, as synthetic ADDED events.
                pending = [("ADDED", o) for k, o in c.objects.items() if matches(k)]
                since = c.events[-1][0] if c.events else 0
            else:
                pending = []
        try:
            while True:
                for kind, obj in pending:
                    self._chunk((json.dumps({"type": kind, "object": obj}) + "\n").encode())
                self.wfile.flush()
                with c.lock:
                    while True:
                        new = [(rv, k, t, o) for rv, k, t, o in c.events if rv > since and matches(k)]
                        if new or c.closing or time.monotonic() >= deadline:
                            break
                        c.lock.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                    if not new:
                        self._chunk(b"")
                        return
                    since = new[-1][0]
                    pending = [(t, o) for _, _, t, o in new]
        except (BrokenPipeError, ConnectionResetError):
            return

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    @staticmethod
    def _not_found(group: str, plural: str, name: str) -> Obj:
        what = f"{plural}.{group}" if group else plural
        return status_body(
            404, "NotFound", f'{what} "{name}" not found', {"name": name, "group": group, "kind": plural}
        )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class FakeApiServer:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        handler = type("BoundHandler", (Handler,), {"cluster": cluster})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeApiServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.cluster.lock:
            self.cluster.closing = True
            self.cluster.lock.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()

    def kubeconfig(self, path: Path, token: str, namespace: str = "cifarflow") -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [
                {"name": "fake", "context": {"cluster": "fake", "user": "user", "namespace": namespace}}
            ],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path
