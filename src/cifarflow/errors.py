"""Errors a user can act on.

Every failure a user can cause (bad input, unreachable bucket, wrong credentials) is raised as a
:class:`CifarflowError`. The CLI prints it as one line, ``error: <problem> (fix: <hint>)``, and exits non-zero;
nothing else is printed, so scripts and KFP logs show the cause at a glance.
"""

from __future__ import annotations


class CifarflowError(Exception):
    """A failure with a one-line explanation and, where there is one, the fix."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem} (fix: {self.fix})" if self.fix else self.problem


class InputError(CifarflowError):
    """The data given to a step is not what it needs (corrupt archive, bad pickle, wrong shapes...)."""


class StorageError(CifarflowError):
    """A bucket or path cannot be read or written (unreachable endpoint, credentials, permissions)."""


class ConflictError(CifarflowError):
    """The destination already holds something different from what this step would write."""


class JobError(CifarflowError):
    """A Spark, TensorFlow or Kubernetes job failed."""


# Spark and multi-process TensorFlow wrap task exceptions in their own (JVM or RPC) errors. Tasks raise with this
# marker so the driver can recover the original one-line message from the wrapper's text.
MARKER = "CIFARFLOW-ERROR"


def marked(err: CifarflowError) -> str:
    """Encode an error so it survives being wrapped by Spark's Py4J exceptions."""
    return f"{MARKER}[{type(err).__name__}]{err.problem}|{err.fix or ''}{MARKER}"


def unmark(text: str) -> CifarflowError | None:
    """Recover a :func:`marked` error from any text that contains one, else ``None``."""
    start = text.find(MARKER + "[")
    if start < 0:
        return None
    end = text.find(MARKER, start + len(MARKER))
    if end < 0:
        return None
    body = text[start + len(MARKER) + 1 : end]
    kind, _, rest = body.partition("]")
    problem, _, fix = rest.partition("|")
    cls = {c.__name__: c for c in (CifarflowError, InputError, StorageError, ConflictError, JobError)}.get(
        kind, CifarflowError
    )
    return cls(problem, fix or None)
