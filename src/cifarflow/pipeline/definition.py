"""Find, import and compile the KFP pipeline defined in the top-level ``pipelines/`` package.

``pipelines/`` is KFP wiring only and is not a module of the installed wheel; it is imported as the regular
package ``pipelines`` (the name tests and mypy use) from the first of:

1. ``$CIFARFLOW_PIPELINES_DIR`` (a folder named ``pipelines``: the pipeline image copies it to
   /opt/cifarflow/pipelines and sets this);
2. the source checkout this package runs from (``<repo>/pipelines``: editable installs, CI).

Its parent folder joins the end of ``sys.path`` (nothing else is patched), so ``import pipelines`` then works
as anywhere. Compiling is deterministic (same sources, same kfp => byte-identical YAML), which the drift test
relies on.
"""

from __future__ import annotations

import hashlib
import importlib
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
PACKAGE = "pipelines"
MODULE = "cifar10_pipeline"
FUNCTION = "cifar10_pipeline"
COMPILED = Path("compiled") / "cifar10_pipeline.yaml"

_CHECKOUT = Path(__file__).resolve().parents[3] / PACKAGE  # src/cifarflow/pipeline/definition.py -> <repo>


def locate() -> Path:
    """The folder holding ``cifar10_pipeline.py``, or an error naming where it was looked for."""
    env = os.environ.get(ENV_DIR)
    folder = Path(env) if env else _CHECKOUT
    if (folder / f"{MODULE}.py").is_file():
        return folder
    raise InputError(
        f"no pipeline definition ({MODULE}.py) in {folder}",
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
    """Import the package ``pipelines`` from :func:`locate`'s folder and return its pipeline module."""
    folder = locate().resolve()
    if folder.name != PACKAGE:
        raise InputError(f"{folder} is not named {PACKAGE}/", f"point {ENV_DIR} at a folder named {PACKAGE}")
    if str(folder.parent) not in sys.path:
        sys.path.append(str(folder.parent))
    module = importlib.import_module(f"{PACKAGE}.{MODULE}")
    found = Path(str(module.__file__)).resolve().parent
    if found != folder:  # another `pipelines` package came first on sys.path, or was imported already
        raise InputError(
            f"`import {PACKAGE}` finds {found}, not {folder}",
            f"run from one checkout, or unset {ENV_DIR}",
        )
    return module


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
