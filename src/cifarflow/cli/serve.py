"""Serving commands: ``serve`` (a V2 inference server), ``promote`` (the champion gate), ``deploy`` (KServe)."""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Annotated

import typer

from cifarflow.backends import DeployRequest, get_backend
from cifarflow.cli.common import BackendChoice, S3Endpoint, app, field_option, make_store, out, print_result
from cifarflow.cli.train import quiet_tensorflow
from cifarflow.config import DeployConfig, PromoteConfig, defaults, parse
from cifarflow.errors import InputError
from cifarflow.serve.promote import Decision
from cifarflow.storage import Store

log = logging.getLogger(__name__)

ModelUrl = Annotated[str, typer.Option("--model", help="Model URL written by `cifarflow train`.")]
Name = Annotated[str, field_option(DeployConfig, "name")]
GATE = defaults(PromoteConfig)
DEPLOY = defaults(DeployConfig)


@app.command()
def serve(
    *,
    model: ModelUrl,
    name: Name = DEPLOY["name"],
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8080,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Images a request may hold.")] = 1024,
    max_request_mb: Annotated[
        float, typer.Option("--max-request-mb", min=0.001, help="Largest request body accepted.")
    ] = 32,
    grace_s: Annotated[
        int, typer.Option("--grace-s", min=0, help="On SIGTERM, how long in-flight requests may finish.")
    ] = 30,
    s3_endpoint: S3Endpoint = None,
) -> None:
    """Serve a trained model over KServe's V2 inference protocol (REST) until SIGTERM or Ctrl-C."""
    quiet_tensorflow()
    from cifarflow.serve.classifier import Classifier

    classifier = Classifier.load(make_store(s3_endpoint), model, max_batch=max_batch)
    run_server(
        classifier,
        name=name,
        port=port,
        max_batch=max_batch,
        max_request_bytes=int(max_request_mb * (1 << 20)),
        grace_s=grace_s,
    )


def run_server(classifier: object, **options: int | str) -> None:
    """Start the server (shared by ``serve`` and ``run --serve``)."""
    from cifarflow.serve.server import ServeOptions
    from cifarflow.serve.server import serve as start

    settings = ServeOptions(**options)  # type: ignore[arg-type]
    out(f"url: http://127.0.0.1:{settings.port}/v2/models/{settings.name}")
    start(classifier, settings)  # type: ignore[arg-type]


@app.command()
def promote(
    *,
    model: ModelUrl,
    min_accuracy: Annotated[float, field_option(PromoteConfig, "min_accuracy")] = GATE["min_accuracy"],
    tolerance: Annotated[float, field_option(PromoteConfig, "tolerance")] = GATE["tolerance"],
    max_recall_drop: Annotated[float, field_option(PromoteConfig, "max_recall_drop")] = GATE[
        "max_recall_drop"
    ],
    metrics: Annotated[
        str | None, typer.Option("--metrics", help="The model's metrics.json (default: MODEL/metrics.json).")
    ] = None,
    champion: Annotated[
        str | None,
        typer.Option("--champion", help="The champion record (default: <...>/models/champion.json)."),
    ] = None,
    s3_endpoint: S3Endpoint = None,
) -> None:
    """Make MODEL the champion if it beats the current one on the same test set (exit 1 when it does not)."""
    quiet_tensorflow()
    from cifarflow.serve.promote import promote as gate

    thresholds = parse(
        PromoteConfig,
        {"min_accuracy": min_accuracy, "tolerance": tolerance, "max_recall_drop": max_recall_drop},
    )
    decision = gate(
        model,
        store=make_store(s3_endpoint),
        record_url=champion,
        metrics_url=metrics,
        **thresholds.model_dump(),
    )
    print_decision(decision)
    if not decision.promoted:
        raise typer.Exit(1)


def print_decision(decision: Decision) -> None:
    out(f"promoted: {str(decision.promoted).lower()}")
    out(f"reason: {decision.reason}")
    out(f"test_accuracy: {decision.challenger.accuracy:.4f}")
    if decision.champion is not None:
        out(f"champion_accuracy: {decision.champion.accuracy:.4f}")
    out(f"champion_record: {decision.record_url}")


class RuntimeChoice(StrEnum):
    cifarflow = "cifarflow"
    tensorflow = "tensorflow"


@app.command()
def deploy(
    *,
    model: ModelUrl,
    name: Name = DEPLOY["name"],
    canary_percent: Annotated[int, field_option(DeployConfig, "canary_percent")] = DEPLOY["canary_percent"],
    runtime: Annotated[
        RuntimeChoice | None,
        typer.Option("--runtime", help="cifarflow: `cifarflow serve` (V2); tensorflow: TF Serving (V1)."),
    ] = None,
    backend: Annotated[
        BackendChoice,
        typer.Option("--backend", help="k8s: a KServe InferenceService; local: check it serves, say how."),
    ] = "k8s",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the InferenceService; touch nothing (k8s only).")
    ] = False,
    s3_endpoint: S3Endpoint = None,
) -> None:
    """Create or update the model's KServe InferenceService, wait until it is Ready, print its URL."""
    params = parse(DeployConfig, {"name": name, "canary_percent": canary_percent})
    request = DeployRequest(model, params, runtime.value if runtime else None)
    if dry_run:
        print_inference_service(request, str(backend))
        return
    print_result(get_backend(str(backend), store=make_store(s3_endpoint)).deploy(request))


def print_inference_service(request: DeployRequest, backend: str) -> None:
    """What ``deploy --backend k8s`` would apply, as YAML."""
    import yaml

    from cifarflow.backends.kubernetes import K8sOptions, resolve_serving, resolve_settings
    from cifarflow.k8s import inferenceservice as isvc

    if backend != "k8s":
        raise InputError(
            f"--dry-run prints an InferenceService, which backend {backend} does not make",
            "add --backend k8s",
        )
    body = isvc.build(
        resolve_settings(K8sOptions(), job="deploy"),
        resolve_serving(request.runtime),
        name=isvc.service_name(request.params.name),
        model=request.model_url,
        canary_percent=request.params.canary,
    )
    typer.echo(yaml.safe_dump(body, sort_keys=False), nl=False)


def promote_after_run(model_url: str, store: Store, *, serve: bool) -> None:
    """``cifarflow run``'s last steps: the gate, then (``--serve``) the champion served locally."""
    from cifarflow.serve.promote import promote as gate

    decision = gate(model_url, store=store)
    print_decision(decision)
    if serve:
        from cifarflow.serve.classifier import Classifier

        champion = model_url if decision.promoted or decision.champion is None else decision.champion.model
        run_server(Classifier.load(store, champion), name="cifarflow", port=8080)
