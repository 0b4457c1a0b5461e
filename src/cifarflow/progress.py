"""Progress bars and result lines: what a long step shows a person, shared by the CLI and the steps below it."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cifarflow.log import console


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
