"""Serving commands: ``serve`` (a V2 inference server), ``promote`` (the champion gate), ``deploy`` (KServe)."""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Annotated

import typer

from cifarflow.cli.common import S3Endpoint, app, make_store, out
from cifarflow.cli.train import quiet_tensorflow
from cifarflow.serve.promote import Decision
from cifarflow.storage import Store

log = logging.getLogger(__name__)

ModelUrl = Annotated[str, typer.Option("--model", help="Model URL written by `cifarflow train`.")]
Name = Annotated[str, typer.Option("--name", help="Model name in the V2 protocol's URLs.")]


@app.command()
def serve(
    *,
    model: ModelUrl,
    name: Name = "cifarflow",
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
    min_accuracy: Annotated[
        float, typer.Option("--min-accuracy", min=0.0, max=1.0, help="Floor: never promote below it.")
    ] = 0.0,
    tolerance: Annotated[
        float,
        typer.Option("--tolerance", min=0.0, max=1.0, help="Promote at the champion's accuracy minus this."),
    ] = 0.0,
    max_recall_drop: Annotated[
        float, typer.Option("--max-recall-drop", min=0.0, max=1.0, help="Largest fall of any class's recall.")
    ] = 0.10,
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

    decision = gate(
        model,
        store=make_store(s3_endpoint),
        record_url=champion,
        metrics_url=metrics,
        min_accuracy=min_accuracy,
        tolerance=tolerance,
        max_recall_drop=max_recall_drop,
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
    name: Name = "cifarflow",
    canary_percent: Annotated[
        int | None,
        typer.Option("--canary-percent", min=0, max=100, help="Traffic share of the new revision (canary)."),
    ] = None,
    runtime: Annotated[
        RuntimeChoice | None,
        typer.Option("--runtime", help="cifarflow: `cifarflow serve` (V2); tensorflow: TF Serving (V1)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the InferenceService; touch nothing.")
    ] = False,
    s3_endpoint: S3Endpoint = None,
) -> None:
    """Create or update the model's KServe InferenceService, wait until it is Ready, print its URL."""
    from cifarflow.k8s import inferenceservice as isvc
    from cifarflow.k8s.settings import K8sSettings

    settings = K8sSettings.from_env()
    serving = isvc.ServingSettings.from_env(runtime=runtime.value if runtime else None)
    if dry_run:
        import yaml

        body = isvc.build(
            settings, serving, name=isvc.service_name(name), model=model, canary_percent=canary_percent
        )
        typer.echo(yaml.safe_dump(body, sort_keys=False), nl=False)
        return
    from cifarflow.k8s.deploy import deploy as run_deploy

    result = run_deploy(
        model,
        name=name,
        canary_percent=canary_percent,
        settings=settings,
        serving=serving,
        store=make_store(s3_endpoint),
    )
    out(f"inferenceservice: {result.name}")
    out(f"action: {result.action}")
    out(f"url: {result.url}")


def promote_after_run(model_url: str, store: Store, *, serve: bool) -> None:
    """``cifarflow run``'s last steps: the gate, then (``--serve``) the champion served locally."""
    from cifarflow.serve.promote import promote as gate

    decision = gate(model_url, store=store)
    print_decision(decision)
    if serve:
        from cifarflow.serve.classifier import Classifier

        champion = model_url if decision.promoted or decision.champion is None else decision.champion.model
        run_server(Classifier.load(store, champion), name="cifarflow", port=8080)
