"""The model folder (``--out``): checked before TensorFlow starts, so that a URL that cannot be reached or
written fails at once with its fix, not after an epoch."""

from __future__ import annotations

import os

from cifarflow.errors import InputError, StorageError
from cifarflow.storage import Store, join, normalize, redact, translate
from cifarflow.train.runs import TRAINING_JSON


def check_output(store: Store, url: str, option: str = "--out") -> None:
    """Fail at once, with the fix, when the model URL cannot be reached or written (not after an epoch)."""
    store.check_reachable(url)
    fs, path = store.fs(url)
    with translate(url):
        local = normalize(url).startswith("file://")
        blocker = _file_in_the_way(path) if local else (path if fs.isfile(path) else None)
    if blocker is not None:
        raise InputError(
            f"{option} {redact(url)} must be a folder, but {blocker} is a file",
            f"point {option} at a new or existing folder",
        )
    try:
        store.exists(join(url, TRAINING_JSON))
    except OSError as exc:
        raise StorageError(
            f"cannot read {redact(url)}: {exc}", "check the model URL and its permissions"
        ) from exc


def _file_in_the_way(path: str) -> str | None:
    """The file that stops ``path`` from being (or becoming) a local folder; raises if it cannot be written."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        current = os.path.dirname(current)
    if not os.path.isdir(current):
        return current
    if not os.access(current, os.W_OK | os.X_OK):
        raise StorageError(f"{current} is not writable", "choose a folder you can write to")
    return None
