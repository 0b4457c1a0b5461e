"""A fake KFP v2beta1 API server on 127.0.0.1: just enough of the real one for ``kfp.Client`` to submit a run.

It keeps pipelines, versions, experiments and runs in memory, records every request (method, path, query,
headers, body, uploaded file), and can be told to answer one route with an error, the way the real server
rejects a bad pipeline package or a token. Endpoints follow the published v2beta1 REST API (grpc-gateway JSON,
snake_case).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

API = "/apis/v2beta1"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None
    upload: bytes | None = None  # the multipart "uploadfile" part


@dataclass
class FakeKFP:
    host: str = ""
    requests: list[Request] = field(default_factory=list)
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # pipeline id -> versions
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (method, route) -> (status, message): answer that route with a grpc-gateway style error.
    failures: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)

    def calls(self, method: str, route: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == API + route]


def _filter_name(query: dict[str, str]) -> str | None:
    """The display_name an EQUALS filter asks for (the only filter kfp.Client sends for these calls)."""
    if "filter" not in query:
        return None
    predicates = json.loads(query["filter"]).get("predicates", [])
    for p in predicates:
        if p.get("key") in ("display_name", "name") and p.get("operation") == "EQUALS":
            return str(p.get("stringValue", p.get("string_value")))
    return None


def _documents(data: bytes) -> list[Any]:
    """A package is the PipelineSpec, optionally followed by a PlatformSpec document (kfp-kubernetes
    settings)."""
    return list(yaml.safe_load_all(data))


def _valid_pipeline(data: bytes) -> str | None:
    """What the real server checks first: a YAML PipelineSpec with a name and a root DAG. Returns a
    problem."""
    try:
        docs = _documents(data)
    except yaml.YAMLError as exc:
        return f"Failed to parse the pipeline spec: {' '.join(str(exc).split())}"
    doc = docs[0] if docs else None
    if not isinstance(doc, dict) or "pipelineInfo" not in doc or "root" not in doc:
        return "Invalid input error: the file is not a KFP v2 PipelineSpec (no pipelineInfo/root)"
    return None


def make_handler(state: FakeKFP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            req = Request(method, parts.path, query, {k.lower(): v for k, v in self.headers.items()})
            ctype = self.headers.get("Content-Type", "")
            if ctype.startswith("multipart/form-data"):
                msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"Content-Type: {ctype}\r\n\r\n".encode() + body
                )
                for part in msg.iter_parts():
                    if part.get_param("name", header="content-disposition") == "uploadfile":
                        payload = part.get_payload(decode=True)
                        req.upload = payload if isinstance(payload, bytes) else None
            elif body:
                req.json = json.loads(body)
            state.requests.append(req)
            route = parts.path[len(API) :] if parts.path.startswith(API) else parts.path
            key = (method, "/pipelines/{id}/versions" if route.endswith("/versions") else route)
            if key in state.failures:
                status, message = state.failures[key]
                return self._send(status, {"error": message, "code": 3, "message": message, "details": []})
            try:
                status, payload = self._route(method, route, query, req)
            except KeyError as exc:
                status, payload = 404, {"error": f"not found: {exc}", "message": f"not found: {exc}"}
            self._send(status, payload)

        def _route(self, method: str, route: str, query: dict[str, str], req: Request) -> tuple[int, Any]:
            if (method, route) == ("GET", "/healthz"):
                return 200, {"multi_user": False, "pipeline_store": "database"}
            if (method, route) == ("GET", "/experiments"):
                name = _filter_name(query)
                found = [e for e in state.experiments.values() if name is None or e["display_name"] == name]
                return 200, {"experiments": found, "total_size": len(found)} if found else {}
            if (method, route) == ("POST", "/experiments"):
                exp = {**req.json, "experiment_id": str(uuid.uuid4()), "storage_state": "AVAILABLE"}
                state.experiments[exp["experiment_id"]] = exp
                return 200, exp
            if (method, route) == ("GET", "/pipelines"):
                name = _filter_name(query)
                found = [p for p in state.pipelines.values() if name is None or p["display_name"] == name]
                return 200, {"pipelines": found, "total_size": len(found)} if found else {}
            if (method, route) == ("POST", "/pipelines/upload"):
                problem = _valid_pipeline(req.upload or b"")
                if problem:
                    return 400, {"error": problem, "message": problem, "code": 3}
                pid = str(uuid.uuid4())
                pipeline = {"pipeline_id": pid, "display_name": query["name"], "name": query["name"]}
                state.pipelines[pid] = pipeline
                state.versions[pid] = [self._version(pid, query["name"], req.upload or b"")]
                return 200, pipeline
            if (method, route) == ("POST", "/pipelines/upload_version"):
                problem = _valid_pipeline(req.upload or b"")
                if problem:
                    return 400, {"error": problem, "message": problem, "code": 3}
                pid = query["pipelineid"]
                version = self._version(pid, query["name"], req.upload or b"")
                state.versions[pid].append(version)
                return 200, version
            if method == "GET" and route.startswith("/pipelines/") and route.endswith("/versions"):
                pid = route.split("/")[2]
                name = _filter_name(query)
                found = [
                    v for v in reversed(state.versions[pid]) if name is None or v["display_name"] == name
                ]
                return 200, {"pipeline_versions": found[: int(query.get("page_size", 10))]} if found else {}
            if (method, route) == ("POST", "/runs"):
                body = req.json
                ref = body.get("pipeline_version_reference") or {}
                if ref and ref.get("pipeline_id") not in state.pipelines:
                    return 404, {"error": "pipeline not found", "message": "pipeline not found"}
                run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING"}
                state.runs[run["run_id"]] = run
                return 200, run
            return 404, {"error": f"no route {method} {route}", "message": f"no route {method} {route}"}

        def _version(self, pid: str, name: str, data: bytes) -> dict[str, Any]:
            return {
                "pipeline_id": pid,
                "pipeline_version_id": str(uuid.uuid4()),
                "display_name": name,
                "name": name,
                "pipeline_spec": _documents(data)[0],
            }

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


class Server:
    """``with Server() as kfp: ...`` runs the fake on a free port until the block ends."""

    def __init__(self) -> None:
        self.state = FakeKFP()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(self.state))
        self.state.host = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeKFP:
        self.thread.start()
        return self.state

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
