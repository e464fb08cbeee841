"""What the load generator's coordinator and its processes exchange, and where clients go.

The plan of one process (:class:`LoadPlan`), the messages between the coordinator and a
process (:class:`Ready`, :class:`Start`, :class:`Tick`, :class:`Done` with its
:class:`WorkerResult`), all plain frozen values that pickle across the process boundary;
and the placement of a conversation's members on the nodes under test: by the URL each
client dials (:func:`place`, several ``--url``), or, with one URL over ``serve --workers N``
(where the kernel picks the worker), by regrouping the clients after they connected,
following the node each one's ``welcome`` named (:func:`arrange`).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ._stats import LatencyHistogram

PLACEMENTS = ("same", "cross", "mixed")


@attrs.frozen(kw_only=True)
class LoadPlan:
    """One process's share of a run (plain data: it crosses a process boundary).

    Clients are indexed locally; ``groups`` are the conversations as tuples of client
    indices (the first member creates it); ``urls`` is the URL each client dials. With
    ``arrange`` the process regroups its clients once they are connected (same sizes), as
    ``placement`` asks, by the node each one landed on (:func:`arrange`)."""

    worker: int
    users: tuple[str, ...]
    tokens: tuple[str, ...]
    urls: tuple[str, ...]
    groups: tuple[tuple[int, ...], ...]
    local_address: str | None
    rate_per_s: float
    warmup_s: float
    duration_s: float
    drain_s: float
    body_bytes: int
    poisson: bool
    seed: int
    recv_delay_s: float
    placement: str = "mixed"
    arrange: bool = False


@attrs.frozen(kw_only=True)
class Ready:
    worker: int
    connect_s: float
    handshake: LatencyHistogram


@attrs.frozen(kw_only=True)
class Start:
    t0_ns: int


@attrs.frozen(kw_only=True)
class Totals:
    """Running totals of one process (or of all), as of one second of the run."""

    sent: int = 0
    acked: int = 0
    delivered: int = 0
    errors: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            sent=self.sent + other.sent,
            acked=self.acked + other.acked,
            delivered=self.delivered + other.delivered,
            errors=self.errors + other.errors,
        )


@attrs.frozen(kw_only=True)
class Tick:
    worker: int
    totals: Totals


@attrs.frozen(kw_only=True)
class WorkerResult:
    """What one process counted and measured. The histograms are handed over with it: the
    worker stops recording into them once it has sent this."""

    sent: int
    acked: int
    failed: int
    delivered: int
    expected_deliveries: int
    window_acked: int
    window_delivered: int
    lost_messages: int
    lost_deliveries: int
    unacked: int
    duplicates: int
    seq_conflicts: int
    unexpected: int
    out_of_order: int
    redundant_pushes: int
    reconnects: int
    receipts_missing: int
    errors: tuple[tuple[str, int], ...]
    drain_s: float
    ack: LatencyHistogram
    delivery: LatencyHistogram
    delivery_same: LatencyHistogram
    delivery_cross: LatencyHistogram
    receipt: LatencyHistogram
    schedule_lag: LatencyHistogram


@attrs.frozen(kw_only=True)
class Done:
    worker: int
    result: WorkerResult


def conversations(clients: int, size: int) -> list[list[int]]:
    """Client indices chunked into conversations of ``size`` (a lone leftover joins the last)."""
    groups = [list(range(i, min(i + size, clients))) for i in range(0, clients, size)]
    if len(groups) > 1 and len(groups[-1]) == 1:
        leftover = groups.pop()
        groups[-1] += leftover
    return groups


def _cross(group_index: int, placement: str) -> bool:
    return placement == "cross" or (placement == "mixed" and group_index % 2 == 1)


def place(group_index: int, position: int, nodes: int, placement: str) -> int:
    """Which of ``nodes`` URLs the member at ``position`` of conversation ``group_index``
    dials: all on one node (``same``), each member on the next node (``cross``), or
    alternating by conversation (``mixed``)."""
    cross = _cross(group_index, placement)
    return (group_index // 2 + (position if cross else 0)) % nodes


def arrange(sizes: Sequence[int], nodes: Sequence[str], placement: str) -> list[tuple[int, ...]]:
    """Conversations of ``sizes`` over the clients ``0..len(nodes)-1``, client ``i`` being
    connected to ``nodes[i]``, placed as :func:`place` would (members on one node, on
    different nodes, alternating) as far as the clients' nodes allow: each member is taken
    from the node with the most clients left that suits it (ties by name: deterministic)."""
    free: dict[str, list[int]] = {}
    for index in reversed(range(len(nodes))):
        free.setdefault(nodes[index], []).append(index)
    groups: list[tuple[int, ...]] = []
    for gid, size in enumerate(sizes):
        members: list[int] = []
        while len(members) < size:
            order = sorted((n for n in free if free[n]), key=lambda n: (-len(free[n]), n))
            taken = {nodes[m] for m in members}
            if _cross(gid, placement):
                pick = next((n for n in order if n not in taken), order[0])
            else:
                pick = next((n for n in order if n in taken), order[0])
            members.append(free[pick].pop())
        groups.append(tuple(members))
    return groups
