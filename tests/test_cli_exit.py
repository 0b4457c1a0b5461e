"""The command line's exit leaves the heap to the OS instead of collecting it (cli._no_collection_at_exit)."""

from __future__ import annotations

import subprocess
import sys

# Registered before main(), so it runs after main's own exit handlers (atexit runs them last-in first-out).
PROBE = """
import atexit, gc
atexit.register(lambda: print("frozen" if gc.get_freeze_count() else "not frozen"))
from cifarflow.cli import main
main(["--version"])
"""


def test_the_heap_is_frozen_once_the_command_has_exited() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "frozen"
