"""The transport seam: how the SDK gets a WebSocket, real or in memory.

A :data:`Transport` is a zero-argument callable returning an async context manager that
yields a connected :class:`WebSocketLike` and closes it on exit. Opening one raises
:class:`TransportError` (or any ``OSError`` / trio-websocket handshake error) when there
is no connection to be had; the SDK then backs off and tries again.

Both accept server messages up to :data:`protocol.MAX_SERVER_FRAME_BYTES` (1 MiB, v1.1),
far above the 64 KiB a client may send: a ``msg`` of 16 KiB of control characters escapes
to ~96 KiB.

* :func:`websocket_transport` dials a URL with ``trio_websocket.open_websocket_url``.
* :func:`stream_transport` runs the real WebSocket protocol over any trio stream, e.g. the
  client half of ``trio.testing.memory_stream_pair()`` -- the simulator hands the other
  half to the node's gateway, so both ends run the production WebSocket code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import trio
import trio_websocket

from protocol import MAX_SERVER_FRAME_BYTES


class WebSocketLike(Protocol):
    """What the SDK needs of a connection (``trio_websocket.WebSocketConnection`` fits).

    ``get_message`` and ``send_message`` raise ``trio_websocket.ConnectionClosed`` (or
    :class:`TransportError`) once the connection is gone. ``ping`` waits for the pong.
    """

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str | bytes) -> None: ...

    async def ping(self, payload: bytes | None = None) -> None: ...

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


Transport = Callable[[], AbstractAsyncContextManager[WebSocketLike]]


class TransportError(Exception):
    """The connection could not be opened or is gone; ``code`` is the close code if any."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def websocket_transport(
    url: str, *, connect_timeout_s: float = 10.0, disconnect_timeout_s: float = 2.0
) -> Transport:
    """Dial ``url`` (``ws://host:port/v1/ws``) for every connection."""

    def open_connection() -> AbstractAsyncContextManager[WebSocketLike]:
        return trio_websocket.open_websocket_url(
            url,
            connect_timeout=connect_timeout_s,
            disconnect_timeout=disconnect_timeout_s,
            max_message_size=MAX_SERVER_FRAME_BYTES,
        )

    return open_connection


def stream_transport(
    open_stream: Callable[[], Awaitable[trio.abc.Stream]],
    *,
    host: str = "sim",
    resource: str = "/v1/ws",
    disconnect_timeout_s: float = 2.0,
) -> Transport:
    """Run a client WebSocket over whatever stream ``open_stream`` returns."""

    @asynccontextmanager
    async def open_connection() -> AsyncIterator[WebSocketLike]:
        stream = await open_stream()
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery,
                stream,  # type: ignore[arg-type]  # any trio Stream works
                host,
                resource,
                max_message_size=MAX_SERVER_FRAME_BYTES,
            )
            try:
                yield ws
            finally:
                with trio.move_on_after(disconnect_timeout_s) as scope:
                    scope.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()

    return open_connection
