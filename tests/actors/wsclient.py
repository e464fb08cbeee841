"""A raw-JSON WebSocket test client, speaking to a node the way a third-party client would.

No SDK, no codec: frames are dicts sent with ``orjson`` over trio-websocket, so the tests
check the wire contract itself. Every wait is bounded (``timeout``); nothing sleeps.
"""

from __future__ import annotations

import itertools
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import orjson
import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    WebSocketConnection,
    connect_websocket,
    wrap_client_stream,
)

from actors import Node, NodeConfig, TokenIssuer, TokenVerifier
from persistence import MongoStore, Store

Frame = dict[str, Any]
TIMEOUT = 10.0


@attrs.define(eq=False)
class WsClient:
    """One WebSocket to ``/v1/ws``; ``backlog`` holds frames skipped by :meth:`wait_for`."""

    ws: WebSocketConnection
    backlog: list[Frame] = attrs.field(factory=list)
    welcome: Frame | None = None
    synced_frames: list[Frame] = attrs.field(factory=list)

    @classmethod
    async def open(
        cls, nursery: trio.Nursery, port: int, *, max_message_size: int = 4 * 1024 * 1024
    ) -> WsClient:
        ws = await connect_websocket(
            nursery, "127.0.0.1", port, "/v1/ws", use_ssl=False, max_message_size=max_message_size
        )
        return cls(ws)

    async def send(self, frame: Frame | str | bytes) -> None:
        data = orjson.dumps(frame).decode() if isinstance(frame, dict) else frame
        await self.ws.send_message(data)

    async def recv(self, within: float = TIMEOUT) -> Frame:
        """The next frame, from the backlog first."""
        if self.backlog:
            return self.backlog.pop(0)
        with trio.fail_after(within):
            return dict(orjson.loads(await self.ws.get_message()))

    async def wait_for(self, kind: str, within: float = TIMEOUT, **fields: Any) -> Frame:
        """The first frame of type ``kind`` whose fields match; others are kept in order."""
        for i, frame in enumerate(self.backlog):
            if _matches(frame, kind, fields):
                return self.backlog.pop(i)
        skipped: list[Frame] = []
        with trio.fail_after(within):
            while True:
                frame = dict(orjson.loads(await self.ws.get_message()))
                if _matches(frame, kind, fields):
                    self.backlog.extend(skipped)
                    return frame
                skipped.append(frame)

    async def closed(self, within: float = TIMEOUT) -> int:
        """Wait for the server to close; the close code."""
        with trio.fail_after(within):
            while True:
                try:
                    await self.ws.get_message()
                except ConnectionClosed as exc:
                    reason = exc.reason
                    break
        assert reason is not None
        return reason.code

    async def request(self, frame: Frame, kind: str = "result", within: float = TIMEOUT) -> Frame:
        """Send ``frame`` with a fresh rid and wait for the reply of type ``kind`` echoing it."""
        await self.send(frame)
        return await self.wait_for(kind, within, rid=frame["rid"])

    async def hello(self, token: str, device: str) -> Frame:
        """hello → welcome, then collect the sync backlog up to ``synced``."""
        await self.send({"type": "hello", "token": token, "device": device})
        self.welcome = await self.recv()
        assert self.welcome["type"] == "welcome", self.welcome
        while (frame := await self.recv())["type"] != "synced":
            self.synced_frames.append(frame)
        return self.welcome

    async def aclose(self) -> None:
        await self.ws.aclose()


async def slow_reader(
    nursery: trio.Nursery, port: int, token: str
) -> tuple[WsClient, trio.SocketStream]:
    """A welcomed client whose socket takes almost nothing (a 16 KiB receive buffer) until
    the test raises its ``SO_RCVBUF``; and that socket."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    client = WsClient(await wrap_client_stream(nursery, tcp, "127.0.0.1", "/v1/ws"))
    await client.hello(token, "d1")
    return client, tcp


@attrs.define(eq=False)
class Traffic:
    """Sends to ``to`` one at a time, each after the last one's ack, until the connection
    drops: ``acked`` maps each acked cmid to its seq; ``enough`` is set at ``enough_at``."""

    client: WsClient
    to: str
    enough_at: int = 20
    acked: dict[str, int] = attrs.field(factory=dict)
    enough: trio.Event = attrs.field(factory=trio.Event)

    async def run(self) -> None:
        for i in range(10_000):
            cmid = f"m{i}"
            try:
                await self.client.send(
                    {"type": "send", "cmid": cmid, "to": self.to, "body": f"#{i}"}
                )
                ack = await self.client.wait_for("ack", cmid=cmid)
            except (ConnectionClosed, trio.BrokenResourceError):
                return
            self.acked[cmid] = ack["seq"]
            if len(self.acked) >= self.enough_at:
                self.enough.set()


async def acks_until_close(
    client: WsClient, tcp: trio.SocketStream
) -> tuple[dict[str, Frame], CloseReason | None]:
    """Open a :func:`slow_reader`'s socket wide and read until the node closes it: the acks
    it got, by cmid, and the close reason."""
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    acks: dict[str, Frame] = {}
    while True:
        try:
            frame = orjson.loads(await client.ws.get_message())
        except ConnectionClosed as exc:
            return acks, exc.reason
        if frame["type"] == "ack":
            acks[frame["cmid"]] = frame


def _matches(frame: Frame, kind: str, fields: dict[str, Any]) -> bool:
    return frame.get("type") == kind and all(frame.get(k) == v for k, v in fields.items())


SECRET = b"test-secret-for-the-node-tests-0123456789"


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@attrs.define(eq=False)
class Chat:
    """A running node and a way to connect clients to it."""

    node: Node
    store: MongoStore
    port: int
    nursery: trio.Nursery
    issuer: TokenIssuer = attrs.field(factory=lambda: TokenIssuer(SECRET))
    _rids: itertools.count[int] = attrs.field(factory=itertools.count)

    def token(self, user: str) -> str:
        return self.issuer.mint(user, 3600, time.time())

    def rid(self) -> str:
        return f"r{next(self._rids)}"

    async def raw(self) -> WsClient:
        """A connected WebSocket that has not said hello."""
        return await WsClient.open(self.nursery, self.port)

    async def connect(self, user: str, device: str = "d1") -> WsClient:
        client = await self.raw()
        await client.hello(self.token(user), device)
        return client


#: Short presence grace and batch windows keep tests fast; every wait is still event-driven.
TEST_CONFIG = NodeConfig(presence_grace_s=0.5, watermark_window_s=0.02)


async def serve_node(
    nursery: trio.Nursery, store: Store, config: NodeConfig, verify_token: TokenVerifier
) -> tuple[Node, int]:
    """A :class:`Node` on ``store`` running in ``nursery`` and serving a TCP port of its own
    on 127.0.0.1; returns it and its port (stop it with ``node.shutdown()``)."""
    node = Node(
        store=store, verify_token=verify_token, rng=random.Random(7), wall_ms=wall_ms, config=config
    )
    await nursery.start(node.run)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(node.serve_listeners, listeners)
    return node, int(listeners[0].socket.getsockname()[1])


#: The ``start_chat`` fixture: starts a node with the given config (see conftest.py).
StartChat = Callable[[NodeConfig], Awaitable[Chat]]
