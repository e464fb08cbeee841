"""The transport seam: what a connection actor needs from "a WebSocket", and two of them.

:class:`Transport` is the whole interface: receive a message, send text, close with a code,
and tell the actor when a WebSocket ping arrived (pings are keep-alive, pongs are not).
:class:`WebSocketTransport` adapts a trio-websocket server connection (TCP, or a
``trio.testing.memory_stream_pair`` in the simulator); :func:`memory_transport_pair` gives a
transport over plain memory channels plus the client's end of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import attrs
import trio
import wsproto.events
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.handshake import H11Handshake

from protocol import CloseCode

PingObserver = Callable[[], None]


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

    def forget_handshake(self) -> None:
        """Drop what only the opening handshake needed (call once it was accepted).

        wsproto keeps its HTTP/1.1 handshake state (an h11 connection with its buffers, and
        the request) for the connection's whole life, and trio-websocket the request headers:
        ~3 KiB per connection nobody reads again. wsproto only asks the handshake for
        pending events once the connection exists (none are left after the accept), so a
        stand-in without any does the same. trio-websocket's "open handshake done" event (set
        by the accept; only client code waits for it) and its test-only "peer closed" event
        (only ever ``set``) become one shared, already set event.
        """
        ws = self._wsproto
        handshake = ws.handshake
        established = ws.connection is not None and isinstance(handshake, H11Handshake)
        if established and not handshake._events:  # nothing left for the reader to take
            ws.handshake = _HANDSHAKE_DONE  # type: ignore[assignment]
        self._handshake_headers = ()
        if self._open_handshake.is_set():  # only ever waited for by clients
            self._open_handshake = _SET_EVENT
        self._for_testing_peer_closed_connection = _SET_EVENT

    async def send_messages(self, texts: list[str]) -> None:
        """:meth:`send_message` of each text, written with one ``send_all`` (same locking
        and error handling as trio-websocket's own ``_send``)."""
        if self._close_reason:
            raise ConnectionClosed(self._close_reason)
        if len(texts) == 1:
            data = self._wsproto.send(wsproto.events.TextMessage(data=texts[0]))
        else:
            data = b"".join(
                self._wsproto.send(wsproto.events.TextMessage(data=text)) for text in texts
            )
        async with self._stream_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await self._abort_web_socket()
                assert self._close_reason is not None
                raise ConnectionClosed(self._close_reason) from None


class _HandshakeDone:
    """Stands in for wsproto's ``H11Handshake`` once the connection is established: it has
    no events left (stateless, so one instance serves every connection)."""

    __slots__ = ()

    def events(self) -> Iterator[wsproto.events.Event]:
        return iter(())


_HANDSHAKE_DONE = _HandshakeDone()
_SET_EVENT = trio.Event()
_SET_EVENT.set()


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
        await self.send_many([text])

    async def send_many(self, texts: list[str]) -> None:
        """Send several text messages with one write to the socket."""
        try:
            await self.connection.send_messages(texts)
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        except trio.BrokenResourceError:
            raise TransportClosed(CloseCode.ABNORMAL_CLOSURE, "connection reset") from None

    async def close(self, code: int, reason: str) -> None:
        try:
            await self.connection.aclose(code, reason)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    def set_ping_observer(self, observer: PingObserver) -> None:
        self.connection.ping_observer = observer


async def send_batch(transport: Transport, texts: list[str]) -> None:
    """Send ``texts`` in order: with one socket write over a WebSocket, else one by one."""
    if isinstance(transport, WebSocketTransport):
        await transport.send_many(texts)
        return
    for text in texts:
        await transport.send(text)


def _closed(exc: ConnectionClosed) -> TransportClosed:
    reason = exc.reason
    return TransportClosed(reason.code if reason else None, reason.reason if reason else None)


@attrs.frozen
class _Ping:
    """A WebSocket ping travelling over a memory transport."""


@attrs.define
class _Closes:
    """Close codes each side gave, shared by both ends (out of band, so a full channel
    cannot swallow them)."""

    by_server: tuple[int, str] | None = None
    by_client: tuple[int, str] | None = None


def _gone(close: tuple[int, str] | None) -> TransportClosed:
    if close:
        return TransportClosed(*close)
    return TransportClosed(CloseCode.ABNORMAL_CLOSURE, "peer went away")


@attrs.define(eq=False)
class MemoryTransport:
    """The server's side of :func:`memory_transport_pair` (owned by one connection actor)."""

    _inbound: trio.MemoryReceiveChannel[str | bytes | _Ping]
    _outbound: trio.MemorySendChannel[str]
    _closes: _Closes
    _ping_observer: PingObserver | None = None

    async def receive(self) -> str | bytes:
        while self._closes.by_server is None:
            try:
                item = await self._inbound.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                break
            if not isinstance(item, _Ping):
                return item
            if self._ping_observer is not None:
                self._ping_observer()
        raise _gone(self._closes.by_client or self._closes.by_server)

    async def send(self, text: str) -> None:
        if self._closes.by_server is not None:
            raise _gone(self._closes.by_server)
        try:
            await self._outbound.send(text)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _gone(self._closes.by_client) from None

    async def close(self, code: int, reason: str) -> None:
        if self._closes.by_server is None and self._closes.by_client is None:
            self._closes.by_server = (code, reason)
        await self._outbound.aclose()
        await self._inbound.aclose()

    def set_ping_observer(self, observer: PingObserver) -> None:
        self._ping_observer = observer


@attrs.define(eq=False)
class MemoryPeer:
    """The client's side of :func:`memory_transport_pair`."""

    _outbound: trio.MemorySendChannel[str | bytes | _Ping]
    _inbound: trio.MemoryReceiveChannel[str]
    _closes: _Closes

    async def send(self, data: str | bytes) -> None:
        await self._outbound.send(data)

    async def ping(self) -> None:
        await self._outbound.send(_Ping())

    async def receive(self) -> str:
        """The next text frame; :class:`TransportClosed` (with the server's code) at the end."""
        try:
            return await self._inbound.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise _gone(self._closes.by_server) from None

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        if self._closes.by_server is None and self._closes.by_client is None:
            self._closes.by_client = (code, reason)
        await self._outbound.aclose()
        await self._inbound.aclose()


def memory_transport_pair(capacity: int = 64) -> tuple[MemoryTransport, MemoryPeer]:
    """A server :class:`Transport` and its client end, joined by bounded memory channels."""
    to_server_send, to_server_recv = trio.open_memory_channel[str | bytes | _Ping](capacity)
    to_client_send, to_client_recv = trio.open_memory_channel[str](capacity)
    closes = _Closes()
    return (
        MemoryTransport(to_server_recv, to_client_send, closes),
        MemoryPeer(to_server_send, to_client_recv, closes),
    )
