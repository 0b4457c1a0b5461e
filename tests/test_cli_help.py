"""``--help`` fits an 80-column terminal: every option name of every command shows whole."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from cifarflow.cli import app, main


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for name, command in sorted(getattr(group, "commands", {}).items()):
        out.append(((*path, name), command))
        out += _commands(command, (*path, name))
    return out


COMMANDS = _commands(typer.main.get_command(app))


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_name_shows_whole_at_80_columns(
    path: tuple[str, ...], command: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert "…" not in shown
    assert max(len(line) for line in shown.splitlines()) <= 80
    names = [opt for param in command.params for opt in (*param.opts, *param.secondary_opts)]
    missing = [name for name in names if name.startswith("-") and name not in shown]
    assert missing == []
