"""The ``cifarflow`` command line. Each sub-module adds its commands to :data:`app`.

Heavy engines (pyspark, tensorflow, kfp) are imported inside the commands, so ``cifarflow --help`` is instant and
each image only needs the extra for the steps it runs.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import signal
import sys
from typing import Any

import click
import typer

from cifarflow import __version__
from cifarflow import log as cflog
from cifarflow.cli.common import app, state
from cifarflow.errors import CifarflowError


def _print_version(value: bool) -> None:
    # Eager: runs while the options are parsed, before click insists on a command.
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
    ),
) -> None:
    """CIFAR-10 from a bucket to an evaluated model: Spark preprocessing, TensorFlow training, Kubeflow."""
    state.verbose = verbose
    cflog.setup(verbose)


# Register the command groups (import for side effects: each module decorates `app`).
from cifarflow.cli import data as _data  # noqa: E402,F401
from cifarflow.cli import k8s as _k8s  # noqa: E402,F401
from cifarflow.cli import pipeline as _pipeline  # noqa: E402,F401
from cifarflow.cli import run as _run  # noqa: E402,F401
from cifarflow.cli import serve as _serve  # noqa: E402,F401
from cifarflow.cli import train as _train  # noqa: E402,F401

try:  # typer >= 0.24 vendors click: its usage errors are not click's classes
    from typer._click.exceptions import ClickException as _TyperClickException
except ImportError:  # an older typer raises click's own
    from click import ClickException as _TyperClickException  # type: ignore[assignment]


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a pod being stopped), raised like Ctrl-C so that the same clean-up runs."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


def _invoke(command: Any, argv: list[str] | None) -> Any:
    """Run the command without typer's ``main``: it turns Ctrl-C into a bare exit 130 with no message."""
    args = sys.argv[1:] if argv is None else list(argv)
    with command.make_context("cifarflow", args) as ctx:
        return command.invoke(ctx)


@functools.cache
def _no_collection_at_exit() -> None:
    """Have the interpreter's exit skip its garbage collections over the whole heap (0.1-0.15 s of a Spark
    job's exit): :func:`gc.freeze` runs after the exit handlers the command's work registers (registered
    before them, it runs after them); objects are still freed by their reference counts, only the cycles
    among them are left to the OS."""
    atexit.register(gc.freeze)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user-facing failures become one ``error:`` line and exit code 2."""
    _no_collection_at_exit()
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread (an embedding program): keep its handler
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> None:
    command = typer.main.get_command(app)
    try:
        rv = _invoke(command, argv)
    except CifarflowError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
    except Terminated:
        sys.stderr.write(
            "error: terminated by SIGTERM (fix: rerun the same command; finished work is reused)\n"
        )
        sys.exit(128 + signal.SIGTERM)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        sys.stderr.write("error: interrupted (fix: rerun the same command; finished work is reused)\n")
        sys.exit(130)
    except (click.exceptions.Exit, typer.Exit) as exc:
        sys.exit(exc.exit_code)
    except (click.ClickException, _TyperClickException) as exc:
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)
