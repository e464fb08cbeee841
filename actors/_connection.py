"""The connection actor: one client session over one :class:`~actors._transport.Transport`.

Owns the transport, the sans-IO :class:`protocol.ServerSession`, its outbox (a bounded list
on its :class:`~actors._router.ConnectionHandle`, written by an
:class:`~actors._writer.OutboxWriter` whose task exists only while there is something to
write) and its rate-limit bucket. The hello's backlog is :mod:`actors._backlog`'s, the
frames after it are handled by :mod:`actors._requests`. Keep-alive is the node-wide
:class:`~actors._keepalive.KeepAlive` timer's job, so an idle connection is one task (this
actor) plus trio-websocket's reader, ~19 KiB in all. Other actors reach it only
through its :class:`~actors._router.ConnectionHandle` (push a frame without blocking, or ask
it to close).

Flow: wait for ``hello`` (``hello_timeout_s`` from the TCP accept, else 4408; another first
frame → ``error bad_frame`` + 4400; bad token → ``error unauthenticated`` + 4401; a user with
``max_devices_per_user`` other devices here → 4429), ``welcome``, register in the router
(replacing and closing with 4409 an older connection of the same device), stream the
unacknowledged backlog (page by page as the outbox drains) then ``synced``, then read frames
one at a time (each spends a token of the connection's bucket and of its user's), in arrival order,
until the peer leaves or someone asks the actor to close. A frame's failure is contained: a
protocol error gets ``error``/``nack``; a Store error its code; an unexpected exception is
logged with its traceback and answered ``internal``; the connection goes on (G9).

Cancellation: a close asked through the handle (replacement 4409, shutdown 1001, slow
consumer 1013, keep-alive timeout 4408, token expiry 4401) cancels the actor's own scope,
after which it leaves the router and the presence registry and closes the transport with that
code (shielded, bounded by ``close_timeout_s``). Shutdown and token expiry *drain* first: the
writer finishes what is queued (acks, pushes, the farewell error) for up to
``drain_timeout_s``; other closes drop it. A cancellation from outside (the node crashed) leaves the
router at once and closes nothing gracefully: like a killed process, memory is just lost.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import trio

from persistence import DeviceSession, StoreError, UnknownConversation
from protocol import (
    ClientFrame,
    CloseCode,
    Error,
    ErrorCode,
    Hello,
    Nack,
    Ping,
    RemoteProtocolError,
    ServerFrame,
    ServerSession,
    Synced,
)

from ._admission import Ticket
from ._auth import Grant, InvalidToken
from ._backlog import after_sync, push_backlog
from ._context import NodeContext
from ._conversations import ConversationManager
from ._messages import DeviceConnected, DeviceDisconnected, PresenceRequest, SubscriberGone
from ._ratelimit import TokenBucket
from ._requests import RequestHandler, refusal
from ._router import ConnectionHandle, frame_bytes
from ._transport import Transport, TransportClosed
from ._writer import OutboxWriter, Spawn

log = logging.getLogger("actors.connection")

#: ``verify(token, now_s) -> grant``, raising :class:`~actors._auth.InvalidToken`.
TokenVerifier = Callable[[str, float], Grant]


class ConnectionActor:
    """See the module docstring. Run with :meth:`run`; it returns when the session ends."""

    __slots__ = (
        "_bucket",
        "_close",
        "_conn_id",
        "_ctx",
        "_drain",
        "_expires_at",
        "_handle",
        "_presence",
        "_requests",
        "_scope",
        "_session",
        "_spawn",
        "_ticket",
        "_transport",
        "_verify_token",
        "_writer",
    )

    def __init__(
        self,
        ctx: NodeContext,
        *,
        conversations: ConversationManager,
        presence: trio.MemorySendChannel[PresenceRequest],
        verify_token: TokenVerifier,
        transport: Transport,
        conn_id: int,
        spawn: Spawn,
        ticket: Ticket,
        accepted_at: float,
    ) -> None:
        self._ctx = ctx
        self._presence = presence
        self._verify_token = verify_token
        self._transport = transport
        self._conn_id = conn_id
        self._scope = trio.CancelScope()
        self._close: tuple[int, str] | None = None
        self._drain = False
        self._ticket = ticket
        # The hello deadline runs from the TCP accept: the WebSocket handshake is part of it.
        self._session = ServerSession(now=accepted_at, hello_timeout=ctx.config.hello_timeout_s)
        #: When the session's token expires, on trio's clock (known after the hello).
        self._expires_at = math.inf
        self._bucket = TokenBucket.full(
            ctx.config.rate_per_s, ctx.config.rate_burst, trio.current_time()
        )
        self._handle: ConnectionHandle | None = None
        self._spawn = spawn
        self._writer = OutboxWriter(
            conn_id,
            transport,
            self._session,
            spawn,
            self.request_close,
            ctx.config.writer_linger_s,
        )
        self._requests = RequestHandler(ctx, conversations, presence)

    # ------------------------------------------------------------------ lifecycle

    def request_close(self, code: int, reason: str, *, drain: bool = False) -> None:
        """Close with ``code`` (the first request wins); safe to call from any task.

        With ``drain`` the frames already queued (acks of stored messages, pushes, a farewell
        error) are written first, for at most ``drain_timeout_s``; without it they are dropped.
        """
        if self._close is None:
            self._close = (code, reason)
            self._drain = drain
        self._scope.cancel()

    async def run(self) -> None:
        """Serve the session to its end. Never raises except on outside cancellation."""
        self._transport.set_ping_observer(self._on_ping)
        try:
            with self._scope:
                try:
                    await self._serve()
                except Exception:
                    log.exception("connection %d failed", self._conn_id)
                    self.request_close(CloseCode.INTERNAL_ERROR, "internal error")
        except BaseException:
            self._abandon()
            raise
        await self._finish()

    def _on_ping(self) -> None:
        if self._close is None:
            self._session.note_ping(trio.current_time())

    async def _serve(self) -> None:
        # The stack of an idle connection is run -> _serve -> receive: every suspended frame
        # costs ~250 bytes per connection, so the steps before the read loop return first.
        opened = await self._authenticate()
        if opened is None:
            return
        device, grant = opened
        handle = self._open(device, grant.user)
        if handle is None:
            return
        try:
            await self._presence.send(DeviceConnected(user=handle.user, conn_id=self._conn_id))
            # The welcome waits in the outbox for the backlog and ``synced``: one write for all
            # of them (PROTOCOL.md fixes their order, not when the welcome leaves).
            if not await self._sync(handle):
                return
            while True:  # the read loop
                try:
                    data = await self._transport.receive()
                except TransportClosed:
                    return
                try:
                    frame = self._session.receive(data, trio.current_time())
                except RemoteProtocolError as exc:
                    await self._reply(self._session.reply_for(exc))
                    continue
                del data
                await self._dispatch(frame)
                del frame
        finally:
            if not self._drain:
                self._writer.stop(handle)
            self._ctx.keepalive.unwatch(self._conn_id)

    async def _authenticate(self) -> tuple[str, Grant] | None:
        """Wait for ``hello`` and verify its token: (device, grant), or None (closing)."""
        hello = await self._await_hello()
        if hello is None:
            return None
        now_s = self._ctx.wall_ms() / 1000
        try:
            grant = self._verify_token(hello.token, now_s)
        except InvalidToken as exc:
            error, code = self._session.reject(exc.reason)
            await self._send_direct(error)
            self.request_close(code, "unauthenticated")
            return None
        # The token's expiry on trio's clock, which is what the keep-alive timer runs on.
        self._expires_at = trio.current_time() + max(0.0, grant.expires_s - now_s)
        return hello.device, grant

    async def _await_hello(self) -> Hello | None:
        with trio.move_on_at(self._session.deadline()):
            try:
                data = await self._transport.receive()
            except TransportClosed:
                return None
            try:
                frame = self._session.receive(data, trio.current_time())
            except RemoteProtocolError as exc:
                await self._send_direct(self._session.reply_for(exc))
                self.request_close(exc.close_code or CloseCode.BAD_FRAME, exc.message[:120])
                return None
            assert isinstance(frame, Hello), "the session admits only hello first"
            return frame
        code = self._session.expired(trio.current_time()) or CloseCode.TIMEOUT
        self.request_close(code, "no hello in time")
        return None

    async def _send_direct(self, frame: Error | Nack) -> None:
        """Send before the outbox exists (hello errors)."""
        self._count(frame)
        try:
            await self._transport.send(self._session.send(frame))
        except TransportClosed:
            return

    def _open(self, device: str, user: str) -> ConnectionHandle | None:
        """Accept the hello: queue ``welcome``, enter the router and the keep-alive timer.

        None (closing with 4429) when the user has ``max_devices_per_user`` other devices
        connected to this node already (the same device replaces its old connection).
        """
        ctx, config = self._ctx, self._ctx.config
        others = [h for h in ctx.router.devices(user) if h.device != device]
        if len(others) >= config.max_devices_per_user:
            self.request_close(
                CloseCode.OVER_LIMIT,
                f"too many devices connected ({config.max_devices_per_user}); close one first",
            )
            return None
        self._ticket.welcomed()
        welcome = self._session.accept(
            user=user,
            device=device,
            session=ctx.token(),
            heartbeat_s=config.heartbeat_s,
            now=trio.current_time(),
            node=ctx.name,
        )
        handle = ConnectionHandle(
            self._conn_id,
            user,
            device,
            self.request_close,
            config.outbox_size,
            self._writer.kick,
            config.outbox_bytes,
        )
        handle.queue(welcome, frame_bytes(welcome))
        self._handle = handle
        self._writer.attach(handle)
        replaced = ctx.router.register(handle)
        if replaced is not None:
            replaced.close(CloseCode.REPLACED, "replaced by a newer connection of this device")
        # Several nodes: this node serves the device now (its session is recorded after the
        # sync, see _sync).
        handle.session, handle.since = welcome.session, ctx.wall_ms()
        ctx.remote.end(user, device)
        ctx.metrics.connections.inc()
        ctx.keepalive.watch(self._conn_id, self)
        return handle

    async def _finish(self) -> None:
        """Leave the node's tables, then close the transport with the requested code."""
        code, reason = self._close if self._close is not None else (CloseCode.NORMAL, "")
        config = self._ctx.config
        with trio.move_on_after(config.close_timeout_s + config.drain_timeout_s, shield=True):
            if self._drain and self._handle is not None:
                await self._writer.drain(self._handle, config.drain_timeout_s)
                self._writer.stop(self._handle)
            handle = self._leave_router()
            if handle is not None:
                self._ctx.sessions.close(
                    handle.user, handle.device, handle.session, self._ctx.wall_ms()
                )
                for request in self._farewells(handle):
                    await self._presence.send(request)
            await self._transport.close(code, reason[:120])

    def _abandon(self) -> None:
        """Cancelled from outside (the node is going down hard): forget, close nothing."""
        handle = self._leave_router()
        if handle is None:
            return
        for request in self._farewells(handle):
            try:
                self._presence.send_nowait(request)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                return

    def _leave_router(self) -> ConnectionHandle | None:
        handle, self._handle = self._handle, None
        self._writer.detach()
        if handle is not None:
            self._ctx.router.unregister(handle)
            self._ctx.metrics.connections.dec()
            if not self._ctx.router.devices(handle.user):
                self._ctx.budgets.release(handle.user, trio.current_time())
        return handle

    def _farewells(self, handle: ConnectionHandle) -> list[PresenceRequest]:
        ts = self._ctx.wall_ms()
        return [
            DeviceDisconnected(user=handle.user, conn_id=handle.conn_id, ts=ts),
            SubscriberGone(origin=handle),
        ]

    # ------------------------------------------------------------------ keep-alive

    def keepalive_deadline(self) -> float:
        """For the node's :class:`~actors._keepalive.KeepAlive` timer: the keep-alive
        deadline, or the token's expiry when that comes first."""
        return min(self._session.deadline(), self._expires_at)

    def keepalive_check(self, now: float) -> bool:
        """Close with 4408 when nothing was heard for ``2 * heartbeat_s``; at the token's
        expiry, ``error unauthenticated`` ("token expired") and close 4401."""
        handle = self._handle
        if now >= self._expires_at and handle is not None:
            error = Error(code=ErrorCode.UNAUTHENTICATED, message="token expired")
            self._count(error)
            # Behind whatever is queued (even during the hello sync), then the close.
            handle.queue(error, frame_bytes(error))
            self._writer.kick()
            self.request_close(CloseCode.UNAUTHENTICATED, "token expired", drain=True)
            return True
        code = self._session.expired(now)
        if code is None:
            return False
        self.request_close(code, f"nothing heard for {2 * self._ctx.config.heartbeat_s} s")
        return True

    async def _sync(self, handle: ConnectionHandle) -> bool:
        """Push the unacknowledged backlog, ``synced``, then the pushes parked meanwhile.

        Only the backlog read is on the hello's path. Ending the user's offline period is
        written afterwards, in the background (see :func:`~actors._backlog.after_sync`):
        nothing the client is sent depends on it.
        """
        try:
            synced = await push_backlog(self._ctx, handle, self._writer)
        except StoreError as exc:
            error = Error(code=exc.code, message=f"cannot sync: {exc.message}")
            self._count(error)
            await self._writer.enqueue(handle, error)
            # welcome + error out before the close cancels the writer
            await self._writer.drain(handle, self._ctx.config.close_timeout_s)
            self.request_close(CloseCode.TRY_AGAIN_LATER, "storage unavailable")
            return False
        await self._writer.enqueue(handle, Synced())
        while parked := handle.take_parked(synced):
            for frame in parked:
                await self._writer.enqueue(handle, frame)
        handle.backlog_up_to = synced.up_to
        handle.syncing = False
        # Off the hello's path too: the record of this session, which makes a node still
        # holding an older connection of the device close it with 4409.
        self._ctx.sessions.open(
            DeviceSession(
                user=handle.user,
                device=handle.device,
                session=handle.session,
                node=self._ctx.name,
                since=handle.since,
            )
        )
        self._spawn(functools.partial(after_sync, self._ctx, handle.user, handle.device))
        return True

    # ------------------------------------------------------------------ requests

    async def _reply(self, frame: ServerFrame) -> None:
        handle = self._handle
        assert handle is not None
        self._count(frame)
        await self._writer.enqueue(handle, frame)

    def _count(self, frame: ServerFrame) -> None:
        if isinstance(frame, Error):
            self._ctx.metrics.errors.labels(frame.code.value).inc()
        elif isinstance(frame, Nack):
            self._ctx.metrics.nacks.labels(frame.code.value).inc()

    async def _dispatch(self, frame: ClientFrame) -> None:
        if not isinstance(frame, Ping):
            now, user = trio.current_time(), self._session.user
            assert user is not None, "frames are dispatched only after the welcome"
            if not self._bucket.take(now):
                message = "rate limit exceeded; slow down"
            elif not self._ctx.budgets.take(user, now):
                message = "rate limit of this user (all devices together) exceeded; slow down"
            else:
                message = None
            if message is not None:
                await self._reply(refusal(frame, ErrorCode.RATE_LIMITED, message, True))
                return
        handle = self._handle
        assert handle is not None
        try:
            await self._requests.handle(handle, frame, self._reply)
        except UnknownConversation as exc:
            # Authorization before existence: nobody is a member of a conversation that does
            # not exist, and answering not_found would let anyone probe which ids exist.
            message = f"you are not a member of conversation {exc.conv!r}"
            await self._reply(refusal(frame, ErrorCode.FORBIDDEN, message, False))
        except StoreError as exc:
            await self._reply(refusal(frame, exc.code, exc.message, exc.retryable))
        except Exception:
            log.exception("internal error handling a %r frame", frame.TYPE)
            message = f"internal error handling {frame.TYPE!r}"
            await self._reply(refusal(frame, ErrorCode.INTERNAL, message, False))
