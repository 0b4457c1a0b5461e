"""The promotion gate: promote, keep, floor, per-class recall, re-evaluation on the new dataset, and
concurrent promoters (processes on a disk, threads on a real S3 API) leaving one consistent record."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cifarflow.errors import InputError
from cifarflow.serve import promote as gate
from cifarflow.storage import Store, join
from cifarflow.train import arrays
from cifarflow.train.evaluate import classification_metrics
from train.conftest import CLASSES


def fake_model(
    store: Store, url: str, accuracy: float, dataset: str = "ds-a", weak: int | None = None
) -> str:
    """A metrics.json as `cifarflow evaluate` writes it: 1000 test images, ``accuracy`` right (class ``weak``
    recognised half as often)."""
    rng = np.random.default_rng(int(accuracy * 1e4))
    y_true = np.arange(1000) % 10
    right = rng.random(1000) < accuracy
    if weak is not None:
        right[(y_true == weak) & (np.arange(1000) % 20 < 10)] = False
    y_pred = np.where(right, y_true, (y_true + 1) % 10)
    metrics = {
        "model": url,
        "dataset": {"id": dataset, "url": f"file:///data/{dataset}"},
        "class_names": CLASSES,
        "test": classification_metrics(y_true, y_pred, CLASSES),
    }
    store.write_text(join(url, "metrics.json"), json.dumps(metrics))
    return url


def test_champion_record_lives_under_models(tmp_path: Path) -> None:
    assert gate.champion_url_for("s3://b/work/models/ds-1/resnet20") == "s3://b/work/models/champion.json"
    assert gate.champion_url_for(str(tmp_path / "m")) == f"file://{tmp_path}/champion.json"


def test_first_model_needs_only_the_floor(tmp_path: Path) -> None:
    store, models = Store(), str(tmp_path / "models")
    low = fake_model(store, join(models, "a"), 0.3)
    refused = gate.promote(low, store=store, min_accuracy=0.5)
    assert not refused.promoted and "below the floor 0.5000" in refused.reason
    assert not store.exists(join(models, "champion.json"))
    first = gate.promote(fake_model(store, join(models, "b"), 0.6), store=store, min_accuracy=0.5)
    assert first.promoted and first.champion is None
    record = json.loads(store.read_text(join(models, "champion.json")))
    assert record["champion"]["model"] == join(models, "b") and record["champion"]["dataset_id"] == "ds-a"
    assert record["champion"]["accuracy"] == first.challenger.accuracy and record["since"]


def test_promotes_within_tolerance_and_keeps_a_worse_model(tmp_path: Path) -> None:
    store, models = Store(), str(tmp_path / "models")
    gate.promote(fake_model(store, join(models, "champ"), 0.80), store=store)
    worse = gate.promote(fake_model(store, join(models, "worse"), 0.70), store=store, tolerance=0.02)
    assert not worse.promoted and "< champion" in worse.reason and worse.champion is not None
    assert worse.champion.model == join(models, "champ")
    close = gate.promote(fake_model(store, join(models, "close"), 0.79), store=store, tolerance=0.02)
    assert close.promoted, close.reason
    record = json.loads(store.read_text(join(models, "champion.json")))
    assert record["champion"]["model"] == join(models, "close")
    assert [h["champion"]["model"] for h in record["history"]] == [join(models, "champ")]
    again = gate.promote(join(models, "close"), store=store, tolerance=0.02)
    assert not again.promoted and again.reason == "it is already the champion"
    assert "kept the champion" in again.markdown() and "| champion |" in again.markdown()


def test_a_class_that_collapses_blocks_promotion(tmp_path: Path) -> None:
    store, models = Store(), str(tmp_path / "models")
    gate.promote(fake_model(store, join(models, "champ"), 0.80), store=store)
    lopsided = fake_model(store, join(models, "lopsided"), 0.86, weak=3)
    decision = gate.promote(lopsided, store=store, max_recall_drop=0.1)
    assert not decision.promoted and "recall of class 'class3' fell by" in decision.reason


def test_a_champion_from_another_dataset_is_evaluated_on_the_new_one(
    small_model: str, tiny_dataset: str, tmp_path: Path
) -> None:
    """Real TensorFlow: the champion (trained on tiny_dataset) is scored on a second dataset version."""
    store, models = Store(), str(tmp_path / "models")
    record_url = join(models, "champion.json")
    gate.promote(small_model, store=store, record_url=record_url)
    splits = {"train": arrays.synthetic(64, seed=5), "test": arrays.synthetic(128, seed=6)}
    other = arrays.write(store, str(tmp_path / "ds-b"), splits, class_names=CLASSES, dataset_id="ds-b")
    challenger = fake_model(store, join(models, "new"), 0.99, dataset="ds-b")
    data = json.loads(store.read_text(join(challenger, "metrics.json")))
    data["dataset"]["url"] = other
    store.write_text(join(challenger, "metrics.json"), json.dumps(data))
    decision = gate.promote(challenger, store=store, record_url=record_url)
    assert decision.reevaluated and decision.champion is not None
    assert decision.champion.dataset_id == "ds-b"
    rescored = join(small_model, "evaluations", "ds-b", "metrics.json")
    assert json.loads(store.read_text(rescored))["test"]["images"] == 128
    assert decision.promoted and decision.champion.accuracy < 0.99


def test_cli_says_why_and_exits_1_when_it_refuses(tmp_path: Path, cli: Any) -> None:
    store, models = Store(), str(tmp_path / "models")
    fake_model(store, join(models, "champ"), 0.80)
    fake_model(store, join(models, "worse"), 0.50)
    first = cli("promote", "--model", join(models, "champ"))
    assert first.code == 0 and "promoted: true" in first.out.splitlines()
    second = cli("promote", "--model", join(models, "worse"))
    assert second.code == 1 and "promoted: false" in second.out
    assert "reason: test accuracy 0.4910 < champion 0.7990" in second.out
    missing = cli("promote", "--model", join(models, "nothing"))
    assert missing.code == 2 and missing.err.startswith("error: no evaluation at ")
    bad = cli("promote", "--model", join(models, "worse"), "--max-recall-drop", "1.5")
    assert bad.code == 2 and bad.error_lines == [
        "error: --max-recall-drop 1.5 is invalid: input should be less than or equal to 1 "
        "(fix: pass a value within the bound above)"
    ]


def test_a_corrupt_record_is_one_clear_error(tmp_path: Path) -> None:
    store, models = Store(), str(tmp_path / "models")
    store.write_text(join(models, "champion.json"), "{half")
    with pytest.raises(InputError, match="is not valid JSON"):
        gate.promote(fake_model(store, join(models, "a"), 0.5), store=store)


# -- concurrency ---------------------------------------------------------------------------------------------
ACCURACIES = [0.61, 0.74, 0.66, 0.90, 0.70, 0.83, 0.79, 0.88]


def _promote_in_process(args: tuple[str, str]) -> bool:
    model, record = args
    return gate.promote(model, store=Store(), record_url=record).promoted


def check_consistent(store: Store, record_url: str, models: list[str], promoted: list[bool]) -> None:
    record = json.loads(store.read_text(record_url))
    best = models[int(np.argmax(ACCURACIES))]
    assert record["champion"]["model"] == best
    # Every yes is in the record once: no promotion overwrote another unseen (a lost update would drop one).
    chain = [h["champion"]["model"] for h in reversed(record["history"])] + [record["champion"]["model"]]
    assert len(chain) == sum(promoted) and len(set(chain)) == len(chain)
    accuracies = [ACCURACIES[models.index(m)] for m in chain]
    assert accuracies == sorted(accuracies)  # each champion beat the one it replaced
    assert not store.exists(record_url + ".lock")


def test_concurrent_processes_on_disk_leave_one_consistent_record(tmp_path: Path) -> None:
    store, root = Store(), str(tmp_path / "models")
    models = [fake_model(store, join(root, f"m{i}"), a) for i, a in enumerate(ACCURACIES)]
    record = join(root, "champion.json")
    with multiprocessing.get_context("spawn").Pool(len(models)) as pool:
        promoted = pool.map(_promote_in_process, [(m, record) for m in models])
    check_consistent(store, record, models, promoted)


def test_concurrent_promoters_on_s3_leave_one_consistent_record(s3_server: Any, s3_bucket: str) -> None:
    store = s3_server.store()
    models = [fake_model(store, join(s3_bucket, "models", f"m{i}"), a) for i, a in enumerate(ACCURACIES)]
    record = join(s3_bucket, "models", "champion.json")
    with ThreadPoolExecutor(len(models)) as pool:
        promoted = list(pool.map(lambda m: gate.promote(m, store=store, record_url=record).promoted, models))
    check_consistent(store, record, models, promoted)


def test_the_lock_is_exclusive_on_s3_and_a_stale_one_is_broken(s3_server: Any, s3_bucket: str) -> None:
    store = s3_server.store()
    url = join(s3_bucket, "x.lock")
    assert gate.create_exclusive(store, url, b"{}")
    assert not gate.create_exclusive(store, url, b"{}")
    with gate.lock(store, url, timeout_s=5, stale_s=0.0):  # the "{}" holder has no time: stale
        assert not gate.create_exclusive(store, url, b"{}")
    assert not store.exists(url)


def test_cifarflow_run_ends_with_the_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cifarflow.cli.serve import promote_after_run

    store, models = Store(), str(tmp_path / "work" / "models")
    model = fake_model(store, join(models, "ds-a", "resnet20-x"), 0.7)
    promote_after_run(model, store, serve=False)
    assert "promoted: true" in capsys.readouterr().out.splitlines()
    assert gate.read_champion(store, join(models, "champion.json")).model == model  # type: ignore[union-attr]
