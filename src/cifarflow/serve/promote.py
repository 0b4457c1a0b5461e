"""The promotion gate: a new model becomes the champion only when it earns it, on the same test set.

The champion is recorded in ``<models root>/champion.json`` (model URL, dataset id, its metrics, when). A new
model is promoted when, on the **same dataset version**,

- its test accuracy is at least ``min_accuracy`` (a floor), and at least the champion's minus ``tolerance``;
- no class's recall falls more than ``max_recall_drop`` below the champion's (an overall gain must not hide a
  class the new model stopped recognising).

A champion scored on another dataset version is evaluated again on the new one first (its metrics land in
``<champion>/evaluations/<dataset id>/``), so the comparison is never apples to oranges.

Concurrent promotions (two pipeline runs finishing together) are serialised by a lock object next to the
record, created with the store's create-if-absent write (``O_EXCL`` on disk, ``If-None-Match: *`` on S3,
``ifGenerationMatch=0`` on GCS): the read-compare-write happens under it, so the record always reflects one
sequence of decisions and no promotion is lost. A lock left by a crashed promoter expires after
``LOCK_STALE_S``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from cifarflow.config import PromoteConfig
from cifarflow.errors import ConflictError, InputError, StorageError
from cifarflow.storage import Store, join, normalize, redact, translate

log = logging.getLogger(__name__)

CHAMPION = "champion.json"
LOCK_STALE_S = 600.0
HISTORY = 20  # earlier champions kept in the record
GATE = PromoteConfig()  # the thresholds' defaults: the CLI's and the pipeline's


@dataclass(frozen=True)
class Scores:
    """What the gate compares: one model's test metrics on one dataset version."""

    model: str
    dataset_id: str
    dataset_url: str
    accuracy: float
    recall: dict[str, float]
    metrics_url: str

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any], metrics_url: str, model: str) -> Scores:
        try:
            return cls(
                model=model,
                dataset_id=str(metrics["dataset"]["id"]),
                dataset_url=str(metrics["dataset"]["url"]),
                accuracy=float(metrics["test"]["accuracy"]),
                recall={str(c["class"]): float(c["recall"]) for c in metrics["test"]["per_class"]},
                metrics_url=metrics_url,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"{redact(metrics_url)} is not a cifarflow evaluation ({type(exc).__name__}: {exc})",
                "write it with `cifarflow evaluate --data DATASET --model MODEL`",
            ) from None


@dataclass(frozen=True)
class Decision:
    """The gate's answer, with both models' scores (for the CLI, the pipeline's Metrics artifact, the UI)."""

    promoted: bool
    reason: str
    challenger: Scores
    champion: Scores | None  # on the challenger's dataset (re-evaluated when it had to be)
    record_url: str
    reevaluated: bool = False
    thresholds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """The verdict, both models' accuracy and per-class recall, and the thresholds (the KFP UI's view)."""
        verdict = "promoted" if self.promoted else "kept the champion"
        models = [("challenger", self.challenger)]
        if self.champion is not None:
            models.append(("champion" + (" (re-evaluated)" if self.reevaluated else ""), self.champion))
        rows = [
            "| | model | accuracy |",
            "| --- | --- | --- |",
            *(f"| {role} | `{m.model}` | {m.accuracy:.4f} |" for role, m in models),
        ]
        recall = [
            "| class | " + " | ".join(role for role, _ in models) + " |",
            "| --- |" + " --- |" * len(models),
        ]
        recall += [
            f"| {c} | " + " | ".join(f"{m.recall.get(c, float('nan')):.4f}" for _, m in models) + " |"
            for c in self.challenger.recall
        ]
        limits = ", ".join(f"{k} {v:g}" for k, v in self.thresholds.items())
        return (
            f"**{verdict}**: {self.reason}\n\n"
            f"dataset `{self.challenger.dataset_id}`; thresholds: {limits or 'none'}\n\n"
            + "\n".join(rows)
            + "\n\nRecall per class:\n\n"
            + "\n".join(recall)
            + "\n"
        )


def champion_url_for(model_url: str) -> str:
    """``<...>/models/champion.json`` for a model under a ``models/`` folder (``cifarflow run``'s layout:
    ``WORKDIR/models/<dataset>/<arch>``), else ``champion.json`` beside the model folder."""
    url = normalize(model_url).rstrip("/")
    scheme, _, path = url.partition("://")
    parts = path.split("/")
    if "models" in parts[:-1]:
        root = "/".join(parts[: len(parts) - 1 - parts[::-1][1:].index("models")])
        return f"{scheme}://{root}/{CHAMPION}"
    return f"{scheme}://{posixpath.dirname(path)}/{CHAMPION}"


def read_scores(store: Store, model_url: str, metrics_url: str | None = None) -> Scores:
    from cifarflow.train.evaluate import METRICS

    url = metrics_url or join(model_url, METRICS)
    if not store.exists(url):
        raise InputError(
            f"no evaluation at {redact(url)}",
            f"run `cifarflow evaluate --data DATASET --model {redact(model_url)}` first",
        )
    return Scores.from_metrics(_json(store, url), url, redact(model_url))


Evaluator = Callable[[str, str, str], dict[str, Any]]  # (dataset url, model url, out url) -> metrics


def _evaluate(data: str, model: str, out: str, store: Store) -> dict[str, Any]:
    from cifarflow.train.evaluate import evaluate

    return evaluate(data, model, out, store=store).metrics


def promote(
    model_url: str,
    *,
    store: Store,
    record_url: str | None = None,
    metrics_url: str | None = None,
    min_accuracy: float = GATE.min_accuracy,
    tolerance: float = GATE.tolerance,
    max_recall_drop: float = GATE.max_recall_drop,
    evaluator: Evaluator | None = None,
) -> Decision:
    """Decide, and on a yes write ``champion.json`` (under the lock); plain arguments in, a Decision out."""
    record_url = record_url or champion_url_for(model_url)
    challenger = read_scores(store, model_url, metrics_url)
    thresholds = {"min_accuracy": min_accuracy, "tolerance": tolerance, "max_recall_drop": max_recall_drop}
    with lock(store, record_url + ".lock"):
        record = _json(store, record_url) if store.exists(record_url) else None
        champion, reevaluated = _champion_on(challenger, record, store, evaluator)
        promoted, reason = judge(challenger, champion, min_accuracy, tolerance, max_recall_drop)
        if promoted and champion is not None and champion.model == challenger.model:
            promoted, reason = False, "it is already the champion"
        if promoted:
            store.write_text(record_url, json.dumps(_new_record(challenger, record), indent=2) + "\n")
    decision = Decision(promoted, reason, challenger, champion, redact(record_url), reevaluated, thresholds)
    log.info("%s %s: %s", "promoted" if promoted else "not promoted", challenger.model, reason)
    return decision


def judge(
    new: Scores, champion: Scores | None, min_accuracy: float, tolerance: float, max_recall_drop: float
) -> tuple[bool, str]:
    """(promote?, why) for scores on the same dataset."""
    if new.accuracy < min_accuracy:
        return False, f"test accuracy {new.accuracy:.4f} is below the floor {min_accuracy:.4f}"
    if champion is None:
        return True, f"no champion yet; test accuracy {new.accuracy:.4f} meets the floor {min_accuracy:.4f}"
    bar = champion.accuracy - tolerance
    if new.accuracy < bar:
        return False, (
            f"test accuracy {new.accuracy:.4f} < champion {champion.accuracy:.4f} - tolerance {tolerance:.4f}"
        )
    drops = {
        c: champion.recall[c] - r
        for c, r in new.recall.items()
        if c in champion.recall and champion.recall[c] - r > max_recall_drop
    }
    if drops:
        worst = max(drops, key=lambda c: drops[c])
        return False, (
            f"recall of class {worst!r} fell by {drops[worst]:.4f} "
            f"({champion.recall[worst]:.4f} -> {new.recall[worst]:.4f}), more than {max_recall_drop:.4f}"
        )
    return True, f"test accuracy {new.accuracy:.4f} >= champion {champion.accuracy:.4f} - {tolerance:.4f}"


def _champion_on(
    challenger: Scores, record: dict[str, Any] | None, store: Store, evaluator: Evaluator | None
) -> tuple[Scores | None, bool]:
    """The champion's scores on the challenger's dataset, evaluating it there when it was scored elsewhere."""
    if record is None:
        return None, False
    current = Scores(**record["champion"])
    if current.dataset_id == challenger.dataset_id:
        return current, False
    log.info(
        "the champion %s was scored on dataset %s: evaluating it on %s first",
        current.model, current.dataset_id, challenger.dataset_id,
    )  # fmt: skip
    out = join(current.model, "evaluations", challenger.dataset_id)
    run = evaluator or (lambda d, m, o: _evaluate(d, m, o, store))
    from cifarflow.train.evaluate import METRICS

    metrics = run(challenger.dataset_url, current.model, out)
    return Scores.from_metrics(metrics, join(out, METRICS), current.model), True


def _new_record(challenger: Scores, old: dict[str, Any] | None) -> dict[str, Any]:
    history = []
    if old is not None:
        history = [{"champion": old["champion"], "since": old.get("since")}, *old.get("history", [])]
    return {
        "champion": asdict(challenger),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "history": history[:HISTORY],
    }


def read_champion(store: Store, record_url: str) -> Scores | None:
    return Scores(**_json(store, record_url)["champion"]) if store.exists(record_url) else None


def _json(store: Store, url: str) -> dict[str, Any]:
    try:
        value = json.loads(store.read_text(url))
    except ValueError as exc:
        raise InputError(f"{redact(url)} is not valid JSON ({exc})", "restore it or delete it") from None
    if not isinstance(value, dict):
        raise InputError(f"{redact(url)} is not a JSON object", "restore it or delete it")
    return value


# -- the lock object -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def lock(store: Store, url: str, timeout_s: float = 120.0, stale_s: float = LOCK_STALE_S) -> Iterator[None]:
    """Hold ``url`` (created only if absent) for the block; waits while another holder has it."""
    token = json.dumps({"owner": uuid.uuid4().hex, "pid": os.getpid(), "at": time.time()}).encode()
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while not create_exclusive(store, url, token):
        _break_if_stale(store, url, stale_s)
        if time.monotonic() > deadline:
            raise ConflictError(
                f"another promotion holds {redact(url)} for more than {timeout_s:.0f}s",
                f"wait for it to finish; if none is running, delete {redact(url)}",
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    try:
        yield
    finally:
        store.remove(url)


def create_exclusive(store: Store, url: str, data: bytes) -> bool:
    """Write ``data`` at ``url`` only if nothing is there; False when something was."""
    with translate(url):
        fs, path = store.fs(url)
        if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return True
        try:
            # s3fs (If-None-Match: *) and gcsfs (ifGenerationMatch=0) answer a failed precondition with this.
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True


def _break_if_stale(store: Store, url: str, stale_s: float) -> None:
    try:
        held = json.loads(store.read_text(url))
    except (FileNotFoundError, StorageError, ValueError):
        return  # released meanwhile, or being written
    if time.time() - float(held.get("at", 0)) > stale_s:
        log.warning("breaking a stale promotion lock %s (held since %s)", redact(url), held.get("at"))
        store.remove(url)
