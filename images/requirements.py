"""Print the requirements of ``cifarflow[EXTRA,...]`` from pyproject.toml, one per line.

The images install these in a layer of their own before the cifarflow wheel, so a code change rebuilds a
few-kilobyte layer instead of re-installing TensorFlow or Spark. Extras that name cifarflow itself
(``pipeline = ["cifarflow[k8s]", ...]``) are expanded.

    python3 images/requirements.py pyproject.toml spark
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

_SELF = re.compile(r"^\s*(?P<name>[A-Za-z0-9_.-]+)\s*\[(?P<extras>[^\]]*)\]\s*$")


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    name, optional = project["name"], project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            sys.stderr.write(
                f"error: {name} has no extra {extra!r} (fix: one of {', '.join(sorted(optional))})\n"
            )
            raise SystemExit(2)
        seen.add(extra)
        for req in optional[extra]:
            self_ref = _SELF.match(req)
            if self_ref and self_ref["name"] == name:
                todo.extend(e.strip() for e in self_ref["extras"].split(","))
            elif req not in out:
                out.append(req)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: requirements.py PYPROJECT EXTRA [EXTRA ...]")
    sys.stdout.write("".join(f"{line}\n" for line in requirements(Path(sys.argv[1]), sys.argv[2:])))
