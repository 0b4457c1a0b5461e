"""Shared CLI plumbing: the typer app, global state, common options (progress and results: cifarflow.progress)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import typer
from pydantic import BaseModel

from cifarflow import config
from cifarflow.backends.base import BackendName
from cifarflow.progress import out, progress
from cifarflow.storage import StorageConfig, Store

if TYPE_CHECKING:
    from cifarflow.backends import Result

    BackendChoice: TypeAlias = str  # mypy sees the string the enum holds
else:
    BackendChoice = config.choices("BackendChoice", BackendName)  # --backend's choices: get_backend's names

__all__ = [
    "BackendChoice",
    "S3Endpoint",
    "app",
    "field_option",
    "group",
    "make_store",
    "out",
    "print_result",
    "progress",
    "state",
]

# Plain click help (rich_markup_mode=None): rich's option table cuts long option names in an 80-column
# terminal (`--label-smoothi…`); click's layout wraps the help text and shows every name whole.
SETTINGS: dict[str, Any] = {
    "no_args_is_help": True,
    "rich_markup_mode": None,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, **SETTINGS)


def group(name: str, help_text: str) -> typer.Typer:
    """A command group (``cifarflow NAME ...``) with the app's help layout."""
    sub = typer.Typer(help=help_text, **SETTINGS)
    app.add_typer(sub, name=name)
    return sub


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


def field_option(model: type[BaseModel], name: str, **kw: Any) -> Any:
    """A typer option for the field ``name`` of ``model``: its flag and help come from the field. Its bounds
    are the model's to check (one line naming the option, the same wherever the value comes from)."""
    flag = config.flag(name)
    decl = f"--{flag}/--no-{flag}" if model.model_fields[name].annotation in (bool, "bool") else f"--{flag}"
    return typer.Option(decl, help=config.describe(model, name), **kw)


def print_result(result: Result) -> None:
    """A backend's result as ``key: value`` lines on stdout."""
    for line in result.lines():
        out(line)
