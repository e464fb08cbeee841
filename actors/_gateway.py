"""The gateway: one TCP (or in-memory) byte stream → plain HTTP answer or a WebSocket session.

We accept the stream ourselves and read the request head by hand, so the same port answers
the node's ``GET`` routes (``/healthz``, the web client's files, ``/metrics`` when enabled)
and 404 for anything else, including a WebSocket upgrade on a path other than ``/v1/ws``.
Every answer carries the security headers of :mod:`actors._web`. An upgrade on ``/v1/ws``
from a foreign ``Origin`` gets 403 (the Origin rule is in :mod:`actors._web`); any other
gets the stream handed to trio-websocket, with the head we read fed to its wsproto
connection.

The WebSocket connection is a :class:`~actors._transport.PingObservingConnection`, built the
way ``trio_websocket.wrap_server_stream`` builds its own (same constructor, same reader
task), so pings reach the connection actor as keep-alive. ``max_message_size`` is the
protocol's hard limit (1 MiB): bigger frames close with 1009, frames between 64 KiB and 1 MiB
reach the codec and get ``error too_large``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import h11
import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.utilities import RemoteProtocolError

from protocol import HARD_FRAME_BYTES

from ._transport import PingObservingConnection, WebSocketTransport
from ._web import SECURITY_HEADERS, origin_allowed

log = logging.getLogger("actors.gateway")

WS_PATH = "/v1/ws"
#: A request head larger than this is refused (431) before any parsing.
MAX_HEAD_BYTES = 16 * 1024
_RECEIVE_BYTES = 64 * 1024


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


def _header(request: h11.Request, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case), decoded; None when absent."""
    for key, value in request.headers:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def respond(stream: trio.abc.Stream, status: int, content_type: str, body: bytes) -> None:
    """Write one HTTP/1.1 response and close the stream."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # h11 replies only to a request
    conn.next_event()
    headers = [
        ("content-type", content_type),
        ("content-length", str(len(body))),
        ("connection", "close"),
        *SECURITY_HEADERS,
    ]
    data = conn.send(h11.Response(status_code=status, headers=headers))
    data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    try:
        await stream.send_all(data)
    finally:
        await stream.aclose()


async def accept_websocket(
    spawn: Spawn, stream: trio.abc.Stream, head: bytes
) -> WebSocketTransport | None:
    """Complete the WebSocket handshake on ``stream``, whose request ``head`` we read already;
    None if the request is not a valid upgrade (refused) or the peer went away.

    The head goes straight into wsproto, so its reader finds the request event before it
    reads the socket (no replaying stream wrapper in every read). The connection's reader
    task is started with ``spawn`` (in the node's nursery: a nursery per connection just
    to hold it would cost ~1 KiB each); it ends when the stream is closed.
    """
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.receive_data(head)
    except RemoteProtocolError as exc:
        log.debug("refused a WebSocket upgrade: %s", exc)
        try:
            if exc.event_hint is not None:
                await stream.send_all(ws.send(exc.event_hint))
        finally:
            await stream.aclose()
        return None
    connection = PingObservingConnection(stream, ws, max_message_size=HARD_FRAME_BYTES)
    spawn(functools.partial(_run_reader, connection, stream))
    request = await connection._get_request()
    accepted = await request.accept()
    assert isinstance(accepted, PingObservingConnection)
    accepted.forget_handshake()
    return WebSocketTransport(accepted)


async def _run_reader(connection: PingObservingConnection, stream: trio.abc.Stream) -> None:
    """trio-websocket's reader task, with its failures contained (it runs in the node's
    nursery): logged, and the stream closed, which ends the session."""
    try:
        await connection._reader_task()
    except Exception:
        log.exception("WebSocket reader failed")
        await trio.aclose_forcefully(stream)


ServeTransport = Callable[[WebSocketTransport], Awaitable[None]]
HttpRoute = Callable[[], Awaitable[tuple[int, str, bytes]]]
#: Starts a task in the node's nursery (``nursery.start_soon``).
Spawn = Callable[[Callable[[], Awaitable[None]]], None]


async def handle_stream(
    stream: trio.abc.Stream,
    *,
    serve: ServeTransport,
    routes: dict[str, HttpRoute],
    deadline: float,
    spawn: Spawn,
    allowed_origins: frozenset[str] = frozenset(),
) -> None:
    """Serve one byte stream to its end: an HTTP reply, or a whole WebSocket session.

    The request and the WebSocket handshake must be done by ``deadline`` (trio time: the
    accept plus the hello timeout, which the session's ``hello`` then has to meet too).
    ``allowed_origins`` are the normalized origins (``actors._web.normalize_origin``)
    besides the node's own from which a browser may open a WebSocket.

    The stream is closed when this returns or fails (which also ends the WebSocket reader
    task, started with ``spawn``), but not when it is cancelled: that is the node crashing,
    which closes nothing, like a killed process (its cancellation ends the reader too).
    """
    try:
        transport = None
        with trio.move_on_at(deadline):
            transport = await _open(stream, routes, spawn, allowed_origins)
        if transport is not None:
            await serve(transport)
    except trio.Cancelled:
        raise
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    await trio.aclose_forcefully(stream)


async def _open(
    stream: trio.abc.Stream,
    routes: dict[str, HttpRoute],
    spawn: Spawn,
    allowed_origins: frozenset[str],
) -> WebSocketTransport | None:
    """Read the request head; accept a WebSocket (its transport) or answer over HTTP (None).

    A function of its own so that the request and the bytes of its head are not kept alive
    (as locals of a suspended frame) for the whole WebSocket session.
    """
    head = await read_head(stream)
    if head is None:
        await stream.aclose()
        return None
    request, consumed = head
    path = request.target.decode("latin-1").split("?", 1)[0]
    if _is_upgrade(request) and path == WS_PATH:
        origin = _header(request, b"origin")
        if origin_allowed(origin, _header(request, b"host"), allowed_origins):
            return await accept_websocket(spawn, stream, consumed)
        log.info("refused a WebSocket upgrade from origin %r", (origin or "")[:200])
        await respond(stream, *_forbidden_origin(origin or ""))
        return None
    route = routes.get(path) if request.method == b"GET" else None
    status, content_type, body = await route() if route else _not_found(path)
    await respond(stream, status, content_type, body)
    return None


def _forbidden_origin(origin: str) -> tuple[int, str, bytes]:
    message = f"WebSocket connections from origin {origin[:200]!r} are not allowed"
    return 403, "application/json", orjson.dumps({"error": "forbidden", "message": message})


def _not_found(path: str) -> tuple[int, str, bytes]:
    body = orjson.dumps({"error": "not_found", "message": f"nothing at {path[:200]}"})
    return 404, "application/json", body
