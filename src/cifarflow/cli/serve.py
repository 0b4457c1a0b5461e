"""Serving commands: ``serve`` (a V2 inference server), ``promote`` (the champion gate), ``deploy`` (KServe)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from cifarflow.cli.common import S3Endpoint, app, make_store, out
from cifarflow.cli.train import quiet_tensorflow

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
