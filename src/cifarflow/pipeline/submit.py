"""Submit the pipeline to a KFP v2 API server with ``kfp.Client``: upload once per content, then run.

The compiled pipeline is uploaded as a version named ``<cifarflow version>-<sha256[:12] of the YAML>``, so the
same code is uploaded once however often it is submitted, and the UI lists one version per change. Failures
become one line each: an unreachable host, a rejected token, and a pipeline or run the server refuses (4xx,
with its message).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarflow import __version__
from cifarflow.errors import CifarflowError, InputError, JobError
from cifarflow.pipeline import definition

log = logging.getLogger(__name__)

TOKEN_ENVS = ("KF_PIPELINES_TOKEN", "KFP_TOKEN")
UI_ENV = "KF_PIPELINES_UI_ENDPOINT"


@dataclass(frozen=True)
class Submission:
    run_id: str
    run_url: str
    pipeline_id: str
    version_id: str
    version_name: str
    experiment_id: str


def token_from_env() -> str | None:
    for name in TOKEN_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    return None


def submit(
    host: str,
    *,
    params: dict[str, Any],
    experiment: str = "cifarflow",
    namespace: str | None = None,
    service_account: str | None = None,
    pipeline_root: str | None = None,
    run_name: str | None = None,
    token: str | None = None,
) -> Submission:
    """Compile, upload (if this content is new), and start a run. Returns where to watch it."""
    import kfp

    if not host.startswith(("http://", "https://")):
        raise InputError(
            f"--host {host!r} has no http:// or https://", "give the full URL, e.g. http://localhost:8080"
        )
    host = host.rstrip("/")
    name = definition.pipeline_name()
    with tempfile.TemporaryDirectory(prefix="cifarflow-submit-") as tmp:
        package = definition.compile_to(Path(tmp) / "pipeline.yaml")
        version_name = f"{__version__}-{definition.digest(package)}"
        _preflight(host, token)
        with _kfp_errors(host, "the connection check"):
            client = kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token)
        with _kfp_errors(host, f"the experiment {experiment!r}"):
            exp = client.create_experiment(experiment, namespace=namespace)
        with _kfp_errors(host, "the pipeline upload"):
            pipeline_id, version_id = _upload(client, str(package), name, version_name, namespace)
    with _kfp_errors(host, "the run"):
        run = client.run_pipeline(
            experiment_id=exp.experiment_id,
            job_name=run_name or f"{name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
            params=params,
            pipeline_id=pipeline_id,
            version_id=version_id,
            pipeline_root=pipeline_root,
            service_account=service_account,
        )
    ui = os.environ.get(UI_ENV, host).rstrip("/")
    return Submission(
        run_id=run.run_id,
        run_url=f"{ui}/#/runs/details/{run.run_id}",
        pipeline_id=pipeline_id,
        version_id=version_id,
        version_name=version_name,
        experiment_id=exp.experiment_id,
    )


def _preflight(host: str, token: str | None) -> None:
    """One quick health request, so a wrong host fails in seconds with one line instead of kfp.Client's
    five retries (25 s of logged tracebacks)."""
    import urllib3

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with _kfp_errors(host, "the health check"):
        response = urllib3.PoolManager().request(
            "GET",
            f"{host}/apis/v2beta1/healthz",
            headers=headers,
            timeout=urllib3.Timeout(connect=10, read=30),
            retries=False,
        )
    if response.status >= 400:
        from kfp_server_api.exceptions import ApiException

        exc = ApiException(status=response.status, reason=response.reason)
        exc.body = response.data
        raise _api_error(exc, host, "the health check")


def _upload(
    client: Any, package: str, name: str, version_name: str, namespace: str | None
) -> tuple[str, str]:
    """``(pipeline id, version id)`` of this compiled content, uploading only what the server lacks."""
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        created = client.upload_pipeline(package, pipeline_name=name, namespace=namespace)
        # A new pipeline's first version is created with it; ask for its id.
        versions = client.list_pipeline_versions(created.pipeline_id, page_size=1, sort_by="created_at desc")
        first = (versions.pipeline_versions or [None])[0]
        if first is None:
            raise JobError(
                f"KFP created pipeline {name!r} without a version", "check the KFP API server's logs"
            )
        log.info("uploaded new pipeline %s (%s)", name, created.pipeline_id)
        return created.pipeline_id, first.pipeline_version_id
    existing = client.list_pipeline_versions(pipeline_id, page_size=1, filter=_name_filter(version_name))
    if existing.pipeline_versions:
        log.info("pipeline %s version %s is already uploaded", name, version_name)
        return pipeline_id, existing.pipeline_versions[0].pipeline_version_id
    version = client.upload_pipeline_version(
        package, pipeline_version_name=version_name, pipeline_id=pipeline_id
    )
    log.info("uploaded pipeline %s version %s", name, version_name)
    return pipeline_id, version.pipeline_version_id


def _name_filter(display_name: str) -> str:
    return json.dumps(
        {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": display_name}]}
    )


@contextlib.contextmanager
def _kfp_errors(host: str, what: str) -> Iterator[None]:
    """Turn kfp/urllib3 failures into one line; kfp's own chatter (prints, FutureWarnings) goes to the debug
    log."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError as Urllib3Error

    chatter = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(chatter):
            warnings.simplefilter("ignore", FutureWarning)
            yield
    except CifarflowError:
        raise
    except ApiException as exc:
        raise _api_error(exc, host, what) from None
    except (Urllib3Error, ConnectionError, TimeoutError) as exc:
        raise JobError(
            f"cannot reach the KFP API at {host} ({_reason(exc)})",
            "check --host and that KFP is up (minikube: kubectl port-forward -n kubeflow svc/ml-pipeline-ui "
            "8080:80, then --host http://localhost:8080)",
        ) from None
    finally:
        for line in chatter.getvalue().splitlines():
            if line.strip():
                log.debug("kfp: %s", line)


def _api_error(exc: Any, host: str, what: str) -> CifarflowError:
    status = int(exc.status or 0)
    message = _server_message(exc.body) or str(exc.reason or "").strip() or "no message"
    problem = f"KFP at {host} rejected {what} (HTTP {status}: {message})"
    if status in (401, 403):
        return JobError(
            problem,
            f"set {TOKEN_ENVS[0]} to a token the KFP API accepts, and --namespace to a profile you may use",
        )
    if status == 404:
        return JobError(problem, "point --host at the KFP API or UI endpoint (it serves /apis/v2beta1)")
    if 400 <= status < 500:
        return JobError(problem, "fix what the server names and submit again")
    return JobError(
        f"KFP at {host} failed on {what} (HTTP {status}: {message})", "check the KFP API server's logs"
    )


def _server_message(body: Any) -> str:
    """The server's own explanation from a grpc-gateway error body (``{"error"|"message": ...}``)."""
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300]
    if isinstance(data, dict):
        for key in ("message", "error", "error_message"):
            if data.get(key):
                return " ".join(str(data[key]).split())[:300]
    return " ".join(text.split())[:300]


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    text = str(reason or exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route to host"):
        if marker in text:
            return marker.lower()
    return " ".join(text.split())[:200]
