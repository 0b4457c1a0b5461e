"""The error contract inside a KFP pod: a user-facing failure is one ``error:`` line and exit 2.

KFP shows a step's log; one line naming the problem and the fix reads better there than a traceback. Where
``$CIFARFLOW_ERROR_FILE`` is set (``pipeline run-local`` sets it), the step also writes its failure there as
JSON, so the runner reports it by type without reading the step's output.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cifarflow import errors
from cifarflow.errors import CifarflowError, JobError

ERROR_FILE_ENV = "CIFARFLOW_ERROR_FILE"
T = TypeVar("T")
_KNOWN: dict[str, type[CifarflowError]] = {
    cls.__name__: cls
    for cls in (errors.InputError, errors.StorageError, errors.ConflictError, errors.JobError, CifarflowError)
}


def step(func: Callable[..., T]) -> Callable[..., T]:
    """Run a step with cifarflow's logging and this error contract."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        from cifarflow import log as cflog

        cflog.setup()
        try:
            return func(*args, **kwargs)
        except CifarflowError as exc:
            record(func.__name__, exc)
            sys.stderr.write(f"error: {exc}\n")
            sys.stderr.flush()
            raise SystemExit(exc.exit_code) from None
        except Exception as exc:  # a bug: the traceback stays in the log; the runner gets its one line
            record(func.__name__, exc)
            raise

    return wrapper


def record(step_name: str, exc: BaseException) -> None:
    """Write the failure to ``$CIFARFLOW_ERROR_FILE`` (if set): the step, the error's classes, its text."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path:
        return
    entry = {
        "step": step_name,
        "types": [cls.__name__ for cls in type(exc).__mro__],
        "problem": exc.problem if isinstance(exc, CifarflowError) else f"{type(exc).__name__}: {exc}",
        "fix": exc.fix if isinstance(exc, CifarflowError) else None,
    }
    Path(path).write_text(json.dumps(entry), encoding="utf-8")


def read(path: Path) -> tuple[str, CifarflowError] | None:
    """The failed step and its error, rebuilt as the nearest cifarflow error class; ``None`` if none failed."""
    if not path.is_file() or not path.read_text(encoding="utf-8").strip():
        return None
    entry = json.loads(path.read_text(encoding="utf-8"))
    cls = next((_KNOWN[name] for name in entry["types"] if name in _KNOWN), JobError)
    return str(entry["step"]), cls(str(entry["problem"])[:300], entry.get("fix"))
