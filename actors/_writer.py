"""The writer of one connection's outbox: a task that exists only while there is something
to write.

Owned by a :class:`~actors._connection.ConnectionActor`; it writes the frames queued on the
connection's :class:`~actors._router.ConnectionHandle` a whole batch at a time (one send for a
WebSocket) and ends when the outbox is empty (the next push starts a new one through
:meth:`OutboxWriter.kick`). The connection's own frames wait here for room in the outbox
(:meth:`OutboxWriter.enqueue`); other actors' pushes never wait (see the router).

The task runs in the node's nursery, not in a nursery of the connection's own (that would cost
a nursery and a cancel scope per idle connection); :meth:`OutboxWriter.stop` cancels it. It
contains its failures the way the connection actor does: logged, then close 1011.
"""

from __future__ import annotations

import logging
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
    ) -> None:
        self._conn_id = conn_id
        self._transport = transport
        self._session = session
        self._spawn = spawn
        self._request_close = request_close
        #: The handle whose outbox this writes: set while the connection is in the router.
        self._handle: ConnectionHandle | None = None
        self._writing = False
        self._scope: trio.CancelScope | None = None
        # Set when a full outbox drained (created only when someone waits for it).
        self._space: trio.Event | None = None

    def attach(self, handle: ConnectionHandle) -> None:
        self._handle = handle

    def detach(self) -> None:
        """The connection left the router: nothing more is started."""
        self._handle = None

    def kick(self) -> None:
        """Start the writer unless it runs (it drains the outbox, then ends)."""
        handle = self._handle
        if not self._writing and handle is not None and not handle.closed:
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
            with trio.CancelScope() as self._scope:
                while handle.outbox and not handle.closed:
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
            self._scope = None
            self._writing = False

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
