"""Hypothesis strategies for the simulator: workloads, fault plans and whole run configs.

Everything drawn is a frozen value, so a failing example shrinks towards fewer users, fewer
steps, fewer fault kinds and lower rates, and prints as a plan a person can read. The trio
scheduler seed is drawn too (it is part of :class:`~sim._world.RunConfig` through ``seed``):
:func:`sim.run_deterministic` seeds trio's scheduler inside the test, after Hypothesis has
reseeded it, so the schedule shrinks with everything else.
"""

from __future__ import annotations

from hypothesis import strategies as st

from ._faults import FAULT_KINDS, FaultPlan
from ._workload import Workload
from ._world import RunConfig

#: Per-step fault rates Hypothesis may pick (coarse values shrink and read better).
_RATES = (0.02, 0.05, 0.1, 0.2)


def fault_plans(kinds: tuple[str, ...] = tuple(FAULT_KINDS)) -> st.SearchStrategy[FaultPlan]:
    """A subset of ``kinds``, each at one of a few rates; shrinks towards no faults."""
    return st.dictionaries(
        st.sampled_from(kinds), st.sampled_from(_RATES), max_size=len(kinds)
    ).map(FaultPlan.of)


def workloads(
    *, max_users: int = 4, max_devices: int = 2, max_steps: int = 60
) -> st.SearchStrategy[Workload]:
    """Small worlds with a drawn traffic mix; shrinks towards 2 users, 1 device, few steps."""
    return st.builds(
        Workload,
        users=st.integers(2, max_users),
        devices=st.integers(1, max_devices),
        steps=st.integers(5, max_steps),
        step_gap_s=st.sampled_from((0.05, 0.25, 0.6)),
        send=st.sampled_from((2.0, 5.0, 8.0)),
        read=st.sampled_from((0.0, 1.0, 2.0)),
        history=st.sampled_from((0.0, 1.0)),
        presence=st.sampled_from((0.0, 1.0)),
        group=st.sampled_from((0.0, 1.0, 2.0)),
        typing=st.sampled_from((0.0, 0.5)),
        garbage=st.sampled_from((0.0, 0.5)),
    )


def run_configs(
    *, mutants: frozenset[str] = frozenset(), max_steps: int = 60
) -> st.SearchStrategy[RunConfig]:
    """A whole run: seed (scheduler, workload and fault RNGs), workload and fault plan."""
    return st.builds(
        RunConfig,
        seed=st.integers(0, 2**32 - 1),
        workload=workloads(max_steps=max_steps),
        plan=fault_plans(),
        mutants=st.just(mutants),
    )
