"""Run the KFP pipeline on this machine with ``kfp.local``: the same components, no cluster.

Each component runs as a subprocess of this Python (``use_venv=False``: the environment that has cifarflow),
with ``backend=local`` so preprocess runs Spark in local mode and train runs TensorFlow on the CPU. kfp.local
streams every task's output, executor inputs included, to stdout; here it goes to a log file under the
pipeline root; only task progress and cifarflow's own log lines reach the terminal (``cifarflow -v``: all).

kfp.local's limits, and how this pipeline stays inside them: it runs lightweight Python components only (every
component here is one); it cannot feed constant artifacts into a pipeline (none here: artifacts only flow
between tasks); integers in artifact metadata come back as floats (readers here use URIs and strings, never
metadata ints); platform settings (kfp-kubernetes Secrets, timeouts, images) are ignored, as there is no pod.
What runs is the compiled IR itself (the YAML a cluster gets), minus retries.

A failing step writes its error to the file ``$CIFARFLOW_ERROR_FILE`` names (:mod:`cifarflow.pipeline.contract`;
kfp.local's subprocesses inherit the variable), so the run fails with the step's own one-line error, of the
same type, without reading the step's output.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cifarflow.errors import CifarflowError, JobError
from cifarflow.pipeline import contract, definition

log = logging.getLogger(__name__)

# What differs from the cluster defaults when the pipeline runs here.
LOCAL_OVERRIDES = {"backend": "local", "s3_endpoint": ""}
DEFAULT_WORKDIR = "work"

# What reaches the terminal without -v: task progress and cifarflow's own log and error lines.
_PROGRESS = re.compile(
    r"Executing task|cache hit|finished with status|\b(INFO|WARNING|ERROR) cifarflow|^\s*error: "
)


@dataclass(frozen=True)
class Output:
    name: str
    kind: str
    uri: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class LocalRun:
    pipeline_root: Path
    log_file: Path
    outputs: dict[str, Output]
    seconds: float

    @property
    def run_dir(self) -> Path:
        """``<pipeline root>/<pipeline>-<timestamp>``: every task's outputs and executor_output.json."""
        any_output = next(iter(self.outputs.values()))
        return Path(any_output.uri).parents[1]


def arguments(params: dict[str, Any], workdir: str | None = None) -> dict[str, Any]:
    """The cluster defaults, with :data:`LOCAL_OVERRIDES` and a local workdir, under what the user gave."""
    chosen = {**LOCAL_OVERRIDES, "workdir": os.path.abspath(workdir or DEFAULT_WORKDIR)}
    return {**chosen, **params}


def default_root(workdir: str) -> str:
    """KFP's own outputs go under the workdir (``WORKDIR/kfp-local``) when it is a local folder."""
    local = workdir.removeprefix("file://")
    return os.path.join(local if "://" not in local else DEFAULT_WORKDIR, "kfp-local")


def run_local(
    params: dict[str, Any],
    *,
    pipeline_root: str | os.PathLike[str],
    echo: IO[str] | None,
    verbose: bool = False,
    cache: bool = True,
) -> LocalRun:
    """Run the compiled pipeline here. ``echo`` receives progress lines (all lines when ``verbose``).

    With ``cache``, kfp.local's task cache (under the pipeline root) skips a task whose inputs are unchanged:
    the same rule as in a cluster, so a second run of an unchanged dataset does not preprocess again.
    """
    from kfp import local

    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    logfile = root / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    with tempfile.TemporaryDirectory(prefix="cifarflow-local-") as tmp:
        pipeline = local_variant(definition.compile_to(Path(tmp) / "pipeline.yaml").read_text())
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        workspace_root=str(root / ".workspace"),  # else kfp.local leaves a fresh /tmp/kfp-workspace-* per run
        raise_on_error=True,
        enable_caching=cache,
        cache_root=str(root / ".kfp_cache"),
    )
    started = time.monotonic()
    error_file = root / f".error-{os.getpid()}.json"
    error_file.unlink(missing_ok=True)
    with open(logfile, "w", encoding="utf-8") as sink:
        tee = _Tee(sink, echo, verbose)
        try:
            with (
                contextlib.redirect_stdout(tee),
                _root_logging(tee),
                _environ(contract.ERROR_FILE_ENV, str(error_file)),
                warnings.catch_warnings(),
            ):
                # Image and resource settings mean nothing to the SubprocessRunner; it says so for every task.
                warnings.simplefilter("ignore", RuntimeWarning)
                warnings.simplefilter("ignore", UserWarning)
                task = pipeline(**params)
        except CifarflowError:
            raise
        except Exception as exc:
            raise failure(error_file, exc, logfile) from None
        finally:
            tee.flush()
            error_file.unlink(missing_ok=True)
    outputs = {name: _output(name, art) for name, art in (getattr(task, "outputs", None) or {}).items()}
    return LocalRun(root, logfile, outputs, time.monotonic() - started)


def failure(error_file: Path, exc: Exception, logfile: Path) -> CifarflowError:
    """The error to report: the failing step's own error, as it recorded it, else kfp.local's first line."""
    recorded = contract.read(error_file)
    if recorded is None:
        return JobError(f"the local pipeline run failed: {_first_line(exc)}", f"read the log in {logfile}")
    step, error = recorded
    return type(error)(
        f"step {step} failed: {error.problem}", error.fix or f"read the step's log in {logfile}"
    )


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment (the steps' subprocesses inherit it) while inside."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


@contextlib.contextmanager
def _root_logging(stream: io.TextIOBase) -> Iterator[None]:
    """kfp.local logs a cache hit to the root logger outside its per-task logging set-up; catch it too."""
    root = logging.getLogger()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
    level, handlers = root.level, root.handlers[:]
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def local_variant(compiled: str) -> Any:
    """The compiled pipeline as kfp.local runs it: the same IR, without retry policies.

    A failure here is nearly always deterministic (bad input, a bug), and kfp.local would sleep through each
    backoff before failing; in a cluster retries re-attach a restarted step to its Spark or TF job.
    The platform document (kfp-kubernetes settings) is dropped: there are no pods here.
    """
    import yaml
    from kfp import components

    spec = next(iter(yaml.safe_load_all(compiled)))
    for task in spec["root"]["dag"]["tasks"].values():
        task.pop("retryPolicy", None)
    return components.load_component_from_text(yaml.safe_dump(spec, sort_keys=False))


def _output(name: str, artifact: Any) -> Output:
    return Output(
        name=name,
        kind=getattr(artifact, "schema_title", type(artifact).__name__),
        uri=str(artifact.uri),
        metadata=dict(artifact.metadata),
    )


class _Tee(io.TextIOBase):
    """Everything to the log file; progress (or everything) to ``echo``."""

    def __init__(self, sink: IO[str], echo: IO[str] | None, verbose: bool) -> None:
        self.sink, self.echo, self.verbose = sink, echo, verbose
        self.partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.sink.write(text)
        self.partial += text
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        if self.partial:
            self._line(self.partial)
            self.partial = ""
        self.sink.flush()
        if self.echo is not None:
            self.echo.flush()

    def _line(self, line: str) -> None:
        if self.echo is not None and (self.verbose or _PROGRESS.search(_plain(line))):
            self.echo.write(line + "\n")


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _first_line(exc: BaseException) -> str:
    text = _plain(str(exc)).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
