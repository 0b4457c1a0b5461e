"""What ``cifarflow preprocess --backend k8s`` and ``cifarflow train --backend k8s`` call.

Settings come from ``CIFARFLOW_K8S_*`` variables (in the cluster: the ``cifarflow-defaults`` ConfigMap), the
cluster from ``KUBECONFIG`` or the pod's service account. The run id is ``CIFARFLOW_RUN_ID`` if set, else
derived from the command's arguments: running the same command again re-attaches to its job (or reuses its
result).
"""

from __future__ import annotations

import inspect
import os
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

from typer.models import OptionInfo

from cifarflow import progress
from cifarflow.k8s import launcher, names
from cifarflow.k8s.launcher import LaunchResult
from cifarflow.k8s.settings import K8sSettings


def _run_id(step: str, args: list[str], run_id: str | None) -> str:
    return run_id or os.environ.get("CIFARFLOW_RUN_ID") or names.derive_run_id(step, args)


def _report(result: LaunchResult) -> None:
    progress.out(f"job: {result.kind}/{result.name} (namespace {result.namespace})")
    progress.out(f"state: {result.state}" + (" (reused)" if result.reused else ""))
    for key, value in result.outputs.items():
        progress.out(f"{key}: {value}")


def preprocess_on_k8s(
    *,
    raw: str,
    out: str,
    partitions: int | None,
    val_fraction: float,
    seed: int,
    run_id: str | None = None,
    settings: K8sSettings | None = None,
) -> LaunchResult:
    settings = settings or K8sSettings.from_env()
    args = [raw, out, str(partitions), repr(val_fraction), str(seed)]
    result = launcher.launch_preprocess(
        settings,
        _run_id("preprocess", args, run_id),
        raw=raw,
        out=out,
        partitions=partitions,
        val_fraction=val_fraction,
        seed=seed,
    )
    _report(result)
    return result


def train_on_k8s(
    *,
    data: str,
    out: str,
    extra_args: list[str] | None = None,
    run_id: str | None = None,
    settings: K8sSettings | None = None,
) -> LaunchResult:
    """``extra_args`` are passed to the trainer image's ``cifarflow train`` after ``--data``/``--out``."""
    settings = settings or K8sSettings.from_env()
    extra = list(extra_args or [])
    result = launcher.launch_train(
        settings, _run_id("train", [data, out, *extra], run_id), data=data, out=out, extra_args=extra
    )
    _report(result)
    return result


# Options that describe where the job runs rather than what it does: not forwarded into the pod.
_LOCAL_ONLY = {"data", "out_url", "backend", "s3_endpoint"}


def forwarded_args(command: Callable[..., Any], values: Mapping[str, Any]) -> list[str]:
    """The options of a typer ``command`` that differ from their defaults, as arguments for the same command
    inside a pod: ``forwarded_args(train, locals())`` -> ``["--epochs", "3", "--no-evaluate"]``."""
    hints = typing.get_type_hints(command, include_extras=True)
    args: list[str] = []
    for name, param in inspect.signature(command).parameters.items():
        if name in _LOCAL_ONLY or name not in values:
            continue
        info = _option_info(hints.get(name), param.default)
        default = param.default.default if isinstance(param.default, OptionInfo) else param.default
        value = values[name]
        if info is None or value == default or value is None:
            continue
        decls = list(info.param_decls or ())
        if isinstance(info.default, str) and info.default.startswith("--"):
            decls.insert(0, info.default)  # Annotated style: typer.Option("--flag", ...) puts the name here
        flag = next((d for d in decls if d.startswith("--")), "--" + name.replace("_", "-"))
        on, _, off = flag.partition("/")
        if isinstance(value, bool):
            if value or off:
                args.append(on if value else off)
        else:
            args += [on, str(value.value if isinstance(value, Enum) else value)]
    return args


def _option_info(hint: Any, default: Any) -> OptionInfo | None:
    if isinstance(default, OptionInfo):
        return default
    for meta in getattr(hint, "__metadata__", ()):
        if isinstance(meta, OptionInfo):
            return meta
    return None
