"""The shell scripts: shellcheck-clean, and their --dry-run prints every command a real run would run.

The minikube path cannot run here (no cluster, no minikube); its dry run is what CI can check: the steps,
their order and the pinned versions.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from .helpers import REPO, path_without, tool

SCRIPTS = sorted((REPO / "scripts").glob("*.sh")) + sorted((REPO / "images").glob("*/*.sh"))


def dry_run(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts" / script), "--dry-run", *args],
        check=False,
        capture_output=True,
        text=True,
        env=os.environ | (env or {}),
        timeout=60,
    )


def commands(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    return [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]


def index(lines: list[str], fragment: str) -> int:
    found = [i for i, line in enumerate(lines) if fragment in line]
    assert found, f"no command contains {fragment!r}:\n" + "\n".join(lines)
    return found[0]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shellcheck_clean(script: Path) -> None:
    proc = subprocess.run(
        [tool("shellcheck"), "--external-sources", str(script)],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout


def test_images_test_dry_run_shows_the_whole_stage(tmp_path: Path) -> None:
    lines = commands(dry_run("images-test.sh", env={"CACHE_DIR": str(tmp_path)}))
    steps = [
        "pip wheel",
        "debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm",
        "dockerd --data-root",
        "docker import",
        "--target spark",
        "--target trainer",
        "--target pipeline",
        "pytest -m docker",
        "kill -TERM",
        "rm -rf /tmp/cifarflow-dockerd.",
    ]
    order = [index(lines, step) for step in steps]
    assert order == sorted(order), "the stage's steps are out of order"
    dockerd = lines[index(lines, "dockerd --data-root")]
    for flag in ("--pidfile", "-H unix://", "--exec-root", "--bridge=none", "--iptables=false"):
        assert flag in dockerd
    for build in (line for line in lines if " build " in line):
        assert "--build-arg BASE_IMAGE=cifarflow-standin:bookworm" in build
        assert "--build-arg PIP_NO_INDEX=1" in build
    assert "--build-arg TF_EXTRAS= " in lines[index(lines, "--target trainer")]


TOOLS = {"docker", "dockerd", "debootstrap"}


def test_images_test_uses_its_caches(tmp_path: Path) -> None:
    """A second run reuses the stand-in tarball and the wheelhouse instead of rebuilding them."""
    key = subprocess.run(
        ["sha256sum"],
        input=(REPO / "pyproject.toml").read_text() + (REPO / "requirements" / "constraints.txt").read_text(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout[:12]
    cache = tmp_path / "cache"
    (cache / "wheelhouse").mkdir(parents=True)
    (cache / "wheelhouse" / ".stamp").write_text(key + "\n")
    # A machine where the image stage's packages are installed (stubs), whatever this one has.
    env = {"CACHE_DIR": str(cache), "PATH": path_without(tmp_path / "bin", TOOLS, stubs=tuple(TOOLS))}
    first = dry_run("images-test.sh", env=env)
    tarball = next(
        line.split()[-1] for line in commands(first) if line.startswith("mv ") and line.endswith(".tar")
    )
    Path(tarball).write_bytes(b"cached")
    again = dry_run("images-test.sh", env=env)
    lines = commands(again)
    assert not [line for line in lines if "apt-get" in line or "debootstrap " in line or "pip wheel" in line]
    assert "stand-in base cached" in again.stderr and "wheelhouse cached" in again.stderr


def test_images_test_on_a_fresh_machine_installs_first_then_uses_debians_client(tmp_path: Path) -> None:
    """No docker.io, no debootstrap, only a foreign docker client on PATH: the stage installs both packages before
    any docker command, and never uses the foreign client (it has no buildx)."""
    path = path_without(tmp_path / "bin", TOOLS)
    foreign = tmp_path / "bin" / "docker"
    foreign.write_text("#!/bin/sh\nexit 1\n")
    foreign.chmod(0o755)
    lines = commands(dry_run("images-test.sh", env={"CACHE_DIR": str(tmp_path / "cache"), "PATH": path}))
    install = index(lines, "apt-get install")
    assert "docker.io" in lines[install] and "debootstrap" in lines[install]
    docker_commands = [i for i, line in enumerate(lines) if " build " in line or " import " in line]
    assert docker_commands and min(docker_commands) > install
    assert not [line for line in lines if str(foreign) in line]


def test_docker_client_is_the_one_installed_with_dockerd(tmp_path: Path) -> None:
    path = path_without(tmp_path / "bin", TOOLS)
    # Debian's layout: /usr/sbin/dockerd, /usr/bin/docker; a foreign client earlier on PATH.
    debian = tmp_path / "usr"
    foreign = tmp_path / "local"
    for fake in (debian / "sbin" / "dockerd", debian / "bin" / "docker", foreign / "docker"):
        fake.parent.mkdir(parents=True, exist_ok=True)
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(0o755)
    proc = subprocess.run(
        ["bash", "-c", f"source {REPO / 'scripts' / 'dockerd.sh'} && docker_cli"],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ | {"PATH": f"{foreign}:{path}:{debian / 'sbin'}:{debian / 'bin'}"},
    )
    assert proc.stdout.strip() == str(debian / "bin" / "docker")


def test_images_test_rejects_an_unknown_image() -> None:
    proc = dry_run("images-test.sh", "--images", "spark,gpu")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: no image named 'gpu' (fix: choose from spark, trainer, pipeline)"


def test_dockerd_dry_run_starts_and_stops_by_pid() -> None:
    start = commands(dry_run("dockerd.sh", "start", "/tmp/cf-dockerd"))
    assert start[-1].startswith("dockerd --data-root /tmp/cf-dockerd/data --exec-root /tmp/cf-dockerd/exec")
    assert "--pidfile /tmp/cf-dockerd/dockerd.pid -H unix:///tmp/cf-dockerd/docker.sock" in start[-1]
    stop = commands(dry_run("dockerd.sh", "stop", "/tmp/cf-dockerd"))
    assert stop[0] == 'kill -TERM "$(cat /tmp/cf-dockerd/dockerd.pid)"'
    assert stop[-1] == "rm -rf /tmp/cf-dockerd"


@pytest.mark.skipif(os.geteuid() != 0, reason="dockerd.sh start needs root (CI runs as root)")
def test_a_daemon_that_cannot_start_fails_with_one_clear_line(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "dockerd"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'failed to start daemon: overlay2 is not supported here' >&2\nexit 1\n")
    fake.chmod(0o755)
    root = tmp_path / "dockerd"
    proc = subprocess.run(
        [str(REPO / "scripts" / "dockerd.sh"), "start", str(root)],
        check=False,
        capture_output=True,
        text=True,
        env=os.environ | {"PATH": f"{fake.parent}:{os.environ['PATH']}", "DOCKERD_DATA_ON_LOOP": "0"},
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: the Docker daemon exited at start: failed to start daemon: overlay2 is not supported here "
        f"(fix: read {root}/dockerd.log; dockerd needs root, overlayfs and cgroups "
        "(a VM or a privileged container))"
    )


def test_minikube_up_dry_run_installs_pinned_versions_then_deploys_and_submits() -> None:
    lines = commands(dry_run("minikube-up.sh", "--gpus", "none"))
    steps = [
        "minikube start --profile minikube --cpus 6 --memory 12g",
        "pipelines/manifests/kustomize/cluster-scoped-resources?ref=2.14.3",
        "training-operator.git/manifests/overlays/standalone?ref=v1.9.4",
        "spark-operator/spark-operator --version 2.5.2",
        "skaffold run --profile minikube --kube-context minikube",
        "get job cifarflow-pipeline-submit",
        "port-forward svc/ml-pipeline-ui 8080:80",
        "pipeline submit --host http://localhost:8080",
    ]
    order = [index(lines, step.replace("?", "\\?")) for step in steps]
    assert order == sorted(order)
    assert "--gpus" not in lines[0]


def test_minikube_up_passes_gpus_through_when_asked() -> None:
    lines = commands(dry_run("minikube-up.sh", "--gpus", "all", "--cpus", "8", "--param", "epochs=1"))
    assert lines[0].endswith("--driver docker --container-runtime docker --gpus all")
    assert "--cpus 8" in lines[0]
    assert "skaffold run --profile minikube,gpu" in lines[index(lines, "skaffold run")]
    submit = lines[index(lines, "pipeline submit")]
    assert "--param epochs=1" in submit and "--param gpus_per_worker=1" in submit


def test_minikube_up_bad_option_is_one_clear_error() -> None:
    proc = dry_run("minikube-up.sh", "--gpus", "maybe")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --gpus must be auto, all or none (got 'maybe') (fix: --gpus auto)"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "minikube delete --profile minikube"),
        (("--keep-cluster",), "skaffold delete --profile minikube --kube-context minikube"),
        (("--stop",), "minikube stop --profile minikube"),
    ],
)
def test_minikube_down_dry_run(args: tuple[str, ...], expected: str) -> None:
    assert commands(dry_run("minikube-down.sh", *args)) == [expected]


def test_crds_lock_pins_exactly_the_shared_crds() -> None:
    """requirements/crds.lock (what `make crds` fetches) names the same files, with the same bytes, as ../shared."""
    shared = REPO / ".." / "shared" / "crds"
    if not shared.is_dir():
        pytest.skip("../shared/crds is absent (CI has it beside the checkout)")
    lock = {
        line.split()[0]: line.split()[1]
        for line in (REPO / "requirements" / "crds.lock").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert set(lock) == {path.name for path in shared.glob("*.yaml")}
    for name, digest in lock.items():
        assert hashlib.sha256((shared / name).read_bytes()).hexdigest() == digest, name


def test_fetch_crds_dry_run_downloads_each_pinned_release(tmp_path: Path) -> None:
    lines = commands(dry_run("fetch-crds.sh", str(tmp_path)))
    urls = [line.split()[-1] for line in lines if line.startswith("curl ")]
    assert len(urls) == 9
    assert all(url.startswith("https://raw.githubusercontent.com/") for url in urls)
    assert {"v1.9.4", "v2.5.2", "v2.3.0", "v0.20.0"} == {url.split("/")[5] for url in urls}


def test_minikube_up_pins_a_kubernetes_that_serves_trainer_v2s_crds() -> None:
    # Kubeflow Trainer v2.3.0's runtime CRDs need Kubernetes >= 1.31 (docs/kubernetes.md).
    line = commands(dry_run("minikube-up.sh", "--gpus", "none"))[0]
    version = line.split("--kubernetes-version ", 1)[1].split()[0]
    major, minor = (int(part) for part in version.lstrip("v").split(".")[:2])
    assert (major, minor) >= (1, 31), version
