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

from protocol import CloseCode, Msg, Receipt, Result, ServerFrame, TypingNotice

log = logging.getLogger("actors.router")

CloseRequest = Callable[[int, str], None]

#: What a queued frame costs besides its message bodies (the frame object, its small fields).
FRAME_OVERHEAD_BYTES = 200


def frame_bytes(frame: ServerFrame) -> int:
    """About how much memory ``frame`` holds while it waits in an outbox: its bodies (a
    ``msg``, or the messages of a ``history`` result) plus a fixed overhead per frame."""
    if isinstance(frame, Msg):
        return FRAME_OVERHEAD_BYTES + len(frame.body)
    if isinstance(frame, Result):
        messages = frame.get("messages", ())
        return FRAME_OVERHEAD_BYTES + sum(frame_bytes(m) for m in messages)
    return FRAME_OVERHEAD_BYTES


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

    The outbox is bounded twice: ``limit`` frames and ``byte_limit`` bytes (estimated by
    :func:`frame_bytes`, ``unsent_bytes``); a push beyond either is a slow consumer. Parked
    pushes are bounded the same way.
    """

    conn_id: int
    user: str
    device: str
    _request_close: CloseRequest
    limit: int
    _kick: Callable[[], None]
    byte_limit: int
    syncing: bool = True
    #: Set once the connection's writer is gone for good: pushes are dropped.
    closed: bool = False
    #: Frames the writer has taken but not yet finished writing.
    in_flight: int = 0
    #: Estimated bytes of the frames in ``outbox`` and of those being written.
    queued_bytes: int = 0
    in_flight_bytes: int = 0
    outbox: list[ServerFrame] = attrs.field(factory=list)
    _parked: list[ServerFrame] = attrs.field(factory=list)
    _parked_bytes: int = 0
    #: The connection's session id (``welcome.session``) and hello time (epoch ms): which of
    #: two connections of one device on two nodes is the newer (4409 across nodes).
    session: str = ""
    since: int = 0
    #: Per conversation, the seq the hello backlog pushed up to. A later push at or below it
    #: is a duplicate, and from an actor that started below it (the resync after a lost
    #: change-feed history starts from the device's stored recv mark, which may lag) it
    #: would break seq order (G4): such pushes are dropped.
    backlog_up_to: dict[str, int] = attrs.field(factory=dict)
    #: Per conversation, the highest seq pushed live (or parked) to this connection.
    _live_up_to: dict[str, int] = attrs.field(factory=dict)

    def pushed_up_to(self, conv: str) -> int:
        """The highest seq of ``conv`` this connection was pushed (backlog or live): an
        actor unsure whether older seqs were pushed here pushes only those above it (G4)."""
        return max(self.backlog_up_to.get(conv, 0), self._live_up_to.get(conv, 0))

    @property
    def unsent(self) -> int:
        return len(self.outbox) + self.in_flight

    @property
    def unsent_bytes(self) -> int:
        return self.queued_bytes + self.in_flight_bytes

    def push(self, frame: ServerFrame) -> bool:
        """Queue ``frame`` for this connection without blocking; False if it was dropped."""
        size = frame_bytes(frame)
        if self.syncing:
            if len(self._parked) >= self.limit or self._parked_bytes + size > self.byte_limit:
                self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer: too many pushes during sync")
                return False
            self._parked.append(frame)
            self._parked_bytes += size
            self._note_pushed(frame)
            return True
        if self.closed:
            return False
        if (
            self.backlog_up_to
            and isinstance(frame, Msg)
            and frame.seq <= self.backlog_up_to.get(frame.conv, 0)
        ):
            return True
        if self.unsent >= self.limit or self.unsent_bytes + size > self.byte_limit:
            self.close(CloseCode.TRY_AGAIN_LATER, "slow consumer: outbox full")
            return False
        self.queue(frame, size)
        self._note_pushed(frame)
        self._kick()
        return True

    def _note_pushed(self, frame: ServerFrame) -> None:
        if isinstance(frame, Msg) and frame.seq > self._live_up_to.get(frame.conv, 0):
            self._live_up_to[frame.conv] = frame.seq

    def queue(self, frame: ServerFrame, size: int) -> None:
        """Append ``frame`` (of ``size`` estimated bytes) to the outbox; no checks, no kick
        (for the connection's own frames, which wait for room instead)."""
        self.outbox.append(frame)
        self.queued_bytes += size

    def take(self) -> list[ServerFrame]:
        """Hand the whole outbox to the writer: it is in flight until :meth:`written`."""
        frames, self.outbox = self.outbox, []
        self.in_flight, self.in_flight_bytes = len(frames), self.queued_bytes
        self.queued_bytes = 0
        return frames

    def written(self) -> None:
        """The frames last taken are written."""
        self.in_flight = self.in_flight_bytes = 0

    def close(self, code: int, reason: str) -> None:
        """Ask the connection actor to close with ``code`` (idempotent, never blocks)."""
        self._request_close(code, reason)

    def take_parked(self, synced: SyncedBacklog) -> list[ServerFrame]:
        """Parked pushes minus messages at or below what the backlog pushed per conversation,
        and minus receipts and typing of conversations whose pushed backlog ended with this
        user's departure (G7: nothing of a group follows the event that removed its user,
        although they were pushed while the user was still a member)."""
        parked, self._parked = self._parked, []
        self._parked_bytes = 0
        return [frame for frame in parked if not synced.covers(frame)]


@attrs.define
class SyncedBacklog:
    """What a hello's backlog pushed: the seq it reached per conversation, and the
    conversations where the last member event it carried about the user is their departure."""

    up_to: dict[str, int] = attrs.field(factory=dict)
    departed: set[str] = attrs.field(factory=set)

    def covers(self, frame: ServerFrame) -> bool:
        """True if ``frame``, parked during the backlog, must not follow it."""
        if isinstance(frame, Msg):
            return frame.seq <= self.up_to.get(frame.conv, 0)
        if isinstance(frame, Receipt | TypingNotice):
            return frame.conv in self.departed
        return False


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
