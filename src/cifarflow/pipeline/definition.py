"""Find, load and compile the KFP pipeline defined in the top-level ``pipelines/`` folder.

``pipelines/`` is KFP wiring only and is not a module of the installed package, so it is loaded by path, as
the package ``cifarflow_pipelines``, from the first of:

1. ``$CIFARFLOW_PIPELINES_DIR`` (set by the pipeline image, or by anyone keeping the wiring elsewhere);
2. the source checkout this package runs from (``<repo>/pipelines``: editable installs, CI);
3. a copy inside an installed wheel (``cifarflow/pipeline/_pipelines``, when the wheel is built with one:
   hatch's ``force-include``).

Compiling is deterministic (same sources, same kfp => byte-identical YAML), which the drift test relies on.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from cifarflow.errors import InputError

log = logging.getLogger(__name__)

ENV_DIR = "CIFARFLOW_PIPELINES_DIR"
PACKAGE = "cifarflow_pipelines"
MODULE = "cifar10_pipeline"
FUNCTION = "cifar10_pipeline"
COMPILED = Path("compiled") / "cifar10_pipeline.yaml"

_HERE = Path(__file__).resolve()
_CHECKOUT = _HERE.parents[3] / "pipelines"  # src/cifarflow/pipeline/definition.py -> <repo>/pipelines
_WHEEL_COPY = _HERE.parent / "_pipelines"


def locate() -> Path:
    """The folder holding ``cifar10_pipeline.py``, or an error naming where it was looked for."""
    env = os.environ.get(ENV_DIR)
    candidates = [Path(env)] if env else [_CHECKOUT, _WHEEL_COPY]
    for folder in candidates:
        if (folder / f"{MODULE}.py").is_file():
            return folder
    shown = ", ".join(str(p) for p in candidates)
    raise InputError(
        f"no pipeline definition ({MODULE}.py) in {shown}",
        f"run from a cifarflow checkout, or set {ENV_DIR} to the folder holding pipelines/{MODULE}.py",
    )


def is_checkout(folder: Path) -> bool:
    return folder.resolve() == _CHECKOUT.resolve()


def default_output() -> Path:
    """Where ``pipeline compile`` writes by default: the committed file in a checkout, else the current
    folder."""
    folder = locate()
    return folder / COMPILED if is_checkout(folder) else Path(COMPILED.name)


def load() -> ModuleType:
    """Import ``pipelines/`` as the package :data:`PACKAGE` and return its pipeline module."""
    return _load(locate().resolve())


@functools.cache
def _load(folder: Path) -> ModuleType:
    # A second folder in one process (tests, CIFARFLOW_PIPELINES_DIR changed) gets a package name of its own.
    name = (
        PACKAGE
        if PACKAGE not in sys.modules
        else f"{PACKAGE}_{hashlib.sha256(bytes(folder)).hexdigest()[:8]}"
    )
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:  # pragma: no cover - only for a folder without __init__.py
        raise InputError(f"{folder} is not a Python package", f"add {folder / '__init__.py'}")
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{name}.{MODULE}")


def pipeline_func() -> Any:
    """The ``@dsl.pipeline`` function (a kfp ``GraphComponent``)."""
    return getattr(load(), FUNCTION)


def pipeline_name() -> str:
    return str(load().PIPELINE_NAME)


def compile_to(path: str | os.PathLike[str]) -> Path:
    """Compile the pipeline to ``path`` (atomically: readers never see half a file). Returns the path."""
    from kfp import compiler

    out = Path(path)
    if out.suffix not in (".yaml", ".yml"):
        raise InputError(
            f"{out} does not end in .yaml", "KFP reads pipeline packages as YAML: name it *.yaml"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "wb", dir=out.parent, prefix=f".{out.stem}.", suffix=".tmp.yaml", delete=False
    ) as tmp:
        staged = Path(tmp.name)
    try:
        compiler.Compiler().compile(pipeline_func=pipeline_func(), package_path=str(staged))
        umask = os.umask(0)
        os.umask(umask)
        staged.chmod(0o666 & ~umask)  # a temporary file is private; the compiled pipeline is not
        os.replace(staged, out)
    finally:
        staged.unlink(missing_ok=True)
    log.debug("compiled %s to %s", FUNCTION, out)
    return out


def digest(path: str | os.PathLike[str]) -> str:
    """Short content hash of a compiled pipeline: names the pipeline version it is uploaded as."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
