"""A :class:`~actors.Transport` over plain memory channels, plus the client's end of it:
drives one connection actor frame by frame, with no WebSocket in between."""

from __future__ import annotations

import attrs
import trio

from actors import TransportClosed
from actors._transport import PingObserver
from protocol import CloseCode


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
