"""The transport seam: what a connection actor needs from "a WebSocket", and the real one.

:class:`Transport` is the whole interface: receive a message, send text, close with a code,
and tell the actor when a WebSocket ping arrived (pings are keep-alive, pongs are not).
:class:`WebSocketTransport` adapts a trio-websocket server connection (TCP, or a
``trio.testing.memory_stream_pair`` in the simulator). Tests bring their own transports
(``tests/actors/memory_transport.py``): the seam is this Protocol, not a test double here.
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
