"""Shared CLI plumbing: the typer app, global state, common options, progress bars."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cifarflow.log import console
from cifarflow.storage import StorageConfig, Store

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class State:
    verbose: bool = False


state = State()

S3Endpoint = Annotated[
    str | None,
    typer.Option(
        "--s3-endpoint",
        envvar="AWS_ENDPOINT_URL",
        help="S3 API endpoint for s3:// URLs (MinIO, SeaweedFS). Credentials come from the usual AWS variables.",
        show_envvar=True,
    ),
]


def make_store(s3_endpoint: str | None) -> Store:
    return Store(StorageConfig.from_env(s3_endpoint))


def progress() -> Progress:
    """A progress bar on stderr that disappears when stdout/stderr are not a terminal (CI, KFP logs)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


def out(line: str) -> None:
    """Results go to stdout (one fact a line) so scripts can read them; logs go to stderr."""
    typer.echo(line)
