"""A training run is named by what defines it: the same settings resume, others never mix into its folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifarflow.train import runs
from cifarflow.train.config import TrainConfig

from .test_bad_input import run, train


def config(**kw: object) -> TrainConfig:
    return TrainConfig.model_validate({"data": "d", "out": "o", **kw})


def test_run_names_follow_the_settings_that_define_the_model() -> None:
    base = config().run_name("ds-1")
    assert base.startswith("resnet20-") and len(base) == len("resnet20-") + 10
    # Where and how it runs does not change the model: the same run.
    same = config(out="elsewhere", evaluate=False, checkpoint_every=7, keep_checkpoints=9, xla="off")
    assert same.run_name("ds-1") == base
    assert config(lr=0.1, width=16).run_name("ds-1") == base  # the defaults, spelt out
    # What the weights depend on: another run each.
    others = [config(epochs=3), config(lr=0.05), config(seed=1), config(depth=32), config(batch_size=64)]
    assert len({c.run_name("ds-1") for c in others} | {base, config().run_name("ds-2")}) == len(others) + 2


def test_a_run_name_must_be_a_folder_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    line = run(
        ["run", "--source", str(tmp_path / "none.tar.gz"), "--workdir", str(work), "--run-name", "a/b"],
        capsys,
    )
    assert line.startswith("error: --run-name 'a/b' is not a usable run name")
    assert not work.exists()  # refused before ingest


@pytest.mark.slow
def test_another_run_in_the_same_folder_is_one_conflict_line_and_the_same_run_resumes(
    tiny_dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tensorflow")
    from cifarflow.cli import main

    out = tmp_path / "model"
    small = ("--depth", "8", "--width", "4", "--no-evaluate")
    with pytest.raises(SystemExit) as done:
        main(train(tiny_dataset, out, *small))
    assert done.value.code == 0
    recorded = json.loads((out / runs.RUN_JSON).read_text())
    assert recorded["config"]["epochs"] == 1 and recorded["dataset"] == "ds-arrays"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    # Two epochs is another run: it must not resume (and extend) the one-epoch run's checkpoint.
    line = run(train(tiny_dataset, out, *small, "--epochs", "2"), capsys)
    assert f"{out} holds another training run ({recorded['run']}; this one is resnet20-" in line
    assert "epochs 1 there, 2 here" in line and "use another --out or --run-name" in line
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing touched

    # The same settings are the same run: it resumes (at its end: nothing left to train) and succeeds.
    capsys.readouterr()
    with pytest.raises(SystemExit) as again:
        main(train(tiny_dataset, out, *small))
    assert again.value.code == 0, capsys.readouterr().err
