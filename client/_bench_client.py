"""A lean benchmark client: one device speaking the wire protocol over trio-websocket.

Why not the SDK's ``Client``: the benchmark must see the wire as it is (a push of a
(conv, seq) the device already holds is counted, not silently dropped) and must cost as little
CPU as possible, because on a small machine every cycle the load generator burns is taken from
the node it measures. So this client does only what a well-behaved device must: ``hello``,
keep-alive by WebSocket ping (driven by the owner, see :meth:`BenchClient.ping`), cumulative
``recv`` watermarks batched by the owner (:meth:`BenchClient.flush_recv`), resending unacked
sends with the same ``cmid`` after a reconnect, and retrying ``nack``s marked ``retry``.
Frames are built and parsed by the project codec (:func:`protocol.encode`,
:func:`protocol.decode_server_frame`).

Ownership: a :class:`BenchClient` belongs to the worker that created it; its :meth:`run` task
owns the connection, and the owner's callbacks (:class:`ClientHooks`) run inside that task,
synchronously, so they must not block. Cancelling :meth:`run` closes the connection (bounded
by ``close_timeout_s``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
import trio
import trio_websocket

from protocol import (
    Ack,
    Error,
    GroupCreate,
    Hello,
    Msg,
    Nack,
    Recv,
    RemoteProtocolError,
    Result,
    Send,
    ServerFrame,
    Synced,
    Welcome,
    decode_server_frame,
    encode,
)

#: How a connection can end (besides cancellation).
_CONNECTION_ENDED = (
    trio_websocket.ConnectionClosed,
    trio_websocket.HandshakeError,
    trio.BrokenResourceError,
    OSError,
)
#: Seconds between reconnect attempts after a connection was lost.
RECONNECT_DELAY_S = 0.5
#: First backoff (doubling per attempt) before resending a send nacked with ``retry: true``.
RETRY_BASE_S = 0.1


class ClientHooks(Protocol):
    """What a worker learns from its clients (called inside the client's task; never block)."""

    def on_ack(self, client: BenchClient, ack: Ack, body: str) -> None: ...
    def on_msg(self, client: BenchClient, msg: Msg, redundant: bool) -> None: ...
    def on_failed(self, client: BenchClient, nack: Nack, body: str) -> None: ...
    def on_problem(self, client: BenchClient, code: str) -> None: ...


@attrs.define
class _ConvMarks:
    """What this device holds of one conversation: every seq ≤ ``watermark``, and ``above``."""

    watermark: int = 0
    above: set[int] = attrs.Factory(set)
    reported: int = 0

    def holds(self, seq: int) -> bool:
        return seq <= self.watermark or seq in self.above

    def hold(self, seq: int) -> None:
        self.above.add(seq)
        while self.watermark + 1 in self.above:
            self.watermark += 1
            self.above.discard(self.watermark)


@attrs.define
class _Pending:
    """An unacked send: its wire text, its body, retries so far and when to retry next."""

    text: str
    body: str
    tries: int = 0
    retry_at: float | None = None


@attrs.define(eq=False)
class Endpoint:
    """Where and how to connect: node address, WebSocket resource and local source address."""

    host: str
    port: int
    resource: str
    local_address: str | None = None


@attrs.define(eq=False)
class BenchClient:
    """One user's one device (see the module docstring)."""

    index: int
    user: str
    token: str
    endpoint: Endpoint
    hooks: ClientHooks
    device: str = "bench"
    close_timeout_s: float = 5.0
    #: Unacked sends by cmid, oldest first.
    outbox: dict[str, _Pending] = attrs.Factory(dict)
    convs: dict[str, _ConvMarks] = attrs.Factory(dict)
    #: Sessions that reached ``synced`` so far (reconnects are ``syncs - 1``).
    syncs: int = 0
    heartbeat_s: int = 30
    handshake_s: float = 0.0
    _ws: trio_websocket.WebSocketConnection | None = None
    _queue: list[str] = attrs.Factory(list)
    _wake: trio.Event = attrs.Factory(trio.Event)
    _synced: trio.Event = attrs.Factory(trio.Event)
    _dirty: bool = False
    _replies: dict[str, Callable[[ServerFrame], None]] = attrs.Factory(dict)
    _next_rid: int = 0
    _retrying: int = 0

    @property
    def connected(self) -> bool:
        """True while a session (after ``welcome``) is open."""
        return self._ws is not None and self._synced.is_set()

    # ----------------------------------------------------------------- owner's actions

    def send(self, cmid: str, body: str, *, conv: str | None = None, to: str | None = None) -> None:
        """Queue a ``send``; it goes out now if connected, else after the next ``welcome``."""
        text = encode(Send(cmid=cmid, body=body, conv=conv, to=to))
        self.outbox[cmid] = _Pending(text=text, body=body)
        if self._ws is not None:
            self._write(text)

    def create_group(
        self, title: str, members: tuple[str, ...], on_reply: Callable[[ServerFrame], None]
    ) -> None:
        """Send ``group_create``; ``on_reply`` gets its ``result`` or ``error``."""
        self._next_rid += 1
        rid = f"g{self._next_rid}"
        self._replies[rid] = on_reply
        self._write(encode(GroupCreate(title=title, members=members, rid=rid)))

    @property
    def needs_tick(self) -> bool:
        """True while :meth:`tick` has work: a risen watermark or a delayed resend."""
        return self._dirty or self._retrying > 0

    def tick(self, now: float) -> int:
        """Resend what a ``retry`` nack delayed until ``now`` (trio time) and send ``recv``
        for every conversation whose watermark rose; the number of ``recv`` frames sent."""
        if self._ws is None:
            return 0
        if self._retrying:
            for pending in self.outbox.values():
                if pending.retry_at is not None and pending.retry_at <= now:
                    pending.retry_at = None
                    self._retrying -= 1
                    self._write(pending.text)
        if not self._dirty:
            return 0
        self._dirty = False
        sent = 0
        for conv, marks in self.convs.items():
            if marks.watermark > marks.reported:
                marks.reported = marks.watermark
                self._write(encode(Recv(conv=conv, seq=marks.watermark)))
                sent += 1
        return sent

    async def ping(self) -> bool:
        """One WebSocket ping, waiting for its pong; False if not connected or closed."""
        ws = self._ws
        if ws is None:
            return False
        try:
            await ws.ping()
        except (trio_websocket.ConnectionClosed, trio.BrokenResourceError, ValueError):
            return False
        return True

    async def wait_synced(self) -> None:
        """Return once the current connection has received ``synced``."""
        await self._synced.wait()

    # ----------------------------------------------------------------- the connection task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, and reconnect whenever the connection is lost, until cancelled.

        ``task_status.started()`` is called after the first ``synced``; a failure of the first
        connection (refused, closed, unauthenticated) propagates instead of being retried.
        Later losses are reported to ``hooks.on_problem`` as ``closed:<close code>`` or
        ``connect:<exception>`` and retried every :data:`RECONNECT_DELAY_S` seconds.
        """
        while True:
            try:
                await self._session(task_status if not self.syncs else None)
            except (OSError, trio_websocket.HandshakeError, trio.BrokenResourceError) as exc:
                if not self.syncs:
                    raise
                self.hooks.on_problem(self, f"connect:{type(exc).__name__}")
            except trio_websocket.ConnectionClosed as exc:
                if not self.syncs:
                    raise
                code = exc.reason.code if exc.reason is not None else None
                self.hooks.on_problem(self, f"closed:{code}")
            await trio.sleep(RECONNECT_DELAY_S)

    async def _session(self, task_status: trio.TaskStatus[None] | None) -> None:
        """One connection, from TCP connect to its end, which is always an exception:
        ``ConnectionClosed``, ``HandshakeError``, ``OSError`` or ``BrokenResourceError``
        (raised bare, never inside an exception group)."""
        self._synced = trio.Event()
        began = trio.current_time()
        stream = await trio.open_tcp_stream(
            self.endpoint.host, self.endpoint.port, local_address=self.endpoint.local_address
        )
        ended: Exception | None = None
        async with trio.open_nursery() as nursery:
            ws: trio_websocket.WebSocketConnection | None = None
            try:
                ws = await trio_websocket.wrap_client_stream(
                    nursery,
                    stream,
                    self.endpoint.host,
                    self.endpoint.resource,
                    message_queue_size=64,
                )
                await self._converse(nursery, ws, began, task_status)
            except _CONNECTION_ENDED as exc:
                ended = exc
            finally:
                self._ws = None
                with trio.CancelScope(shield=True), trio.move_on_after(self.close_timeout_s):
                    await (ws.aclose() if ws is not None else stream.aclose())
                nursery.cancel_scope.cancel()
        assert ended is not None  # _converse only ever ends by raising
        raise ended

    async def _converse(
        self,
        nursery: trio.Nursery,
        ws: trio_websocket.WebSocketConnection,
        began: float,
        task_status: trio.TaskStatus[None] | None,
    ) -> None:
        await ws.send_message(encode(Hello(token=self.token, device=self.device)))
        welcome = await self._expect_welcome(ws)
        self.heartbeat_s = welcome.heartbeat_s
        self._ws = ws
        self._queue = [pending.text for pending in self.outbox.values()]
        for pending in self.outbox.values():
            pending.retry_at = None
        self._retrying = 0
        self._wake = trio.Event()
        nursery.start_soon(self._writer, ws)
        while not self._synced.is_set():
            self._receive(await ws.get_message())
        self.handshake_s = trio.current_time() - began
        self.syncs += 1
        if task_status is not None:
            task_status.started()
        while True:
            self._receive(await ws.get_message())

    async def _expect_welcome(self, ws: trio_websocket.WebSocketConnection) -> Welcome:
        frame = decode_server_frame(await ws.get_message())
        if isinstance(frame, Welcome):
            return frame
        detail = f"{frame.code.value}: {frame.message}" if isinstance(frame, Error) else frame.TYPE
        raise trio_websocket.HandshakeError(f"expected welcome, got {detail}")

    async def _writer(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            queue, self._queue = self._queue, []
            try:
                for text in queue:
                    await ws.send_message(text)
            except trio_websocket.ConnectionClosed:
                return  # the reader sees the close too and ends the session

    def _write(self, text: str) -> None:
        self._queue.append(text)
        self._wake.set()

    # ----------------------------------------------------------------- input

    def _receive(self, text: str | bytes) -> None:
        try:
            frame = decode_server_frame(text)
        except RemoteProtocolError as exc:
            self.hooks.on_problem(self, f"undecodable:{exc.code.value}")
            return
        match frame:
            case Msg():
                self._on_msg(frame)
            case Ack():
                self._on_ack(frame)
            case Nack():
                self._on_nack(frame)
            case Synced():
                self._synced.set()
            case Result() | Error() if frame.rid in self._replies:
                assert frame.rid is not None
                self._replies.pop(frame.rid)(frame)
            case Error():
                self.hooks.on_problem(self, f"error:{frame.code.value}")
        # Receipts, presence, typing and pongs are not measured: no case for them.

    def _marks(self, conv: str) -> _ConvMarks:
        marks = self.convs.get(conv)
        if marks is None:
            marks = self.convs[conv] = _ConvMarks()
        return marks

    def _on_msg(self, msg: Msg) -> None:
        marks = self._marks(msg.conv)
        redundant = marks.holds(msg.seq)
        if not redundant:
            marks.hold(msg.seq)
            self._dirty = True
        self.hooks.on_msg(self, msg, redundant)

    def _on_ack(self, ack: Ack) -> None:
        entry = self.outbox.pop(ack.cmid, None)
        marks = self._marks(ack.conv)
        marks.hold(ack.seq)
        if marks.reported == ack.seq - 1:
            marks.reported = ack.seq  # the server moved our watermark itself (G4)
        if entry is None:
            self.hooks.on_problem(self, "ack:unknown_cmid")
            return
        if entry.retry_at is not None:
            self._retrying -= 1
        self.hooks.on_ack(self, ack, entry.body)

    def _on_nack(self, nack: Nack) -> None:
        self.hooks.on_problem(self, f"nack:{nack.code.value}")
        pending = self.outbox.get(nack.cmid)
        if pending is None:
            return
        if not nack.retry:
            del self.outbox[nack.cmid]
            if pending.retry_at is not None:
                self._retrying -= 1
            self.hooks.on_failed(self, nack, pending.body)
            return
        if pending.retry_at is None:
            self._retrying += 1
        pending.retry_at = trio.current_time() + min(5.0, RETRY_BASE_S * 2**pending.tries)
        pending.tries += 1


@attrs.define
class PingStats:
    """WebSocket pings sent and pongs received by :func:`keep_alive`."""

    pings: int = 0
    pongs: int = 0


async def keep_alive(clients: list[BenchClient], stats: PingStats) -> None:
    """WebSocket-ping every client once per heartbeat interval, spread evenly, until cancelled.

    This is the protocol's keep-alive duty (a frame or a ping at least every ``heartbeat_s``);
    a ping whose pong does not come within the interval is given up.
    """
    heartbeat_s = min((c.heartbeat_s for c in clients), default=30)
    gap_s = heartbeat_s / max(1, len(clients))

    async def ping(client: BenchClient) -> None:
        if not client.connected:
            return
        stats.pings += 1
        with trio.move_on_after(heartbeat_s):
            if await client.ping():
                stats.pongs += 1

    async with trio.open_nursery() as nursery:
        while True:
            for client in clients:
                await trio.sleep(gap_s)
                nursery.start_soon(ping, client)
