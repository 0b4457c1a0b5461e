"""The Dockerfiles as text: lint-clean, pinned, non-root, in step with .dockerignore and the constraints."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from cifarflow.k8s.podspec import RUN_AS

from .helpers import IMAGES, REPO, tool

DIGEST_PINNED = re.compile(r"^python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$")


DOCKERFILE = REPO / "images" / "Dockerfile"


def parse(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


ALL = parse(DOCKERFILE.read_text())


def stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions, by the name after AS."""
    out: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, rest in ALL:
        if keyword == "FROM":
            current = out.setdefault(rest.rpartition(" AS ")[2], [])
        current.append((keyword, rest))
    return out


def target(name: str) -> list[tuple[str, str]]:
    """What one image runs: the shared runtime stage, then its own."""
    return stages()["runtime"] + stages()[name]


def test_hadolint_clean() -> None:
    proc = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKERFILE)], check=False, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_one_dockerfile_a_builder_a_runtime_and_a_target_per_image() -> None:
    keyword, arg = ALL[0]
    assert keyword == "ARG" and arg.startswith("BASE_IMAGE="), "the first line must be ARG BASE_IMAGE=..."
    assert DIGEST_PINNED.match(arg.removeprefix("BASE_IMAGE="))
    froms = [rest for keyword, rest in ALL if keyword == "FROM"]
    assert froms == [
        "${BASE_IMAGE} AS builder",
        "${BASE_IMAGE} AS runtime",
        *(f"runtime AS {name}" for name in IMAGES),
    ]
    assert not list((REPO / "images").glob("*/Dockerfile")), "one Dockerfile: images/Dockerfile"


def test_wheel_is_built_once_in_the_builder() -> None:
    wheels = [
        (name, rest) for name, steps in stages().items() for keyword, rest in steps if "pip wheel" in rest
    ]
    assert [name for name, _ in wheels] == ["builder"]
    assert "--no-deps" in wheels[0][1]


@pytest.mark.parametrize("name", IMAGES)
def test_each_target_mounts_the_wheel_and_installs_pinned_deps(name: str) -> None:
    runs = [rest for keyword, rest in target(name) if keyword == "RUN"]
    installs = [run for run in runs if "from=builder" in run]
    assert len(installs) == 1
    assert "pip install --no-deps" in installs[0]
    # The deps layer: everything pinned by the project's constraints.
    assert any("-c /tmp/build/constraints.txt" in run and "requirements.py" in run for run in runs)


@pytest.mark.parametrize("name", IMAGES)
def test_runs_as_the_uid_the_pods_use(name: str) -> None:
    users = [rest for keyword, rest in target(name) if keyword == "USER"]
    assert users == [str(RUN_AS)], "one numeric, non-root USER, the uid cifarflow.k8s runs pods as"
    assert RUN_AS > 0


def test_no_secrets_in_build_arguments_or_environment() -> None:
    for keyword, rest in ALL:
        if keyword in ("ARG", "ENV"):
            assert not re.search(r"(TOKEN|PASSWORD|SECRET|_KEY)\b", rest, re.IGNORECASE), rest


@pytest.mark.parametrize("name", IMAGES)
def test_entrypoint_runs_under_tini(name: str) -> None:
    (entrypoint,) = [rest for keyword, rest in target(name) if keyword == "ENTRYPOINT"]
    assert entrypoint.startswith('["/usr/bin/tini", "--"')


def test_only_the_spark_target_has_java() -> None:
    for name in IMAGES:
        java = any("openjdk" in rest for keyword, rest in target(name) if keyword == "RUN")
        assert java == (name == "spark"), name


def _pattern(glob: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob: ``**/`` any folders (or none), ``*`` and ``?`` within one path segment."""
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(glob[i], re.escape(glob[i]))
            i += 1
    return re.compile(out)


def allowed_by_dockerignore(path: str) -> bool:
    """Whether ``path`` (relative to the repo) reaches the build context: the last matching line decides, and
    a line that matches a folder matches everything in it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    allowed = True
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate, glob = line.startswith("!"), line.removeprefix("!").rstrip("/")
        if any(_pattern(glob).fullmatch(prefix) for prefix in prefixes):
            allowed = negate
    return allowed


def context_sources() -> set[str]:
    """Paths the Dockerfile takes from the build context: COPY sources and bind mounts without from=."""
    sources: set[str] = set()
    for keyword, rest in ALL:
        if keyword == "COPY" and "--from" not in rest:
            sources.update(shlex.split(rest)[:-1])
        for mount in re.findall(r"--mount=(\S+)", rest):
            opts = dict(opt.split("=", 1) for opt in mount.split(",") if "=" in opt)
            if opts.get("type") == "bind" and "from" not in opts:
                sources.add(opts["source"])
    return {source.rstrip("/") for source in sources}


def test_dockerignore_lets_in_what_the_dockerfile_uses() -> None:
    for source in context_sources():
        assert (REPO / source).exists(), source
        assert allowed_by_dockerignore(source), (
            f"{source} is used by images/Dockerfile but kept out by .dockerignore"
        )


@pytest.mark.parametrize("path", [".venv", ".git", "work", "tests", ".cache", "docs", "src/__pycache__"])
def test_dockerignore_keeps_out_what_no_image_needs(path: str) -> None:
    assert not allowed_by_dockerignore(path)


def requirements(*extras: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, str(REPO / "images" / "requirements.py"), str(REPO / "pyproject.toml"), *extras],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.splitlines()


def test_requirements_expand_extras_that_name_cifarflow_itself() -> None:
    pipeline = requirements("pipeline")
    assert "kfp==2.17.0" in pipeline
    assert any(req.startswith("kubernetes") for req in pipeline), (
        "the k8s extra comes in through cifarflow[k8s]"
    )
    assert not any(req.startswith("cifarflow") for req in pipeline)


@pytest.mark.parametrize("extra", ["spark", "train", "pipeline", "serve"])
def test_every_image_dependency_is_pinned_by_the_constraints(extra: str) -> None:
    pinned = {
        re.split(r"==", line)[0].lower().replace("_", "-")
        for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines()
        if "==" in line
    }
    for req in requirements(extra):
        name = re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pinned, f"{req} (cifarflow[{extra}]) has no pin in requirements/constraints.txt"


def test_unknown_extra_is_one_clear_error() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "images" / "requirements.py"), str(REPO / "pyproject.toml"), "sparkk"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: cifarflow has no extra 'sparkk' (fix: one of dev, k8s, pipeline, serve, spark, train)"
    )


def test_spark_image_ships_the_application_file_the_sparkapplication_names() -> None:
    steps = target("spark")
    copies = [rest for keyword, rest in steps if keyword == "COPY"]
    assert "images/spark/main.py /opt/cifarflow/main.py" in copies
    main_py = (REPO / "images" / "spark" / "main.py").read_text()
    assert "from cifarflow.cli import main" in main_py
    rendered = (REPO / "k8s" / "base" / "jobs" / "preprocess.yaml").read_text()
    assert "mainApplicationFile: local:///opt/cifarflow/main.py" in rendered
