"""The trio client SDK: a :class:`protocol.ClientSession` driven over a reconnecting WebSocket.

Ownership: a :class:`Client` owns one session and, while open, one background task tree
(started by ``async with``): the connection loop of its :class:`~client._link.Link`, and
per connection a reader, a writer and a keep-alive task. Only those tasks touch the
WebSocket; callers only touch the session (which is plain data, and trio is
single-threaded) and then wake the writer.

Cancellation: cancelling :meth:`Client.send` or a request helper abandons the wait, not
the message -- a send stays in the outbox and is delivered (its ``Acked`` still arrives on
:meth:`Client.events`). Leaving ``async with`` flushes pending ``recv`` reports (bounded
by one second), closes the connection with 1000 and fails every waiter with
:class:`ClientClosed`.

Randomness and time: cmids and backoff jitter come from the injected ``rng``; time is
``trio.current_time()``; nothing else is read from the environment, so under the
simulator's ``MockClock`` and a seeded ``rng`` a client is deterministic.
"""

from __future__ import annotations

import random
from collections import deque
from contextlib import AsyncExitStack, suppress
from types import TracebackType
from typing import Generic, TypeVar

import attrs
import trio

from protocol import (
    Ack,
    Acked,
    ClientSession,
    ClientState,
    ConvRow,
    Convs,
    ErrorCode,
    GroupAdd,
    GroupCreate,
    GroupLeave,
    GroupRemove,
    History,
    Msg,
    PresenceSub,
    PresenceUnsub,
    RemoteProtocolError,
    RequestCompleted,
    RequestFailed,
    RequestFrame,
    Result,
    SendFailed,
    StateChanged,
    history_messages,
)

from ._errors import ClientClosed, RequestError, RequestInterrupted, RequestTimeout, SendRefused
from ._link import ClientEvent, Link, TokenProvider
from ._transport import Transport, websocket_transport

_T = TypeVar("_T")


@attrs.frozen(kw_only=True)
class HistoryPage:
    """One page of ``history``: ``messages`` oldest first; ``more`` if older ones exist."""

    messages: tuple[Msg, ...]
    more: bool


class _Waiter(Generic[_T]):
    """A one-shot slot a task waits on until another task fills it with a value or error."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._value: _T | None = None
        self._error: BaseException | None = None

    def set(self, value: _T) -> None:
        if not self._done.is_set():
            self._value = value
            self._done.set()

    def fail(self, error: BaseException) -> None:
        if not self._done.is_set():
            self._error = error
            self._done.set()

    async def wait(self) -> _T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


class Client:
    """A device's connection to a chat node that survives disconnects.

    ``Client(url, token=..., device=...)`` dials ``url``; pass ``transport=`` instead to
    supply connections yourself (the simulator does).

    Tokens expire. With ``token_provider`` (an async callable returning a fresh token) the
    client survives that: when the node closes with 4401 ("token expired", at the token's
    expiry or at a reconnect after it) it awaits the provider and reconnects with the new
    token. A 4401 for a token the provider has just given, before any ``welcome``, is final
    (the provider's tokens are refused: reconnecting would loop), as is every 4401 without
    a provider; a provider that raises stops the client (:class:`ClientClosed`, 4401).

    ``async with`` starts it; it connects, reconnects with jittered exponential backoff
    (``backoff_base_s`` doubling up to ``backoff_max_s``) and keeps the connection alive
    with WebSocket pings every half ``heartbeat_s``; a connection whose pong does not come
    back within ``heartbeat_s`` is dropped and redialled.

    Every request helper (:meth:`history`, :meth:`convs`, ``group_*``) fails with
    :class:`RequestTimeout` when no usable reply came within ``request_timeout_s``, whether
    the node is unreachable, slow, or sent a reply that cannot be decoded (that one fails
    at once with :class:`RequestError` ``bad_frame``); none of them waits forever.

    Events are delivered on :meth:`events` through a buffer of ``event_buffer``; when the
    buffer is full the reader waits (backpressure), so read events from a task that does
    not itself wait on :meth:`send`. ``keep_events=False`` discards them (load generators).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str,
        device: str,
        token_provider: TokenProvider | None = None,
        transport: Transport | None = None,
        rng: random.Random | None = None,
        recv_delay_s: float = 0.05,
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 10.0,
        welcome_timeout_s: float = 15.0,
        request_timeout_s: float = 30.0,
        event_buffer: int = 1024,
        keep_events: bool = True,
    ) -> None:
        if transport is None:
            if url is None:
                raise ValueError("Client needs a url or a transport")
            transport = websocket_transport(url)
        rng = rng if rng is not None else random.Random()
        self._session = ClientSession(
            token=token,
            device=device,
            rng=rng,
            recv_delay_s=recv_delay_s,
            request_timeout_s=request_timeout_s,
        )
        self._link = Link(
            self._session,
            transport,
            rng,
            token_provider=token_provider,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            welcome_timeout_s=welcome_timeout_s,
            dispatch=self._dispatch,
            publish=self._publish,
            stopped=lambda: self._stopped is not None,
        )
        self._request_timeout_s = request_timeout_s
        self._keep_events = keep_events
        # Events taken from the session but not yet handed to the application: kept here so a
        # cancellation while publishing (the reader's connection dropped) loses none of them.
        self._unpublished: deque[ClientEvent] = deque()
        self._events_send, self._events_receive = trio.open_memory_channel[ClientEvent](
            event_buffer
        )
        self._send_waiters: dict[str, _Waiter[Ack]] = {}
        self._request_waiters: dict[str, _Waiter[RequestCompleted | RequestFailed]] = {}
        # Held while moving events from the session to the application, so the reader and
        # the writer (whose ticks can expire requests) publish in order, each event once.
        self._dispatching = trio.Lock()
        self._state_changed = trio.Event()
        self._stopped: ClientClosed | None = None
        self._run_scope = trio.CancelScope()
        self._stack = AsyncExitStack()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Client:
        nursery = await self._stack.enter_async_context(trio.open_nursery())
        nursery.start_soon(self._run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            await self.aclose()
        except BaseException as error:
            # The goodbye was cut short (say the scope around the client was cancelled):
            # aclose has stopped the tasks all the same; exit the nursery with that error.
            if not await self._stack.__aexit__(type(error), error, error.__traceback__):
                raise
            return False
        return await self._stack.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Flush ``recv`` reports, close the connection and stop. Idempotent.

        The polite part (flushing, the close handshake) may be cut short by a cancellation;
        the tasks are stopped and every waiter failed regardless.
        """
        if self._stopped is not None:
            self._finish()
            return
        self._stopped = ClientClosed("the client was closed")
        try:
            await self._link.goodbye()
        finally:
            self._finish()

    def _finish(self) -> None:
        assert self._stopped is not None
        self._run_scope.cancel()
        for send_waiter in self._send_waiters.values():
            send_waiter.fail(self._stopped)
        for request_waiter in self._request_waiters.values():
            request_waiter.fail(self._stopped)
        self._send_waiters.clear()
        self._request_waiters.clear()
        self._events_send.close()
        self._state_changed.set()

    # ------------------------------------------------------------------ introspection

    @property
    def session(self) -> ClientSession:
        """The protocol state (read it; drive it only through this client)."""
        return self._session

    @property
    def state(self) -> ClientState:
        return self._session.state

    @property
    def user(self) -> str | None:
        return self._session.user

    @property
    def stopped(self) -> ClientClosed | None:
        """Why the client stopped for good, or None while it runs."""
        return self._stopped

    def events(self) -> trio.MemoryReceiveChannel[ClientEvent]:
        """The events, in order (one consumer). Iteration ends when the client stops."""
        return self._events_receive

    async def wait_synced(self) -> None:
        """Wait until the session is synced (raises :class:`ClientClosed` if it stops)."""
        while self._session.state is not ClientState.SYNCED:
            self._check_running()
            await self._state_changed.wait()

    # ------------------------------------------------------------------ sending

    async def send(self, body: str, *, conv: str | None = None, to: str | None = None) -> Ack:
        """Send a message and wait for its ``ack``, across any number of reconnects.

        Raises :class:`SendRefused` for a ``nack`` that will not succeed on retry,
        :class:`ClientClosed` if the client stops first."""
        cmid = self.send_nowait(body, conv=conv, to=to)
        waiter = self._send_waiters[cmid] = _Waiter()
        return await waiter.wait()

    def send_nowait(self, body: str, *, conv: str | None = None, to: str | None = None) -> str:
        """Queue a message and return its ``cmid``; its ``Acked``/``SendFailed`` arrives on
        :meth:`events`."""
        self._check_running()
        cmid = self._session.send(body, conv=conv, to=to)
        self._kick()
        return cmid

    def mark_read(self, conv: str, seq: int) -> None:
        """Tell the node (and so the other members) we have read ``conv`` up to ``seq``."""
        self._check_running()
        self._session.mark_read(conv, seq)
        self._kick()

    def typing(self, conv: str) -> None:
        """Tell the other members we are typing (dropped while disconnected)."""
        self._check_running()
        self._session.typing(conv)
        self._kick()

    # ------------------------------------------------------------------ requests

    async def history(
        self, conv: str, *, before: int | None = None, limit: int = 50
    ) -> HistoryPage:
        """The newest ``limit`` messages of ``conv`` below seq ``before``."""
        result = await self._request(History(conv=conv, before=before, limit=limit), retry=True)
        return HistoryPage(messages=history_messages(result), more=bool(result.get("more")))

    async def convs(self) -> tuple[ConvRow, ...]:
        """All our conversations with their watermarks and unread counts, latest activity
        first: the node's pages, followed by their cursors (each page its own request)."""
        rows: list[ConvRow] = []
        cursor: str | None = None
        while True:
            result = await self._request(Convs(cursor=cursor), retry=True)
            page = result.get("convs", ())
            rows += [row for row in page if isinstance(row, ConvRow)]
            following = result.get("cursor")
            if not result.get("more") or not isinstance(following, str) or not page:
                return tuple(rows)
            cursor = following

    async def group_create(self, title: str, members: list[str] | tuple[str, ...]) -> str:
        """Create a group; returns its conversation id. Not repeated after a drop
        (raises :class:`RequestInterrupted`): a second try could create a second group."""
        result = await self._request(GroupCreate(title=title, members=tuple(members)), retry=False)
        conv = result.get("conv")
        if not isinstance(conv, str):
            raise RemoteProtocolError(ErrorCode.BAD_FRAME, "group_create result carries no 'conv'")
        return conv

    async def group_add(self, conv: str, user: str) -> None:
        """Add ``user`` to group ``conv`` (idempotent, so repeated across drops)."""
        await self._request(GroupAdd(conv=conv, user=user), retry=True)

    async def group_remove(self, conv: str, user: str) -> None:
        """Remove ``user`` from group ``conv`` (creator only)."""
        await self._request(GroupRemove(conv=conv, user=user), retry=False)

    async def group_leave(self, conv: str) -> None:
        """Leave group ``conv``."""
        await self._request(GroupLeave(conv=conv), retry=False)

    def presence_sub(self, users: list[str] | tuple[str, ...]) -> str:
        """Follow the presence of ``users`` (kept across reconnects); returns the rid a
        ``forbidden`` error would carry as a :class:`~protocol.RequestFailed` event."""
        self._check_running()
        rid = self._session.request(PresenceSub(users=tuple(users)))
        self._kick()
        return rid

    def presence_unsub(self, users: list[str] | tuple[str, ...]) -> None:
        """Stop following the presence of ``users``."""
        self._check_running()
        self._session.request(PresenceUnsub(users=tuple(users)))
        self._kick()

    async def _request(self, frame: RequestFrame, *, retry: bool) -> Result:
        timeout = self._request_timeout_s
        with trio.move_on_after(timeout):
            while True:
                self._check_running()
                rid = self._session.request(frame)
                waiter: _Waiter[RequestCompleted | RequestFailed] = _Waiter()
                self._request_waiters[rid] = waiter
                self._kick()
                try:
                    outcome = await waiter.wait()
                finally:
                    self._request_waiters.pop(rid, None)
                if isinstance(outcome, RequestCompleted):
                    return outcome.result
                if outcome.error is not None:
                    raise RequestError(outcome.error)
                if outcome.timed_out:
                    break
                if not retry:
                    raise RequestInterrupted(f"the connection dropped during {frame.TYPE}")
        self._session.abandon_request(rid)
        raise RequestTimeout(f"no reply to {frame.TYPE} within {timeout} s")

    # ------------------------------------------------------------------ connection loop

    async def _run(self) -> None:
        with self._run_scope:
            reason = await self._link.run()
            if reason is not None:
                self._stopped = reason
                self._finish()

    def _kick(self) -> None:
        self._link.kick()

    # ------------------------------------------------------------------ events

    async def _dispatch(self) -> None:
        """Act on the session's new events, then publish them (and any left over by a
        dispatch that was cancelled while publishing) to the application, in order."""
        async with self._dispatching:
            await self._dispatch_locked()

    async def _dispatch_locked(self) -> None:
        for event in self._session.next_events():
            match event:
                case Acked(cmid=cmid, ack=ack):
                    self._resolve_send(cmid, ack=ack)
                case SendFailed(cmid=cmid, nack=nack):
                    self._resolve_send(cmid, error=SendRefused(nack))
                case RequestCompleted(rid=rid) | RequestFailed(rid=rid) if (
                    rid in self._request_waiters
                ):
                    self._request_waiters.pop(rid).set(event)
                    continue
                case StateChanged(state=state):
                    if state is ClientState.OPEN:
                        self._link.opened()
                    self._state_changed.set()
                    self._state_changed = trio.Event()
            self._unpublished.append(event)
        while self._unpublished:
            await self._publish(self._unpublished[0])
            self._unpublished.popleft()  # only once sent: a cancelled send did not happen

    def _resolve_send(
        self, cmid: str, *, ack: Ack | None = None, error: SendRefused | None = None
    ) -> None:
        waiter = self._send_waiters.pop(cmid, None)
        if waiter is None:
            return
        if ack is not None:
            waiter.set(ack)
        elif error is not None:
            waiter.fail(error)

    async def _publish(self, event: ClientEvent) -> None:
        if self._keep_events:
            with suppress(trio.ClosedResourceError):
                await self._events_send.send(event)

    def _check_running(self) -> None:
        if self._stopped is not None:
            raise self._stopped
