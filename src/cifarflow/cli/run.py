"""``cifarflow run``: the whole pipeline in one process (ingest -> preprocess -> train -> evaluate)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from cifarflow.cli.common import S3Endpoint, app, field_option, make_store, out
from cifarflow.cli.train import DEFAULTS, BatchSize, Epochs, Model, print_scores, train_with
from cifarflow.config import PreprocessConfig, parse

log = logging.getLogger(__name__)

RUN_EPOCHS = 10  # a laptop-sized default: ResNet-20 on CPU, minutes per epoch on CIFAR-10


@app.command()
def run(
    *,
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="cifar10, cifar100, a CIFAR tarball, or an image folder or archive (path, URL, bucket).",
        ),
    ] = "cifar10",
    workdir: Annotated[
        str, typer.Option("--workdir", help="Local folder or bucket URL for every step.")
    ] = "work",
    epochs: Epochs = RUN_EPOCHS,
    batch_size: BatchSize = DEFAULTS["batch_size"],
    model: Model = DEFAULTS["model"],
    master: Annotated[
        str | None, typer.Option("--master", help="Spark master for preprocessing (default: local[*]).")
    ] = None,
    run_name: Annotated[
        str | None,
        typer.Option(
            "--run-name",
            help="Name of the model folder under WORKDIR/models/<dataset>/ (default: model and settings hash).",
        ),
    ] = None,
    image_size: Annotated[int | None, field_option(PreprocessConfig, "image_size")] = None,
    serve: Annotated[
        bool, typer.Option("--serve", help="Then serve the champion (V2 protocol, port 8080) until Ctrl-C.")
    ] = False,
    s3_endpoint: S3Endpoint = None,
) -> None:
    """Ingest, preprocess (Spark), train (TensorFlow), evaluate and promote; prints where the report is.

    Every step is idempotent: rerunning reuses the ingested archive and the dataset, and training resumes from
    its last checkpoint. A run is named by its settings: other settings train into their own folder.
    """
    from cifarflow.backends import PreprocessRequest, get_backend
    from cifarflow.data.ingest import ingest
    from cifarflow.layout import Workdir
    from cifarflow.train import runs
    from cifarflow.train.config import parse_config
    from cifarflow.train.evaluate import evaluate

    if run_name:
        runs.check_run_name(run_name)  # before minutes of ingest and Spark
    # The other preprocess parameters keep their defaults, as `cifarflow preprocess` and the pipeline have them.
    params = parse(PreprocessConfig, {"image_size": image_size})
    store = make_store(s3_endpoint)
    where = Workdir.at(workdir)
    landed = ingest(source, where.ingest_dest, store=store)
    out(f"raw: {landed.raw_url}")
    request = PreprocessRequest(landed.raw_url, where.datasets, params, master=master)
    dataset_id = get_backend("local", store=store).preprocess(request).outputs["dataset"]
    dataset_url = where.dataset(dataset_id)
    out(f"dataset: {dataset_url}")
    cfg = parse_config(
        {
            "data": dataset_url,
            "out": "",  # named below, after the settings that define the run
            "epochs": epochs,
            "batch_size": batch_size,
            "model": str(model),
            "evaluate": False,
            "s3_endpoint": s3_endpoint,
        }
    )
    model_url = runs.model_url(where.models, dataset_id, cfg, run_name)
    cfg = cfg.model_copy(update={"out": model_url})
    train_with("local", cfg, run_name or cfg.run_name(dataset_id))
    out(f"model: {model_url}")
    print_scores(evaluate(dataset_url, model_url, model_url, store=store))
    from cifarflow.cli.serve import promote_after_run

    promote_after_run(model_url, store, serve=serve)
