"""Shared CLI plumbing: the typer app, global state, common options (progress and results: cifarflow.progress)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from cifarflow.progress import out, progress
from cifarflow.storage import StorageConfig, Store

__all__ = ["S3Endpoint", "app", "make_store", "out", "progress", "state"]

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
