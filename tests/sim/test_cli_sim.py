"""``messenger sim score`` and ``explore --jobs`` from the command line."""

from __future__ import annotations

import pytest

from sim import MUTANTS, main


def test_score_prints_one_row_per_mutant_and_the_score(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["score", "--seeds", "1", "--steps", "15", "--users", "3"])
    out = capsys.readouterr().out
    table = out[out.index("mutant ") :]
    rows = [line.split()[0] for line in table.splitlines()[1:] if line.split()]
    assert [r for r in rows if r in MUTANTS] == list(MUTANTS)
    assert "mutation score: " in out
    caught = sum(1 for line in table.splitlines() if " yes " in line)
    assert status == (0 if caught == len(MUTANTS) else 1)


def test_explore_with_jobs_reports_the_seeds_it_ran(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explore", "--seeds", "2", "--jobs", "2", "--steps", "10", "--users", "3"]) == 0
    out = capsys.readouterr().out
    assert "all 2 seeds passed (seeds 0..1)" in out
    assert "(2 jobs," in out
