"""The transport seam: what a connection actor needs from "a WebSocket", and two of them.

:class:`Transport` is the whole interface: receive a message, send text, close with a code,
and tell the actor when a WebSocket ping arrived (pings are keep-alive, pongs are not).
:class:`WebSocketTransport` adapts a trio-websocket server connection (TCP, or a
``trio.testing.memory_stream_pair`` in the simulator); :func:`memory_transport_pair` gives a
transport over plain memory channels plus the client's end of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

import attrs
import trio
import wsproto.events
from trio_websocket import ConnectionClosed, WebSocketConnection

PingObserver = Callable[[], None]

#: What a non-blocking send into a full or dead channel may raise.
_GONE = (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError)

#: Close code reported when the peer vanished without a close frame (RFC 6455).
ABNORMAL_CLOSURE = 1006


class TransportClosed(Exception):
    """The transport is closed; ``code`` is the close code when one is known."""

    def __init__(self, code: int | None = None, reason: str | None = None) -> None:
        super().__init__(f"transport closed ({code}, {reason!r})")
        self.code = code
        self.reason = reason


class Transport(Protocol):
    """One client connection as a connection actor sees it.

    ``receive`` returns the next whole message (``str`` for text, ``bytes`` for binary) and
    raises :class:`TransportClosed` once the connection is gone; ``send`` raises it too.
    ``close`` is idempotent. ``set_ping_observer`` registers the callback run (synchronously,
    from whatever task reads the socket) whenever a WebSocket ping arrives.
    """

    async def receive(self) -> str | bytes: ...

    async def send(self, text: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...

    def set_ping_observer(self, observer: PingObserver) -> None: ...


class PingObservingConnection(WebSocketConnection):
    """A trio-websocket connection that reports every received ping.

    trio-websocket answers pings inside its reader task and never surfaces them. Its reader
    looks the handler up as ``self._handle_ping_event`` when the task starts, so overriding
    that method in a subclass (created before the reader starts, see
    :func:`actors._gateway.accept_websocket`) is the narrowest hook: the pong is still sent
    by the library, we only get told first.
    """

    ping_observer: PingObserver | None = None

    async def _handle_ping_event(self, event: wsproto.events.Ping) -> None:
        if self.ping_observer is not None:
            self.ping_observer()
        await super()._handle_ping_event(event)


@attrs.define(eq=False)
class WebSocketTransport:
    """:class:`Transport` over an accepted trio-websocket connection."""

    connection: PingObservingConnection

    async def receive(self) -> str | bytes:
        try:
            return await self.connection.get_message()
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def send(self, text: str) -> None:
        try:
            await self.connection.send_message(text)
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        except trio.BrokenResourceError:
            raise TransportClosed(ABNORMAL_CLOSURE, "connection reset") from None

    async def close(self, code: int, reason: str) -> None:
        try:
            await self.connection.aclose(code, reason)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    def set_ping_observer(self, observer: PingObserver) -> None:
        self.connection.ping_observer = observer


def _closed(exc: ConnectionClosed) -> TransportClosed:
    reason = exc.reason
    return TransportClosed(reason.code if reason else None, reason.reason if reason else None)


@attrs.frozen
class _Ping:
    """A WebSocket ping travelling over a memory transport."""


@attrs.frozen
class _Close:
    code: int
    reason: str


@attrs.define(eq=False)
class MemoryTransport:
    """The server's side of :func:`memory_transport_pair` (owned by one connection actor)."""

    _inbound: trio.MemoryReceiveChannel[str | bytes | _Ping | _Close]
    _outbound: trio.MemorySendChannel[str | _Close]
    _ping_observer: PingObserver | None = None
    _closed: TransportClosed | None = None

    async def receive(self) -> str | bytes:
        while self._closed is None:
            try:
                item = await self._inbound.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                self._closed = TransportClosed(ABNORMAL_CLOSURE, "peer went away")
                break
            match item:
                case _Ping():
                    if self._ping_observer is not None:
                        self._ping_observer()
                case _Close(code, reason):
                    self._closed = TransportClosed(code, reason)
                case str() | bytes():
                    return item
        raise self._closed

    async def send(self, text: str) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            await self._outbound.send(text)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._closed = TransportClosed(ABNORMAL_CLOSURE, "peer went away")
            raise self._closed from None

    async def close(self, code: int, reason: str) -> None:
        if self._closed is None:
            self._closed = TransportClosed(code, reason)
        with contextlib.suppress(
            trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            self._outbound.send_nowait(_Close(code, reason))
        await self._outbound.aclose()
        await self._inbound.aclose()

    def set_ping_observer(self, observer: PingObserver) -> None:
        self._ping_observer = observer


@attrs.define(eq=False)
class MemoryPeer:
    """The client's side of :func:`memory_transport_pair`."""

    _outbound: trio.MemorySendChannel[str | bytes | _Ping | _Close]
    _inbound: trio.MemoryReceiveChannel[str | _Close]
    close_code: int | None = None

    async def send(self, data: str | bytes) -> None:
        await self._outbound.send(data)

    async def ping(self) -> None:
        await self._outbound.send(_Ping())

    async def receive(self) -> str:
        """The next text frame; :class:`TransportClosed` (with the server's code) at the end."""
        try:
            item = await self._inbound.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise TransportClosed(self.close_code or ABNORMAL_CLOSURE) from None
        if isinstance(item, _Close):
            self.close_code = item.code
            raise TransportClosed(item.code, item.reason)
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        with contextlib.suppress(
            trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError
        ):
            self._outbound.send_nowait(_Close(code, reason))
        await self._outbound.aclose()


def memory_transport_pair(capacity: int = 64) -> tuple[MemoryTransport, MemoryPeer]:
    """A server :class:`Transport` and its client end, joined by bounded memory channels."""
    to_server_send, to_server_recv = trio.open_memory_channel[str | bytes | _Ping | _Close](
        capacity
    )
    to_client_send, to_client_recv = trio.open_memory_channel[str | _Close](capacity)
    return (
        MemoryTransport(to_server_recv, to_client_send),
        MemoryPeer(to_server_send, to_client_recv),
    )
