"""The ``messenger`` command line lists its subcommands and dispatches to their owners."""

from __future__ import annotations

import pytest

from messenger.__main__ import COMMANDS, main


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for name in ("serve", "token", "chat", "sim", "bench"):
        assert name in COMMANDS
        assert f"    {name}" in shown


def test_unknown_subcommand_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["frobnicate"])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_subcommand_gets_the_rest_of_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "mutants"]) == 0
    assert "ack_before_write" in capsys.readouterr().out
