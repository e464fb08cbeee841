"""Fault plans: which kinds of fault a run injects and how often -- plain, printable data.

Swarm testing (Groce et al., 2012): rather than every fault at a low rate in every run, each
seed switches a random subset of fault kinds on, each with its own rate, so some runs are
crash-heavy, some are all store errors, some have none at all. A plan is a frozen value, so
Hypothesis can draw and shrink it (``sim.strategies.fault_plans``) and a failure prints the
plan it needed.

Rates are probabilities per workload step. Adding a kind: add it to :data:`FAULT_KINDS` with
a one-line description, and give :meth:`sim._world.World._inject` a branch that makes it
happen and records :class:`~sim._history.FaultFired` when (and only when) it did.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import attrs

#: Every fault kind, with what it does. Order is stable (it is part of the trace).
FAULT_KINDS: dict[str, str] = {
    "abrupt_disconnect": "reset a device's connection (no close frame: 1006 on both ends)",
    "clean_disconnect": "a device closes with 1000 and comes back after 0.1-8 s",
    "lost_ack": "the connection resets right before the next ack reaches the device",
    "cut_during_sync": "the next connection resets between welcome and synced",
    "mid_frame": "the connection resets after a prefix of the next WebSocket frame",
    "node_crash": "the node loses all memory (the Store stays) and restarts after 0.2-3 s",
    "store_fail": "the next 1-3 Store operations fail with Unavailable",
    "store_ambiguous": "the next Store write is applied, then reports Unavailable",
    "slow_store": "every Store operation takes 10-300 ms for a while",
    "stalled_client": "a device stops reading for 0.5-25 s (the node's writes pile up)",
    "slow_link": "a device's connection takes 20-500 ms per write",
    # With several nodes only (appended, so one-node plans draw what they always drew):
    "store_cutoff": "a node is cut off from the store for 0.5-12 s (its calls hang or fail) "
    "while its clients stay connected",
    "feed_stall": "a node's change feed delivers nothing for 0.5-8 s",
    "feed_cursor_lost": "a node's change-feed cursor dies (it resumes from its token)",
    "feed_history_lost": "the Store forgets its feed history (every node resyncs from the Store)",
    "lease_lost": "a node's lease renewals fail for longer than the lease: it is declared dead "
    "while it still serves its clients",
}
#: Kinds that need several nodes (a one-node run skips them without an RNG draw).
CLUSTER_FAULTS = frozenset(
    {"store_cutoff", "feed_stall", "feed_cursor_lost", "feed_history_lost", "lease_lost"}
)

#: The rate range a swarm-chosen kind gets (probability per step).
_RATE_RANGE = (0.01, 0.12)


@attrs.frozen(kw_only=True)
class FaultPlan:
    """The fault kinds on in a run and their per-step probabilities (absent = off)."""

    rates: tuple[tuple[str, float], ...] = ()

    def __attrs_post_init__(self) -> None:
        for kind, rate in self.rates:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(FAULT_KINDS)}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate {rate!r} of {kind!r} is not a probability")

    @classmethod
    def of(cls, rates: Mapping[str, float]) -> FaultPlan:
        """A plan from a mapping, with kinds in the canonical order and zero rates dropped."""
        return cls(rates=tuple((k, float(rates[k])) for k in FAULT_KINDS if rates.get(k, 0) > 0))

    @classmethod
    def swarm(cls, rng: random.Random) -> FaultPlan:
        """Each kind on with probability 1/2, at a rate drawn from ``_RATE_RANGE``."""
        rates = {}
        for kind in FAULT_KINDS:
            on = rng.random() < 0.5
            rate = rng.uniform(*_RATE_RANGE)
            if on:
                rates[kind] = round(rate, 3)
        return cls.of(rates)

    def rate(self, kind: str) -> float:
        return dict(self.rates).get(kind, 0.0)

    def describe(self) -> str:
        if not self.rates:
            return "no faults"
        return ", ".join(f"{kind}={rate:.3f}" for kind, rate in self.rates)
