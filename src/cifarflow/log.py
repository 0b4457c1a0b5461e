"""Logging set-up shared by the CLI and the jobs it starts."""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.logging import RichHandler

# Progress bars and log lines share one stderr console so they do not tear each other.
console = Console(stderr=True)


def setup(verbose: bool = False) -> None:
    """Route cifarflow's logs to stderr; ``CIFARFLOW_LOG_LEVEL`` overrides the level."""
    level = os.environ.get("CIFARFLOW_LOG_LEVEL", "DEBUG" if verbose else "INFO").upper()
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False, markup=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger("cifarflow")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Third-party chatter (py4j, botocore, TensorFlow) stays at WARNING unless asked for.
    for noisy in ("py4j", "botocore", "aiobotocore", "s3fs", "gcsfs", "urllib3", "kfp", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
