"""The error contract between a step and ``pipeline run-local``: the step records its failure in the file
``$CIFARFLOW_ERROR_FILE`` names, and the runner raises it again by type, never by reading the step's output."""

from __future__ import annotations

from pathlib import Path

import pytest

from cifarflow.errors import ConflictError, InputError, JobError
from cifarflow.pipeline import contract, local


@contract.step
def failing(exc: Exception) -> None:
    raise exc


def test_a_cifarflow_error_is_one_line_and_recorded_with_its_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    error_file = tmp_path / "error.json"
    monkeypatch.setenv(contract.ERROR_FILE_ENV, str(error_file))
    with pytest.raises(SystemExit) as done:
        failing(ConflictError("the folder holds another run", "use another --out"))
    assert done.value.code == 2
    assert capsys.readouterr().err == "error: the folder holds another run (fix: use another --out)\n"
    raised = local.failure(error_file, RuntimeError("kfp.local: task failed"), tmp_path / "run.log")
    assert type(raised) is ConflictError
    assert str(raised) == "step failing failed: the folder holds another run (fix: use another --out)"


def test_a_bug_keeps_its_traceback_and_reaches_the_runner_as_a_job_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error_file = tmp_path / "error.json"
    monkeypatch.setenv(contract.ERROR_FILE_ENV, str(error_file))
    with pytest.raises(KeyError):
        failing(KeyError("dataset_url"))
    raised = local.failure(error_file, RuntimeError("kfp.local"), tmp_path / "run.log")
    assert type(raised) is JobError
    assert str(raised) == (
        f"step failing failed: KeyError: 'dataset_url' (fix: read the step's log in {tmp_path / 'run.log'})"
    )


def test_no_recorded_error_names_the_run_and_its_log(tmp_path: Path) -> None:
    raised = local.failure(tmp_path / "none.json", RuntimeError("\x1b[91mboom\x1b[0m\nmore"), tmp_path / "l")
    assert type(raised) is JobError
    assert str(raised) == f"the local pipeline run failed: boom (fix: read the log in {tmp_path / 'l'})"


def test_without_the_variable_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(contract.ERROR_FILE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        failing(InputError("bad"))
    assert list(tmp_path.iterdir()) == []
