"""The connection actor: one client session over one :class:`~actors._transport.Transport`.

Owns the transport, the sans-IO :class:`protocol.ServerSession`, its outbox (a bounded list
on its :class:`~actors._router.ConnectionHandle`, written by a writer task that exists only
while there is something to write) and its rate-limit bucket. Keep-alive is the node-wide
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
from collections.abc import Awaitable, Callable

import trio

from persistence import (
    BacklogRange,
    DeviceSession,
    StoredMessage,
    StoreError,
    UnknownConversation,
)
from persistence import ConvRow as StoredConvRow
from protocol import (
    ClientFrame,
    CloseCode,
    ConvRow,
    Convs,
    Error,
    ErrorCode,
    GroupAdd,
    GroupCreate,
    GroupLeave,
    GroupRemove,
    Hello,
    History,
    MemberEvent,
    MemberMarks,
    Nack,
    Ping,
    Pong,
    PresenceSub,
    PresenceUnsub,
    Read,
    Recv,
    RemoteProtocolError,
    Send,
    ServerFrame,
    ServerSession,
    Synced,
    Typing,
    convs_result,
    count_within,
    group_created_result,
    history_result,
)

from ._admission import Ticket
from ._auth import Grant, InvalidToken
from ._config import HISTORY_FOR_DEPARTED
from ._context import NodeContext, msg_frame
from ._conversations import ConversationManager
from ._messages import (
    DeviceConnected,
    DeviceDisconnected,
    MarkRequest,
    MemberRequest,
    PresenceRequest,
    SendRequest,
    Subscribe,
    SubscriberGone,
    TypingRequest,
    Unsubscribe,
)
from ._ratelimit import TokenBucket
from ._router import ConnectionHandle, SyncedBacklog, frame_bytes
from ._transport import Transport, TransportClosed, send_batch

log = logging.getLogger("actors.connection")

#: ``verify(token, now_s) -> grant``, raising :class:`~actors._auth.InvalidToken`.
TokenVerifier = Callable[[str, float], Grant]
#: Starts a task in the node's nursery (``nursery.start_soon``).
Spawn = Callable[[Callable[[], Awaitable[None]]], None]


class ConnectionActor:
    """See the module docstring. Run with :meth:`run`; it returns when the session ends."""

    __slots__ = (
        "_bucket",
        "_close",
        "_conn_id",
        "_conversations",
        "_ctx",
        "_drain",
        "_expires_at",
        "_handle",
        "_presence",
        "_scope",
        "_session",
        "_space",
        "_spawn",
        "_ticket",
        "_transport",
        "_verify_token",
        "_writer_scope",
        "_writing",
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
        self._conversations = conversations
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
        # The writer runs (spawned in the node's nursery) only while there is something to
        # write, inside ``_writer_scope`` so the session's end can stop it. ``_space`` is set
        # when a full outbox drained (created only when someone waits for it).
        self._spawn = spawn
        self._writing = False
        self._writer_scope: trio.CancelScope | None = None
        self._space: trio.Event | None = None

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
                self._stop_writer(handle)
            self._ctx.keepalive.unwatch(self._conn_id)

    def _stop_writer(self, handle: ConnectionHandle) -> None:
        handle.closed = True
        if self._writer_scope is not None:
            self._writer_scope.cancel()

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
            self._kick,
            config.outbox_bytes,
        )
        handle.queue(welcome, frame_bytes(welcome))
        self._handle = handle
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
                await self._drain_outbox(config.drain_timeout_s)
                self._stop_writer(self._handle)
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

    # ------------------------------------------------------------------ tasks

    def _kick(self) -> None:
        """Start the writer unless it runs (it drains the outbox, then ends)."""
        handle = self._handle
        if not self._writing and handle is not None and not handle.closed:
            self._writing = True
            self._spawn(self._writer)

    async def _writer(self) -> None:
        """Write the outbox, a whole batch at a time (one send for a WebSocket), until it is
        empty; then end (the next push starts a new writer).

        It runs in the node's nursery, not in a nursery of the connection's own (that would
        cost a nursery and a cancel scope per idle connection), so it contains its failures
        the way the connection actor does: logged, then close 1011.
        """
        handle = self._handle
        if handle is None:  # the connection left the router before this task got to run
            self._writing = False
            return
        try:
            with trio.CancelScope() as self._writer_scope:
                while handle.outbox and not handle.closed:
                    frames = handle.take()
                    texts = [self._session.send(frame) for frame in frames]
                    del frames
                    try:
                        await send_batch(self._transport, texts)
                    except TransportClosed:
                        handle.closed = True
                        self.request_close(CloseCode.NORMAL, "peer went away")
                        return
                    del texts
                    handle.written()
                    if self._space is not None:
                        self._space.set()
                        self._space = None
        except Exception:
            log.exception("connection %d: writer failed", self._conn_id)
            handle.closed = True
            self.request_close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._writer_scope = None
            self._writing = False

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
            self._kick()
            self.request_close(CloseCode.UNAUTHENTICATED, "token expired", drain=True)
            return True
        code = self._session.expired(now)
        if code is None:
            return False
        self.request_close(code, f"nothing heard for {2 * self._ctx.config.heartbeat_s} s")
        return True

    async def _drain_outbox(self, timeout_s: float) -> None:
        """Wait until the writer wrote everything queued (for at most ``timeout_s``)."""
        handle = self._handle
        assert handle is not None
        with trio.move_on_after(timeout_s):
            while handle.unsent and not handle.closed:
                if self._space is None:
                    self._space = trio.Event()
                await self._space.wait()

    async def _enqueue(self, frame: ServerFrame) -> None:
        """Queue one of the connection's own frames, waiting while the outbox is full (in
        frames or in bytes). An outbox emptier than its byte limit takes any frame, however
        large, so that every frame fits eventually."""
        handle = self._handle
        assert handle is not None
        size = frame_bytes(frame)
        while handle.unsent >= handle.limit or (
            handle.unsent and handle.unsent_bytes + size > handle.byte_limit
        ):
            if self._space is None:
                self._space = trio.Event()
            await self._space.wait()
        handle.queue(frame, size)
        self._kick()

    async def _sync(self, handle: ConnectionHandle) -> bool:
        """Push the unacknowledged backlog, ``synced``, then the pushes parked meanwhile.

        Only the backlog read is on the hello's path. Ending the user's offline period is
        written afterwards, in the background (see :meth:`_after_sync`): nothing the client
        is sent depends on it.
        """
        try:
            synced = await self._push_backlog(handle)
        except StoreError as exc:
            error = Error(code=exc.code, message=f"cannot sync: {exc.message}")
            self._count(error)
            await self._enqueue(error)
            # welcome + error out before the close cancels the writer
            await self._drain_outbox(self._ctx.config.close_timeout_s)
            self.request_close(CloseCode.TRY_AGAIN_LATER, "storage unavailable")
            return False
        await self._enqueue(Synced())
        while parked := handle.take_parked(synced):
            for frame in parked:
                await self._enqueue(frame)
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
        self._spawn(functools.partial(self._after_sync, handle.user, handle.device))
        return True

    async def _push_backlog(self, handle: ConnectionHandle) -> SyncedBacklog:
        """Stream the backlog: where it is (one Store call), then its messages a page of
        ``backlog_page`` at a time, each page read only once the outbox holds less than
        ``backlog_window_bytes`` — so its memory is bounded however long it is, and one
        user's long backlog is many short Store calls that other requests interleave with.
        Returns what it pushed (see :class:`~actors._router.SyncedBacklog`)."""
        store, config = self._ctx.store, self._ctx.config
        with self._ctx.timed("sync"):
            ranges = await store.unsynced(handle.user, handle.device)
        synced = SyncedBacklog()
        # Pages of about backlog_page messages: a long range is split, short ones (a user in
        # many conversations with a little each) go several to a Store call.
        page: list[BacklogRange] = []
        size = 0
        for span in ranges:
            for lo in range(span.lo, span.hi + 1, config.backlog_page):
                hi = min(span.hi, lo + config.backlog_page - 1)
                page.append(BacklogRange(conv=span.conv, lo=lo, hi=hi))
                size += hi - lo + 1
                if size >= config.backlog_page:
                    await self._push_page(handle, page, synced)
                    page, size = [], 0
        if page:
            await self._push_page(handle, page, synced)
        return synced

    async def _push_page(
        self, handle: ConnectionHandle, page: list[BacklogRange], synced: SyncedBacklog
    ) -> None:
        """Read one page of the backlog once the outbox has room for it, and queue it."""
        await self._wait_for_room(handle, self._ctx.config.backlog_window_bytes)
        with self._ctx.timed("sync_page"):
            messages = await self._ctx.store.read_ranges(page)
        for message in messages:
            await self._enqueue(msg_frame(message))
            if message.kind == "member":
                _note_departure(synced, message, handle.user)
        self._ctx.metrics.messages_out.inc(len(messages))
        for span in page:
            synced.up_to[span.conv] = span.hi

    async def _wait_for_room(self, handle: ConnectionHandle, room_bytes: int) -> None:
        """Wait until the outbox holds less than ``room_bytes``."""
        while handle.unsent_bytes >= room_bytes and not handle.closed:
            if self._space is None:
                self._space = trio.Event()
            await self._space.wait()

    async def _after_sync(self, user: str, device: str) -> None:
        """End the user's offline period (G8: the next message stored while they are
        offline opens a new notification job).

        Off the hello's path: a message stored before this ran finds the user in the
        router, so it opens no job either. A failure (the Store retried already) is logged;
        the next hello of the device writes it again.
        """
        store = self._ctx.store
        try:
            with self._ctx.timed("user_online"):
                await store.user_online(user)
        except StoreError as exc:
            log.warning("could not record the connection of %s/%s: %s", user, device, exc)

    # ------------------------------------------------------------------ requests

    async def _reply(self, frame: ServerFrame) -> None:
        self._count(frame)
        await self._enqueue(frame)

    def _count(self, frame: ServerFrame) -> None:
        if isinstance(frame, Error):
            self._ctx.metrics.errors.labels(frame.code.value).inc()
        elif isinstance(frame, Nack):
            self._ctx.metrics.nacks.labels(frame.code.value).inc()

    async def _refuse(self, frame: ClientFrame, code: ErrorCode, message: str, retry: bool) -> None:
        if isinstance(frame, Send):
            await self._reply(
                Nack(cmid=frame.cmid, code=code, message=message, retry=retry, rid=frame.rid)
            )
        else:
            await self._reply(Error(code=code, message=message, rid=frame.rid))

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
                await self._refuse(frame, ErrorCode.RATE_LIMITED, message, True)
                return
        try:
            await self._handle_frame(frame)
        except UnknownConversation as exc:
            # Authorization before existence: nobody is a member of a conversation that does
            # not exist, and answering not_found would let anyone probe which ids exist.
            message = f"you are not a member of conversation {exc.conv!r}"
            await self._refuse(frame, ErrorCode.FORBIDDEN, message, False)
        except StoreError as exc:
            await self._refuse(frame, exc.code, exc.message, exc.retryable)
        except Exception:
            log.exception("internal error handling a %r frame", frame.TYPE)
            await self._refuse(
                frame, ErrorCode.INTERNAL, f"internal error handling {frame.TYPE!r}", False
            )

    async def _handle_frame(self, frame: ClientFrame) -> None:
        handle = self._handle
        assert handle is not None
        submit = self._conversations.submit
        match frame:
            case Send():
                await self._send(handle, frame)
            case Recv(conv=conv, seq=seq, rid=rid):
                await submit(conv, MarkRequest(origin=handle, kind="recv", seq=seq, rid=rid))
            case Read(conv=conv, seq=seq, rid=rid):
                await submit(conv, MarkRequest(origin=handle, kind="read", seq=seq, rid=rid))
            case History():
                await self._history(handle, frame)
            case Convs(limit=limit, cursor=cursor, rid=rid):
                with self._ctx.timed("convs"):
                    page = await self._ctx.store.conversations(
                        handle.user, handle.device, limit=limit, cursor=cursor
                    )
                    rows = tuple(_conv_row(r) for r in page.rows)
                    kept = count_within(rows)
                    if kept < len(rows):
                        # Over the result limit: the newest rows that fit, with the cursor
                        # that continues right after them (the store knows their activity).
                        page = await self._ctx.store.conversations(
                            handle.user, handle.device, limit=kept, cursor=cursor
                        )
                        rows = tuple(_conv_row(r) for r in page.rows)
                await self._reply(convs_result(rid, rows, page.cursor is not None, page.cursor))
            case GroupCreate():
                await self._group_create(handle, frame)
            case GroupAdd(conv=conv, user=user, rid=rid):
                await submit(conv, MemberRequest(origin=handle, op="add", user=user, rid=rid))
            case GroupRemove(conv=conv, user=user, rid=rid):
                await submit(conv, MemberRequest(origin=handle, op="remove", user=user, rid=rid))
            case GroupLeave(conv=conv, rid=rid):
                await submit(
                    conv, MemberRequest(origin=handle, op="leave", user=handle.user, rid=rid)
                )
            case PresenceSub():
                await self._presence_sub(handle, frame)
            case PresenceUnsub(users=users):
                await self._presence.send(Unsubscribe(origin=handle, users=users))
            case Typing(conv=conv, rid=rid):
                await submit(conv, TypingRequest(origin=handle, rid=rid))
            case Ping(rid=rid):
                await self._reply(Pong(rid=rid))
            case Hello():
                raise AssertionError("the session rejects a second hello")

    async def _send(self, handle: ConnectionHandle, frame: Send) -> None:
        if frame.to is not None:
            conv = await self._conversations.direct_conversation(handle.user, frame.to)
        else:
            assert frame.conv is not None
            conv = frame.conv
        request = SendRequest(origin=handle, cmid=frame.cmid, body=frame.body, rid=frame.rid)
        await self._conversations.submit(conv, request)

    async def _history(self, handle: ConnectionHandle, frame: History) -> None:
        store = self._ctx.store
        with self._ctx.timed("history"):
            conversation = await store.get_conversation(frame.conv)
            departed_ok = (
                self._ctx.mutant(HISTORY_FOR_DEPARTED) and handle.user in conversation.departed
            )
            if not conversation.is_member(handle.user) and not departed_ok:
                await self._refuse(
                    frame, ErrorCode.FORBIDDEN, f"not a member of {frame.conv}", False
                )
                return
            messages, more = await store.history(frame.conv, handle.user, frame.before, frame.limit)
        page = tuple(msg_frame(m) for m in messages)
        # Under the result limit: the newest messages that fit; ``more`` says older ones exist.
        kept = count_within(page[::-1])
        if kept < len(page):
            page, more = page[len(page) - kept :], True
        await self._reply(history_result(frame.rid, page, more))

    async def _group_create(self, handle: ConnectionHandle, frame: GroupCreate) -> None:
        if not self._ctx.creations.take(handle.user, trio.current_time()):
            message = (
                f"more than {self._ctx.config.creations_per_minute} new conversations "
                "a minute; wait a little"
            )
            await self._refuse(frame, ErrorCode.RATE_LIMITED, message, True)
            return
        # The manager also finds a group an ambiguous Store failure created after all, and
        # announces the creation itself (even if this connection drops meanwhile).
        conversation, _event = await self._conversations.create_group(
            handle.user, handle.device, frame.title, frame.members
        )
        await self._reply(group_created_result(frame.rid, conversation.id))

    async def _presence_sub(self, handle: ConnectionHandle, frame: PresenceSub) -> None:
        users = list(dict.fromkeys(frame.users))
        with self._ctx.timed("contacts"):
            contacts = await self._ctx.store.contacts(handle.user)
        allowed = tuple(u for u in users if u == handle.user or u in contacts)
        denied = tuple(u for u in users if u not in allowed)
        await self._presence.send(
            Subscribe(origin=handle, allowed=allowed, denied=denied, rid=frame.rid)
        )


def _conv_row(row: StoredConvRow) -> ConvRow:
    return ConvRow(
        conv=row.conv,
        kind=row.kind,
        title=row.title,
        members=row.members,
        last_seq=int(row.last_seq),
        delivered=int(row.delivered),
        read=int(row.read),
        unread=int(row.unread),
        others=tuple(
            MemberMarks(user=m.user, delivered=int(m.delivered), read=int(m.read))
            for m in row.others
        ),
    )


def _note_departure(synced: SyncedBacklog, message: StoredMessage, user: str) -> None:
    """Track whether the backlog's last member event about ``user`` in a conversation is
    their departure (a later add in the same backlog is a rejoin)."""
    try:
        event = MemberEvent.parse(message.body)
    except RemoteProtocolError:
        return
    if user not in event.users:
        return
    if event.op in ("remove", "leave"):
        synced.departed.add(message.conv)
    else:
        synced.departed.discard(message.conv)
