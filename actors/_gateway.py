"""The gateway: one TCP (or in-memory) byte stream → plain HTTP answer or a WebSocket session.

We accept the stream ourselves and read the request head by hand, so the same port answers
``GET /healthz`` (200, JSON), ``GET /metrics`` (Prometheus text) and 404 for anything else,
including a WebSocket upgrade on a path other than ``/v1/ws``. An upgrade on ``/v1/ws`` gets
the stream handed to trio-websocket with the bytes we consumed replayed in front of it.

The WebSocket connection is a :class:`~actors._transport.PingObservingConnection`, built the
way ``trio_websocket.wrap_server_stream`` builds its own (same constructor, same reader
task), so pings reach the connection actor as keep-alive. ``max_message_size`` is the
protocol's hard limit (1 MiB): bigger frames close with 1009, frames between 64 KiB and 1 MiB
reach the codec and get ``error too_large``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import h11
import orjson
import trio
from wsproto import ConnectionType, WSConnection

from protocol import HARD_FRAME_BYTES

from ._transport import PingObservingConnection, WebSocketTransport

log = logging.getLogger("actors.gateway")

WS_PATH = "/v1/ws"
#: A request head larger than this is refused (431) before any parsing.
MAX_HEAD_BYTES = 16 * 1024
_RECEIVE_BYTES = 64 * 1024


class ReplayStream(trio.abc.Stream):
    """``stream`` with ``prefix`` (bytes already read from it) served again first."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            await trio.lowlevel.checkpoint()
            return data
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


async def read_head(stream: trio.abc.Stream) -> tuple[h11.Request, bytes] | None:
    """Read until the end of the request head; the request and every byte read so far."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    buffer = bytearray()
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return event, bytes(buffer)
        if event is not h11.NEED_DATA:
            return None
        data = await stream.receive_some(_RECEIVE_BYTES)
        if not data:
            return None
        buffer += data
        conn.receive_data(bytes(data))


def _is_upgrade(request: h11.Request) -> bool:
    headers = {name.lower(): value.lower() for name, value in request.headers}
    return b"websocket" in headers.get(b"upgrade", b"") and b"upgrade" in headers.get(
        b"connection", b""
    )


async def respond(stream: trio.abc.Stream, status: int, content_type: str, body: bytes) -> None:
    """Write one HTTP/1.1 response and close the stream."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # h11 replies only to a request
    conn.next_event()
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("connection", "close"),
    ]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    try:
        await stream.send_all(data)
    finally:
        await stream.aclose()


async def accept_websocket(
    nursery: trio.Nursery, stream: trio.abc.Stream
) -> WebSocketTransport | None:
    """Complete the WebSocket handshake on ``stream``; None if the peer went away."""
    connection = PingObservingConnection(
        stream, WSConnection(ConnectionType.SERVER), max_message_size=HARD_FRAME_BYTES
    )
    nursery.start_soon(connection._reader_task)
    request = await connection._get_request()
    accepted = await request.accept()
    assert isinstance(accepted, PingObservingConnection)
    return WebSocketTransport(accepted)


ServeTransport = Callable[[WebSocketTransport], Awaitable[None]]
HttpRoute = Callable[[], Awaitable[tuple[int, str, bytes]]]


async def handle_stream(
    stream: trio.abc.Stream,
    *,
    serve: ServeTransport,
    routes: dict[str, HttpRoute],
    handshake_timeout_s: float,
) -> None:
    """Serve one byte stream to its end: an HTTP reply, or a whole WebSocket session."""
    async with trio.open_nursery() as nursery:
        with trio.move_on_after(handshake_timeout_s) as handshake:
            head = await read_head(stream)
            if head is None:
                await stream.aclose()
                return
            request, consumed = head
            path = request.target.decode("latin-1").split("?", 1)[0]
            if _is_upgrade(request) and path == WS_PATH:
                transport = await accept_websocket(nursery, ReplayStream(stream, consumed))
            else:
                transport = None
                route = routes.get(path) if request.method == b"GET" else None
                status, content_type, body = await route() if route else _not_found(path)
                await respond(stream, status, content_type, body)
        if handshake.cancelled_caught:
            await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()
            return
        if transport is not None:
            await serve(transport)
        nursery.cancel_scope.cancel()


def _not_found(path: str) -> tuple[int, str, bytes]:
    body = orjson.dumps({"error": "not_found", "message": f"nothing at {path[:200]}"})
    return 404, "application/json", body
