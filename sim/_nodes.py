"""The simulated deployment: one to three real chat nodes sharing one MemoryStore.

Each node position is a :class:`NodeSlot`: the real ``actors.Node`` running there now (or
``None`` while it is down), its incarnations so far, the links dialed to it, and its own
:class:`~sim._store.FaultyStore` dial over the shared Store (so one node can be cut off from
the store, lose its lease or have its change feed stall while the others keep serving). The
nodes share the MemoryStore and its in-memory change feed exactly as real nodes share one
MongoDB and its change streams; each follows one feed, renews a lease and sweeps the others'.

A device dials a live node: the only one with one node, a random live one (from the
``dial`` RNG) with several, so a reconnect usually lands on another node. A crash is
``Node.crash()`` plus a reset of that node's links (as the OS would do to a killed process's
sockets); a restart is a new ``Node`` in the same slot, on the same Store, told the names of
its predecessors (whose sessions end at once).

Names: ``node1``, ``node2``, ... with one node (one name per incarnation); ``a1``, ``b1``,
``c1``, then ``a2`` for a's restart, with several. The sweep of a node's expired lease is
observed through the slots' dials and recorded as ``NodeEvent(what="swept")``: from then on
the deployment counts that node's devices as disconnected (PROTOCOL "Several nodes").
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import attrs
import trio

from actors import Node as ActorNode
from actors import NodeConfig
from actors._auth import Grant, InvalidToken
from persistence import Store

from . import _history as h
from ._determinism import derive_rng
from ._mutants import node_mutants
from ._network import Link
from ._store import FaultyStore, StoreFaults

#: The node's presence grace and heartbeat in the simulator (the protocol's defaults/minimum).
GRACE_S = 5.0
HEARTBEAT_S = 10
#: Leases with several nodes: short, so that a dead or cut-off node is declared dead within
#: a run (virtual seconds; production: 15 and 3).
LEASE_S = 6.0
LEASE_REFRESH_S = 1.0


def verify_token(token: str, now_s: float) -> Grant:
    """Simulator tokens: ``sim.<user>`` (never expires) or ``sim.<user>.<expiry>`` (epoch s)."""
    if not token.startswith("sim."):
        raise InvalidToken("not a simulator token")
    user, _, expiry = token[4:].partition(".")
    expires_s = float(expiry) if expiry else math.inf
    if expires_s <= now_s:
        raise InvalidToken("token expired")
    return Grant(user=user, expires_s=expires_s)


@attrs.define(eq=False)
class NodeSlot:
    """One node position of the deployment (see the module docstring)."""

    index: int
    label: str
    faults: StoreFaults
    store: Store
    node: ActorNode | None = None
    incarnation: int = 0
    links: list[Link] = attrs.Factory(list)
    #: The name of every incarnation started so far.
    names: list[str] = attrs.Factory(list)

    @property
    def name(self) -> str:
        return self.names[-1] if self.names else "-"

    def cut_links(self) -> None:
        for link in self.links:
            link.cut()
        self.links = []


class Cluster:
    """The slots and their lifecycle; used from inside the run's ``trio.run``."""

    def __init__(
        self,
        *,
        seed: int,
        nodes: int,
        mutants: frozenset[str],
        store: Store,
        history: h.History,
        wall_ms: Callable[[], int],
    ) -> None:
        self._seed = seed
        self._mutants = mutants
        self._history = history
        self._wall_ms = wall_ms
        self.several = nodes > 1
        self._dial_rng = derive_rng(seed, "dial")
        labels = ["node"] if nodes == 1 else ["abc"[i] for i in range(nodes)]
        self.slots: list[NodeSlot] = []
        for index, label in enumerate(labels):
            faults = StoreFaults()
            self.slots.append(
                NodeSlot(
                    index=index,
                    label=label,
                    faults=faults,
                    store=FaultyStore(store, faults, self._observe).as_store(),
                )
            )
        self._nursery: trio.Nursery | None = None
        #: Incarnations started over every slot (one node: the node's incarnation number).
        self.started = 0

    def bind(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def live(self) -> list[NodeSlot]:
        return [s for s in self.slots if s.node is not None]

    def pick(self, rng: random.Random, slots: list[NodeSlot] | None = None) -> NodeSlot | None:
        """A slot among ``slots`` (default: all); draws from ``rng`` only if there is a choice
        to make, so a one-node run draws exactly what it always did."""
        choices = self.slots if slots is None else slots
        if not choices:
            return None
        return choices[0] if len(choices) == 1 else rng.choice(choices)

    def fired(self) -> dict[str, int]:
        """Store faults that hit an operation, summed over the slots' dials."""
        total: dict[str, int] = {}
        for slot in self.slots:
            for kind, count in slot.faults.fired.items():
                total[kind] = total.get(kind, 0) + count
        return total

    def heal(self) -> None:
        for slot in self.slots:
            slot.faults.heal()

    # ------------------------------------------------------------------ nodes

    def _config(self) -> NodeConfig:
        grace = 0.0 if "no_presence_grace" in self._mutants else GRACE_S
        config = NodeConfig(
            heartbeat_s=HEARTBEAT_S,
            presence_grace_s=grace,
            conversation_idle_s=5.0,
            mutants=node_mutants(self._mutants),
        )
        if self.several:
            config = attrs.evolve(config, lease_s=LEASE_S, lease_refresh_s=LEASE_REFRESH_S)
        return config

    async def start(self, slot: NodeSlot) -> None:
        assert self._nursery is not None
        self.started += 1
        slot.incarnation += 1
        if self.several:
            name = f"{slot.label}{slot.incarnation}"
            rng = derive_rng(self._seed, f"node/{name}")
        else:
            name = f"node{slot.incarnation}"
            rng = derive_rng(self._seed, f"node/{slot.incarnation}")
        node = ActorNode(
            store=slot.store,
            verify_token=verify_token,
            rng=rng,
            wall_ms=self._wall_ms,
            config=self._config(),
            name=name,
            # The crashed incarnations' device sessions end now, not at their lease expiry.
            predecessors=tuple(slot.names),
        )
        slot.names.append(name)
        await self._nursery.start(self._run, slot, node, slot.incarnation)
        slot.node = node
        self._node_event(slot, "started")
        if slot.faults.cut or slot.faults.feed_stalled:
            self.note_lag(slot, True)  # the slot's dial is still faulty

    def note_lag(self, slot: NodeSlot, lagging: bool) -> None:
        """Tell the checker a node cannot learn (or write) what other nodes see -- a stalled
        feed, a cut-off store -- or can again: what it decides meanwhile is judged by what it
        could know."""
        self._node_event(slot, "lagging" if lagging else "caught up")

    def _node_event(self, slot: NodeSlot, what: str, detail: str = "") -> None:
        self._history.record(
            h.NodeEvent(
                at=trio.current_time(),
                what=what,
                incarnation=slot.incarnation,
                detail=detail,
                node=slot.name,
            )
        )

    async def _run(
        self,
        slot: NodeSlot,
        node: ActorNode,
        incarnation: int,
        *,
        task_status: trio.TaskStatus[ActorNode] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            await node.run(task_status=task_status)
        except Exception as exc:
            self._node_event(slot, "died", repr(exc)[:200])
            if slot.node is node:
                slot.cut_links()
                slot.node = None

    def crash(self, slot: NodeSlot) -> bool:
        node = slot.node
        if node is None:
            return False
        node.crash()
        slot.node = None
        slot.cut_links()
        self._node_event(slot, "crashed")
        return True

    def _observe(self, operation: str, args: tuple[Any, ...], result: Any) -> None:
        if operation == "sweep_expired":
            for name in result:
                self._history.record(
                    h.NodeEvent(
                        at=trio.current_time(),
                        what="swept",
                        incarnation=0,
                        detail="its lease expired: its devices count as disconnected",
                        node=str(name),
                    )
                )

    # ------------------------------------------------------------------ network

    def dial(self, link: Link) -> NodeSlot:
        """Attach ``link``'s server end to a live node; raises if none is up."""
        slot = self.pick(self._dial_rng, self.live()) if self.several else self.slots[0]
        if slot is None or slot.node is None:
            raise ConnectionRefusedError(f"{link.name}: no node listening")
        link.node = slot.name
        slot.links = [lk for lk in slot.links if lk.up]
        slot.links.append(link)
        slot.node.attach_stream(link.server)
        return slot
