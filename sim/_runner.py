"""Running many seeds, in this process or in several: the engine of ``explore`` and ``score``.

A seed's run is a pure function of its :class:`~sim._world.RunConfig`, so seeds can run in
any process in any order; :func:`run_many` hands them to a pool of ``jobs`` worker processes
and yields their :class:`SeedOutcome` in seed order (``imap``), so what ``explore`` prints
and which failure it reports do not depend on ``jobs`` or on scheduling. Workers return a
small summary (the report's text, the trace hash, counters), never the whole trace.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Generator, Iterable

import attrs

from ._world import RunConfig, simulate


@attrs.frozen(kw_only=True)
class SeedOutcome:
    """What one seed's run left: enough to print, count and replay it."""

    seed: int
    ok: bool
    #: Categories with at least one finding, in report order.
    categories: tuple[str, ...]
    report: str
    trace_hash: str
    sessions: int
    virtual_s: float
    #: CPU seconds the run took in its process.
    cpu_s: float
    faults: tuple[tuple[str, int], ...]

    def fault_counts(self) -> Counter[str]:
        return Counter(dict(self.faults))


def run_one(config: RunConfig) -> SeedOutcome:
    """Run ``config`` here and summarise it."""
    result = simulate(config)
    counts = result.report.counts()
    return SeedOutcome(
        seed=config.seed,
        ok=result.ok,
        categories=tuple(c for c, n in counts.items() if n),
        report=result.report.render(),
        trace_hash=result.trace_hash,
        sessions=result.sessions,
        virtual_s=result.virtual_s,
        cpu_s=result.wall_s,
        faults=tuple(sorted(result.report.faults.items())),
    )


def run_many(configs: Iterable[RunConfig], jobs: int) -> Generator[SeedOutcome, None, None]:
    """Run every config, yielding outcomes in the order of ``configs``.

    ``jobs`` > 1 uses that many worker processes (``spawn``: a fresh interpreter each, no
    state inherited from the caller). Closing the iterator early (a failure found) stops
    the workers.
    """
    if jobs <= 1:
        for config in configs:
            yield run_one(config)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes=jobs) as pool:
        yield from pool.imap(run_one, configs, chunksize=1)
