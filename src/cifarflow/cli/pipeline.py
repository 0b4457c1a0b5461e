"""``cifarflow pipeline compile|submit|run-local``: the KFP pipeline from the command line."""

from __future__ import annotations

import logging
import sys

import typer

from cifarflow.cli.common import group, out, state

log = logging.getLogger(__name__)

pipeline_app = group("pipeline", "The Kubeflow pipeline: compile it, submit it to KFP, or run it here.")

ParamOption = typer.Option(
    [], "--param", "-p", metavar="KEY=VALUE", help="A pipeline parameter (repeatable), e.g. --param epochs=5."
)


@pipeline_app.command("compile")
def compile_(
    out_path: str | None = typer.Option(
        None, "--out", help="Where to write the YAML (default: pipelines/compiled/cifar10_pipeline.yaml)."
    ),
) -> None:
    """Compile the pipeline to KFP IR YAML (deterministic: unchanged code gives identical bytes)."""
    from cifarflow.pipeline import definition

    path = definition.compile_to(out_path or definition.default_output())
    out(f"compiled: {path}")


@pipeline_app.command()
def submit(
    *,
    host: str = typer.Option(
        ...,
        "--host",
        envvar="KF_PIPELINES_ENDPOINT",
        show_envvar=True,
        help="KFP API/UI URL, e.g. http://localhost:8080.",
    ),
    experiment: str = typer.Option("cifarflow", "--experiment", help="Experiment to file the run under."),
    namespace: str | None = typer.Option(
        None, "--namespace", help="Profile namespace (multi-user Kubeflow)."
    ),
    params: list[str] = ParamOption,
    service_account: str = typer.Option(
        "cifarflow-pipeline-runner",
        "--service-account",
        help="ServiceAccount the run's pods use (k8s/base deploys this one; '' = KFP's default).",
    ),
    pipeline_root: str | None = typer.Option(
        None,
        "--pipeline-root",
        help="Where KFP keeps the run's artifacts (default: KFP's configured root).",
    ),
    run_name: str | None = typer.Option(None, "--run-name", help="Display name of the run."),
) -> None:
    """Upload the pipeline (once per change) and start a run; prints the run's URL.

    The token comes from KF_PIPELINES_TOKEN (or KFP_TOKEN) when the endpoint needs one.
    """
    from cifarflow.pipeline import definition, inputs
    from cifarflow.pipeline import params as params_mod
    from cifarflow.pipeline import submit as submit_mod

    args = params_mod.parse(params, definition.pipeline_func())
    inputs.check_arguments(args)
    result = submit_mod.submit(
        host,
        params=args,
        experiment=experiment,
        namespace=namespace,
        service_account=service_account or None,
        pipeline_root=pipeline_root,
        run_name=run_name,
        token=submit_mod.token_from_env(),
    )
    log.info("pipeline version %s, run %s", result.version_name, result.run_id)
    out(f"run: {result.run_url}")


@pipeline_app.command("run-local")
def run_local(
    params: list[str] = ParamOption,
    workdir: str | None = typer.Option(
        None, "--workdir", help="Where data and models go (default ./work; same as --param workdir=...)."
    ),
    pipeline_root: str | None = typer.Option(
        None,
        "--pipeline-root",
        help="Local folder for KFP's own outputs and the run log (default: WORKDIR/kfp-local).",
    ),
    cache: bool = typer.Option(
        True, "--cache/--no-cache", help="Skip tasks whose inputs are unchanged (KFP's cache, kept locally)."
    ),
) -> None:
    """Run the same pipeline here with kfp.local: Spark local mode, TensorFlow on the CPU, no cluster."""
    from cifarflow.pipeline import definition, inputs, local
    from cifarflow.pipeline import params as params_mod

    given = params_mod.parse(params, definition.pipeline_func())
    inputs.check_arguments(given)
    arguments = local.arguments(given, workdir)
    run = local.run_local(
        arguments,
        pipeline_root=pipeline_root or local.default_root(str(arguments["workdir"])),
        echo=sys.stderr,
        verbose=state.verbose,
        cache=cache,
    )
    # Where things are: the originals in the workdir, then KFP's own record of the run (artifact copies).
    meta = {name: output.metadata for name, output in run.outputs.items()}
    out(f"dataset: {meta['dataset']['dataset_url']}")
    out(f"model: {meta['model']['saved_model_url']}")
    out(f"report: {meta['report']['report_url']}")
    for key, value in meta["metrics"].items():
        if isinstance(value, float | int):
            out(f"{key}: {value:.4g}")
    # The promotion gate's answer (deploy ran only on a yes).
    out(f"promoted: {str(meta['decision']['promoted'] == 1).lower()}")
    out(f"promotion: {meta['decision']['reason']}")
    out(f"kfp outputs: {run.run_dir}")
    out(f"log: {run.log_file}")
