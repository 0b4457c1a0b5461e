"""PySpark's Python worker daemon, started from the installed pyspark (``spark.python.daemon.module``).

Spark puts the ``pyspark.zip`` it ships first on the workers' ``PYTHONPATH``. Modules imported from a zip are
compiled from source in every process (zipimport writes no bytecode cache): ~0.5 s in the daemon, then again
in each forked worker before its first task. When that zip is the one inside the installed pyspark wheel
(the same files), it is taken off ``sys.path`` so the cached bytecode loads instead, and ``pyspark.worker``
is imported once before the daemon forks, so workers start with it loaded. ``pyspark.worker`` starts no
thread on import (forking then is safe; pyarrow and pandas, which do, still load after the fork). Any other
layout (a Spark distribution's own zip) runs PySpark's daemon unchanged. Workers also keep freed memory for
reuse (:mod:`cifarflow.data.allocator`): pass 2's ~30 MB buffers are not page-faulted afresh for every range.
"""

from __future__ import annotations

import sys
from importlib.machinery import PathFinder
from pathlib import Path

from cifarflow.data.allocator import keep_freed_memory


def wheel_zips(path: list[str]) -> list[str]:
    """The entries of ``path`` that are zips shipped inside the installed pyspark (none when there is none)."""
    spec = PathFinder.find_spec("pyspark", [entry for entry in path if not entry.endswith(".zip")])
    if spec is None or spec.origin is None:
        return []
    lib = Path(spec.origin).parent / "python" / "lib"
    return [entry for entry in path if entry.endswith(".zip") and Path(entry).parent == lib]


def main() -> None:
    keep_freed_memory()  # every worker forked from here reuses freed batch buffers (allocator.py)
    zips = wheel_zips(sys.path)
    for entry in zips:
        sys.path.remove(entry)
    if zips:
        import pyspark.worker  # noqa: F401  (loaded once here, shared by every forked worker)
    from pyspark import daemon

    daemon.manager()


if __name__ == "__main__":
    main()
