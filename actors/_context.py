"""What every actor of one node shares: the seams (Store, clocks, RNG) and the node's tables.

A :class:`NodeContext` is built once by :class:`~actors.Node` and handed to each actor. The
simulator replaces the seams: ``store`` (a MemoryStore), ``wall_ms`` (epoch milliseconds from
virtual time), ``rng`` (seeded); trio's clock is the only monotonic clock actors read.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Iterator

import attrs
import trio

from persistence import Ephemeral, Store, StoredMessage
from protocol import MemberEvent, Msg, RemoteProtocolError

from ._config import NOTIFY_PER_NODE, NodeConfig
from ._keepalive import KeepAlive
from ._messages import PresenceRequest
from ._metrics import NodeMetrics
from ._ratelimit import UserBudgets
from ._router import Router
from ._sessions import RemoteSessions, SessionWriter

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
    #: Devices connected to the other nodes of the deployment (kept by the change feed).
    remote: RemoteSessions = attrs.field(factory=RemoteSessions)
    #: Writes this node's device sessions to the Store, in order, in the background.
    sessions: SessionWriter = attrs.field(
        default=attrs.Factory(lambda self: SessionWriter(self.store), takes_self=True)
    )
    #: The presence registry's mailbox (set by the node once the registry exists).
    presence: trio.MemorySendChannel[PresenceRequest] | None = None
    #: Announces a receipt or typing notice to the other nodes (never blocks).
    publish: Callable[[Ephemeral], None] = attrs.field(default=lambda _event: None)

    def connected_anywhere(self, user: str) -> bool:
        """True if ``user`` has a device connected to this node or another (G6, G8)."""
        if self.router.is_connected(user):
            return True
        return self.remote.has(user) and not self.mutant(NOTIFY_PER_NODE)

    def elsewhere(self, users: Iterable[str]) -> bool:
        """True if one of ``users`` has a device connected to another node."""
        return any(self.remote.has(u) for u in users)

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
