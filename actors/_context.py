"""What every actor of one node shares: the seams (Store, clocks, RNG) and the node's tables.

A :class:`NodeContext` is built once by :class:`~actors.Node` and handed to each actor. The
simulator replaces the seams: ``store`` (a MemoryStore), ``wall_ms`` (epoch milliseconds from
virtual time), ``rng`` (seeded); trio's clock is the only monotonic clock actors read.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterator

import attrs
import trio

from persistence import Store, StoredMessage
from protocol import MemberEvent, Msg, RemoteProtocolError

from ._config import NodeConfig
from ._keepalive import KeepAlive
from ._metrics import NodeMetrics
from ._ratelimit import UserBudgets
from ._router import Router

log = logging.getLogger("actors")


@attrs.define(eq=False)
class NodeContext:
    """The seams and shared tables of one node (see the module docstring)."""

    store: Store
    config: NodeConfig
    wall_ms: Callable[[], int]
    rng: random.Random
    metrics: NodeMetrics
    router: Router
    #: Nudges the notifier after an offline-notification job was recorded.
    wake_notifier: Callable[[], None]
    name: str = "node"
    #: The node-wide keep-alive timer (run by the node; connections watch themselves).
    keepalive: KeepAlive = attrs.field(factory=KeepAlive)
    #: Per-user rate budgets, shared by each user's connections on this node.
    budgets: UserBudgets = attrs.field(
        default=attrs.Factory(
            lambda self: UserBudgets(self.config.user_rate_per_s, self.config.user_rate_burst),
            takes_self=True,
        )
    )

    #: Per-user budgets of new conversations (``creations_per_minute``; ``rate_limited``).
    creations: UserBudgets = attrs.field(
        default=attrs.Factory(
            lambda self: UserBudgets(
                self.config.creations_per_minute / 60, self.config.creations_per_minute
            ),
            takes_self=True,
        )
    )

    def mutant(self, name: str) -> bool:
        """True when the simulator switched on the broken variant ``name``."""
        return name in self.config.mutants

    @contextlib.contextmanager
    def timed(self, op: str) -> Iterator[None]:
        """Record the duration of one Store call under ``op`` in the latency histogram."""
        started = trio.current_time()
        try:
            yield
        finally:
            self.metrics.store_latency.labels(op).observe(trio.current_time() - started)

    def token(self, bits: int = 64) -> str:
        """A random hex token from the node's RNG (session ids, private cmids)."""
        return f"{self.rng.getrandbits(bits):0{bits // 4}x}"


def msg_frame(message: StoredMessage) -> Msg:
    """The ``msg`` frame of a stored message.

    Numbers go through ``int()``: a Store backed by BSON may hand back ``Int64`` values, and
    frames accept plain ints only.
    """
    return Msg(
        conv=message.conv,
        seq=int(message.seq),
        id=message.id,
        sender=message.sender,
        cmid=message.cmid,
        body=message.body,
        ts=int(message.ts),
        kind=message.kind,
    )


def member_event_of(message: StoredMessage, *, by: str, ts: int) -> MemberEvent | None:
    """The member event ``message`` is, if ``by`` stored it at ``ts``; else None (a text
    message, someone else's event, or a body that is not a member event)."""
    if message.kind != "member" or message.sender != by or message.ts != ts:
        return None
    try:
        return MemberEvent.parse(message.body)
    except RemoteProtocolError:
        return None
