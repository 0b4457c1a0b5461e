"""The operator install script: shellcheck-clean, pinned versions, a dry run that shows every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import REPO

SCRIPT = REPO / "k8s" / "install" / "install-operators.sh"
SHELLCHECK = Path(sys.executable).parent / "shellcheck"


def dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, check=False
    )


def test_shellcheck_clean() -> None:
    proc = subprocess.run([str(SHELLCHECK), str(SCRIPT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout


def test_dry_run_installs_the_pinned_versions_in_order() -> None:
    proc = dry_run()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(line.startswith("+ ") for line in lines)
    first = [
        next(i for i, line in enumerate(lines) if key in line)
        for key in ("namespace.yaml", "kubeflow/pipelines", "training-operator.git", "helm upgrade")
    ]
    assert first == sorted(first)
    text = proc.stdout
    assert "ref=2.14.3" in text and "ref=v1.9.4" in text and "--version 2.5.2" in text
    assert "spark.jobNamespaces=\\{cifarflow\\}" in text and "webhook.enable=true" in text
    assert "spark.rbac.create=false" in text


def test_only_one_component() -> None:
    proc = dry_run("--only", "spark", "--context", "minikube")
    assert proc.returncode == 0
    assert "pipelines" not in proc.stdout and "training-operator" not in proc.stdout
    assert "--kube-context minikube" in proc.stdout


def test_bad_arguments_are_one_error_line() -> None:
    proc = dry_run("--only", "airflow")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown component airflow (fix: --only kfp|training|spark)"


def test_trainer_v2_is_installed_pinned_with_jobset_instead_of_the_training_operator() -> None:
    proc = dry_run("--only", "training", "--trainer", "v2")
    assert proc.returncode == 0, proc.stderr
    assert "trainer.git/manifests/overlays/manager\\?ref=v2.3.0" in proc.stdout
    assert "training-operator" not in proc.stdout
    assert "-n kubeflow-system wait --for=condition=Available deployment --all" in proc.stdout
    assert "training-operator.git" in dry_run("--only", "training").stdout  # v1 stays the default
    bad = dry_run("--trainer", "v3")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: unknown trainer v3 (fix: --trainer v1|v2)"
