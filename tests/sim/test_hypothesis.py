"""Hypothesis draws a whole run -- workload, fault plan, seeds -- and shrinks failures.

The scheduler seed is part of the drawn ``seed``: ``run_deterministic`` seeds trio's
scheduler inside the test, after Hypothesis reseeded it for the example, so a failing
schedule replays and shrinks like everything else. CI runs this derandomized (profile "ci").
"""

from __future__ import annotations

from hypothesis import event, given, note, settings

from sim import RunConfig, simulate
from sim.strategies import run_configs


@settings(max_examples=25, deadline=None)
@given(config=run_configs(max_steps=60))
def test_every_drawn_run_keeps_g1_to_g9(config: RunConfig) -> None:
    note(config.describe())
    result = simulate(config)
    note(f"trace hash {result.trace_hash}")
    for kind in sorted(result.report.faults):
        event(f"fault fired: {kind}")
    assert result.ok, result.report.render() + "\n" + result.trace.render(last=40)
