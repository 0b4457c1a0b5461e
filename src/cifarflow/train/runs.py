"""Which folder a training run owns: runs are named by what defines them, and a folder holds one run.

A run's name is ``<model>-<10 hex>`` of its dataset id and :meth:`TrainConfig.defining` (or a name the user
chose). ``MODEL_URL/run.json`` records who owns a folder: the same run resumes there, any other is refused with
one line instead of silently resuming someone else's checkpoint.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from cifarflow.errors import ConflictError, InputError
from cifarflow.storage import Store, join, redact
from cifarflow.train.config import TrainConfig

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
TRAINING_JSON = "training.json"  # the trainer's history record: folders from before run.json carry only this
CHECKPOINT_MARKER = "checkpoints/latest.json"
_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


def check_run_name(name: str) -> str:
    """A user-chosen run name: one folder name, also usable in a Kubernetes object name."""
    if not _NAME.match(name):
        raise InputError(
            f"--run-name {name!r} is not a usable run name",
            "use 1-63 lowercase letters, digits, '.', '_' or '-', starting and ending with a letter or digit",
        )
    return name


def model_url(models_root: str, dataset_id: str, cfg: TrainConfig, run_name: str | None = None) -> str:
    """``MODELS/<dataset-id>/<run name>``: where this run's checkpoints and model live."""
    return join(models_root, dataset_id, check_run_name(run_name) if run_name else cfg.run_name(dataset_id))


def identity(cfg: TrainConfig, dataset_id: str) -> dict[str, Any]:
    return {"run": cfg.run_name(dataset_id), "dataset": dataset_id, "config": cfg.defining()}


def check(store: Store, cfg: TrainConfig, dataset_id: str) -> None:
    """Refuse ``cfg.out`` if it holds another run (before anything is trained or written)."""
    wanted = identity(cfg, dataset_id)
    found = recorded(store, cfg.out)
    if found is not None and found["run"] != wanted["run"]:
        raise ConflictError(
            f"{redact(cfg.out)} holds another training run ({found['run']}; this one is {wanted['run']}: "
            f"{_differences(found, wanted)})",
            "use another --out or --run-name, or the same settings as the run that wrote it",
        )


def record(store: Store, cfg: TrainConfig, dataset_id: str) -> bool:
    """Mark ``cfg.out`` as this run's (the chief, before its first write there); ``True`` if this call did."""
    marker = join(cfg.out, RUN_JSON)
    if store.exists(marker):
        return False
    store.write_text(marker, json.dumps(identity(cfg, dataset_id), indent=2, sort_keys=True) + "\n")
    return True


def release(store: Store, url: str) -> None:
    """Undo :func:`record` for a run that failed before writing anything else: no folder is left half-made."""
    store.remove(join(url, RUN_JSON))
    if store.is_dir(url) and not store.list(url):
        store.remove(url, recursive=True)


def recorded(store: Store, url: str) -> dict[str, Any] | None:
    """The identity of the run in ``url``; ``None`` for a fresh folder."""
    marker = join(url, RUN_JSON)
    if store.exists(marker):
        return _valid(store.read_text(marker), marker)
    history = join(url, TRAINING_JSON)
    if store.exists(history):  # written before run.json existed: its full config says the same
        try:
            record = json.loads(store.read_text(history))
            return identity(TrainConfig.model_validate(record["config"]), str(record["dataset"]["id"]))
        except (KeyError, TypeError, ValueError, InputError):
            raise _unrecorded(history) from None
    if store.exists(join(url, CHECKPOINT_MARKER)):
        raise _unrecorded(join(url, CHECKPOINT_MARKER))
    return None


def _valid(text: str, marker: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if (
        isinstance(value, dict)
        and isinstance(value.get("run"), str)
        and isinstance(value.get("config"), dict)
    ):
        return value
    raise _unrecorded(marker)


def _unrecorded(marker: str) -> ConflictError:
    return ConflictError(
        f"{redact(marker)} belongs to a training run that no {RUN_JSON} describes",
        "use another --out or --run-name, or delete that folder to start over",
    )


def _differences(found: dict[str, Any], wanted: dict[str, Any]) -> str:
    """``epochs 3 there, 10 here`` for each setting that differs (the dataset first)."""
    there = {"dataset": found.get("dataset"), **found["config"]}
    here = {"dataset": wanted["dataset"], **wanted["config"]}
    diffs = [f"{k} {there.get(k)} there, {here.get(k)} here" for k in here if there.get(k) != here.get(k)]
    return ", ".join(diffs) or "settings differ"
