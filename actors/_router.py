"""The router: user id → the live connection actors of that user's devices on this node.

This is the seed's hash table. It is a plain data structure owned by the :class:`~actors.Node`
and changed only synchronously (no ``await`` inside a method), so under trio's cooperative
scheduling every lookup sees a consistent table without locks. Connection actors register
themselves after ``hello`` and unregister when they finish; conversation actors and the
presence registry look recipients up here.

A :class:`ConnectionHandle` is the only thing other actors hold of a connection actor: it can
``push`` a frame into the connection's bounded outbox without blocking, or ask the connection
to close. Pushing never waits: a connection whose outbox is full is a slow consumer and is
disconnected (close 1013, "try again later"); it resyncs at its next ``hello``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from protocol import CloseCode, Msg, ServerFrame

log = logging.getLogger("actors.router")

CloseRequest = Callable[[int, str], None]


@attrs.define(eq=False)
class ConnectionHandle:
    """The public face of one connection actor, for other actors.

    While the connection is still pushing its ``hello`` backlog (``syncing``), live pushes are
    parked in ``_parked``; :meth:`take_parked` releases them after ``synced``, dropping the
    messages the backlog already carried, so live pushes of a conversation stay in seq order.

    After that, pushes go to ``outbox``, a plain list the connection's writer takes whole
    (``kick`` starts the writer when it is not running). ``unsent`` is the number of frames
    queued or being written; at ``limit`` the connection is a slow consumer. A list and a
    callback instead of a memory channel and a writer task waiting on it: an idle connection
    holds no writer task and no channel (~2 KiB less per connection).
    """

    conn_id: int
    user: str
    device: str
    _request_close: CloseRequest
    limit: int
    _kick: Callable[[], None]
    syncing: bool = True
    #: Set once the connection's writer is gone for good: pushes are dropped.
    closed: bool = False
    #: Frames the writer has taken but not yet finished writing.
    in_flight: int = 0
    outbox: list[ServerFrame] = attrs.field(factory=list)
    _parked: list[ServerFrame] = attrs.field(factory=list)
    #: The connection's session id (``welcome.session``) and hello time (epoch ms): which of
    #: two connections of one device on two nodes is the newer (4409 across nodes).
    session: str = ""
    since: int = 0

    @property
    def unsent(self) -> int:
        return len(self.outbox) + self.in_flight

    def push(self, frame: ServerFrame) -> bool:
        """Queue ``frame`` for this connection without blocking; False if it was dropped."""
        if self.syncing:
            if len(self._parked) >= self.limit:
                self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer: too many pushes during sync")
                return False
            self._parked.append(frame)
            return True
        if self.closed:
            return False
        if self.unsent >= self.limit:
            self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer: outbox full")
            return False
        self.outbox.append(frame)
        self._kick()
        return True

    def close(self, code: int, reason: str) -> None:
        """Ask the connection actor to close with ``code`` (idempotent, never blocks)."""
        self._request_close(code, reason)

    def take_parked(self, synced_up_to: dict[str, int]) -> list[ServerFrame]:
        """Parked pushes minus messages at or below what the backlog pushed per conversation."""
        parked, self._parked = self._parked, []
        return [
            frame
            for frame in parked
            if not (isinstance(frame, Msg) and frame.seq <= synced_up_to.get(frame.conv, 0))
        ]


@attrs.define
class Router:
    """user → device → the connection handle currently serving that device."""

    _table: dict[str, dict[str, ConnectionHandle]] = attrs.field(factory=dict)

    def register(self, handle: ConnectionHandle) -> ConnectionHandle | None:
        """Make ``handle`` the device's connection; returns the one it replaces, if any."""
        devices = self._table.setdefault(handle.user, {})
        previous = devices.get(handle.device)
        devices[handle.device] = handle
        return previous

    def unregister(self, handle: ConnectionHandle) -> None:
        """Forget ``handle`` unless a newer connection of the same device replaced it."""
        devices = self._table.get(handle.user)
        if devices is None or devices.get(handle.device) is not handle:
            return
        del devices[handle.device]
        if not devices:
            del self._table[handle.user]

    def get(self, user: str, device: str) -> ConnectionHandle | None:
        """The connection serving (user, device) on this node, if any."""
        devices = self._table.get(user)
        return None if devices is None else devices.get(device)

    def devices(self, user: str) -> list[ConnectionHandle]:
        """The user's connected devices on this node, by device id."""
        devices = self._table.get(user)
        if not devices:
            return []
        return [devices[d] for d in sorted(devices)]

    def is_connected(self, user: str) -> bool:
        """Whether ``user`` has a device connected to this node."""
        return user in self._table

    def all(self) -> list[ConnectionHandle]:
        """Every registered connection, by (user, device)."""
        return [h for user in sorted(self._table) for h in self.devices(user)]

    def __len__(self) -> int:
        return sum(len(d) for d in self._table.values())
