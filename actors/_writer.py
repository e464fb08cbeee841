"""The writer of one connection's outbox: a task that exists only while the connection is
busy.

Owned by a :class:`~actors._connection.ConnectionActor`; it writes the frames queued on the
connection's :class:`~actors._router.ConnectionHandle` a whole batch at a time (one send for a
WebSocket). When the outbox is empty it lingers for ``linger_s`` waiting for the next push
(:meth:`OutboxWriter.kick` wakes it), then ends; the next push starts a new one. So a busy
connection costs one wake-up per write rather than a task and a cancel scope per write, and
an idle one still holds no writer task. The connection's own frames wait here for room in the
outbox (:meth:`OutboxWriter.enqueue`); other actors' pushes never wait (see the router).

The task runs in the node's nursery, not in a nursery of the connection's own (that would cost
a nursery and a cancel scope per idle connection); :meth:`OutboxWriter.stop` cancels it. It
contains its failures the way the connection actor does: logged, then close 1011.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import trio

from protocol import CloseCode, ServerFrame, ServerSession

from ._router import CloseRequest, ConnectionHandle, frame_bytes
from ._transport import Transport, TransportClosed, send_batch

log = logging.getLogger("actors.connection")

#: Starts a task in the node's nursery (``nursery.start_soon``).
Spawn = Callable[[Callable[[], Awaitable[None]]], None]


class OutboxWriter:
    """Writes the outbox of the connection ``conn_id`` (see the module docstring)."""

    __slots__ = (
        "_conn_id",
        "_handle",
        "_linger_s",
        "_more",
        "_request_close",
        "_scope",
        "_session",
        "_space",
        "_spawn",
        "_transport",
        "_writing",
    )

    def __init__(
        self,
        conn_id: int,
        transport: Transport,
        session: ServerSession,
        spawn: Spawn,
        request_close: CloseRequest,
        linger_s: float,
    ) -> None:
        self._conn_id = conn_id
        self._transport = transport
        self._session = session
        self._spawn = spawn
        self._request_close = request_close
        self._linger_s = linger_s
        #: The handle whose outbox this writes: set while the connection is in the router.
        self._handle: ConnectionHandle | None = None
        self._writing = False
        self._scope: trio.CancelScope | None = None
        # Set by a push while the writer lingers with an empty outbox.
        self._more: trio.Event | None = None
        # Set when a full outbox drained (created only when someone waits for it).
        self._space: trio.Event | None = None

    def attach(self, handle: ConnectionHandle) -> None:
        self._handle = handle

    def detach(self) -> None:
        """The connection left the router: nothing more is started."""
        self._handle = None

    def kick(self) -> None:
        """Wake the lingering writer, or start one unless it runs."""
        handle = self._handle
        if handle is None or handle.closed:
            return
        if self._more is not None:
            self._more.set()
        elif not self._writing:
            self._writing = True
            self._spawn(self._write)

    def stop(self, handle: ConnectionHandle) -> None:
        """Drop what is queued and stop the writer for good."""
        handle.closed = True
        if self._scope is not None:
            self._scope.cancel()

    async def _write(self) -> None:
        handle = self._handle
        if handle is None:  # the connection left the router before this task got to run
            self._writing = False
            return
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                while not handle.closed:
                    if not handle.outbox:
                        if not await self._linger(scope):
                            break
                        continue
                    frames = handle.take()
                    texts = [self._session.send(frame) for frame in frames]
                    del frames
                    try:
                        await send_batch(self._transport, texts)
                    except TransportClosed:
                        handle.closed = True
                        self._request_close(CloseCode.NORMAL, "peer went away")
                        return
                    del texts
                    handle.written()
                    if self._space is not None:
                        self._space.set()
                        self._space = None
        except Exception:
            log.exception("connection %d: writer failed", self._conn_id)
            handle.closed = True
            self._request_close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._scope = self._more = None
            self._writing = False
        if handle.outbox and not handle.closed:
            self.kick()  # pushed while the linger ran out: a new writer takes it

    async def _linger(self, scope: trio.CancelScope) -> bool:
        """Wait up to ``linger_s`` for a push; False when the writer should end.

        The writer's one scope carries the linger's deadline (no scope per wait). A deadline
        that fired after the push woke the writer cancelled the scope all the same: the writer
        then ends before its next checkpoint, so no write is ever cut by it.
        """
        more = self._more = trio.Event()
        scope.deadline = trio.current_time() + self._linger_s
        await more.wait()
        scope.deadline = math.inf
        self._more = None
        return not scope.cancel_called

    async def _wait(self) -> None:
        if self._space is None:
            self._space = trio.Event()
        await self._space.wait()

    async def drain(self, handle: ConnectionHandle, timeout_s: float) -> None:
        """Wait until everything queued is written (for at most ``timeout_s``)."""
        with trio.move_on_after(timeout_s):
            while handle.unsent and not handle.closed:
                await self._wait()

    async def enqueue(self, handle: ConnectionHandle, frame: ServerFrame) -> None:
        """Queue one of the connection's own frames, waiting while the outbox is full (in
        frames or in bytes). An outbox emptier than its byte limit takes any frame, however
        large, so that every frame fits eventually."""
        size = frame_bytes(frame)
        while handle.unsent >= handle.limit or (
            handle.unsent and handle.unsent_bytes + size > handle.byte_limit
        ):
            await self._wait()
        handle.queue(frame, size)
        self.kick()

    async def wait_for_room(self, handle: ConnectionHandle, room_bytes: int) -> None:
        """Wait until the outbox holds less than ``room_bytes``."""
        while handle.unsent_bytes >= room_bytes and not handle.closed:
            await self._wait()
