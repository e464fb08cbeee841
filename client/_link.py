"""A :class:`~client.Client`'s connection loop: one connection at a time, redialled.

Ownership: a :class:`Link` owns the WebSocket. Per connection it runs a reader, a writer
and a keep-alive task, and only those touch the socket; the client only touches the session
(plain data, and trio is single-threaded) and then :meth:`~Link.kick`\\ s the writer. When a
connection ends the link tells the session, backs off (jittered, exponential) and dials
again; after a 4401 it first asks the token provider for a fresh token. It stops for good
on a close code after which reconnecting cannot help, and returns why.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Final

import attrs
import trio
import trio_websocket

from protocol import (
    ClientSession,
    ClientState,
    CloseCode,
    Event,
    RemoteProtocolError,
    jittered_backoff,
)

from ._errors import ClientClosed
from ._transport import Transport, TransportError, WebSocketLike

_log = logging.getLogger("messenger.client")

#: Close codes after which reconnecting cannot help: bad token, a bug of ours, or another
#: connection of this very device took over (fighting it would loop forever).
FATAL_CLOSE_CODES: Final = frozenset(
    {CloseCode.BAD_FRAME, CloseCode.UNAUTHENTICATED, CloseCode.REPLACED}
)

_CONNECTION_ERRORS: Final = (
    trio_websocket.ConnectionClosed,
    trio_websocket.HandshakeError,
    TransportError,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)

_CONNECTED: Final = frozenset({ClientState.CONNECTING, ClientState.OPEN, ClientState.SYNCED})

_ConnTask = Callable[[WebSocketLike], Awaitable[None]]
#: Returns a fresh access token for this client's user (see :class:`~client.Client`).
TokenProvider = Callable[[], Awaitable[str]]


@attrs.frozen(kw_only=True)
class Reconnecting:
    """The connection is down; the next attempt (``attempt`` in a row) is in ``delay_s``."""

    attempt: int
    delay_s: float
    close_code: int | None
    reason: str


ClientEvent = Event | Reconnecting


class Link:
    """Connects ``session`` through ``transport`` until the node ends it for good or the
    owner stops. ``dispatch`` moves the session's new events to the owner; ``publish``
    hands the owner's application one event; ``stopped`` says whether the owner stopped."""

    def __init__(
        self,
        session: ClientSession,
        transport: Transport,
        rng: random.Random,
        *,
        token_provider: TokenProvider | None,
        backoff_base_s: float,
        backoff_max_s: float,
        welcome_timeout_s: float,
        dispatch: Callable[[], Awaitable[None]],
        publish: Callable[[ClientEvent], Awaitable[None]],
        stopped: Callable[[], bool],
    ) -> None:
        self._session = session
        self._transport = transport
        self._rng = rng
        self._token_provider = token_provider
        # True while the session's token came from the provider and no welcome followed yet.
        self._token_fresh = False
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._welcome_timeout_s = welcome_timeout_s
        self._dispatch = dispatch
        self._publish = publish
        self._stopped = stopped
        self._wakeup = trio.Event()
        self._idle = trio.Event()
        self._conn_open = trio.Event()
        self._ws: WebSocketLike | None = None
        self._close_code: int | None = None
        self._close_reason = ""

    def kick(self) -> None:
        """Wake the writer: the session may have something to send."""
        self._wakeup.set()

    def opened(self) -> None:
        """The session got its ``welcome`` on the current connection."""
        self._conn_open.set()

    async def goodbye(self) -> None:
        """Flush ``recv`` reports and close the connection, each bounded by one second."""
        ws = self._ws
        if ws is not None and self._session.is_open:
            self._session.flush_recv()
            self._idle = trio.Event()
            self.kick()
            with trio.move_on_after(1.0):
                await self._idle.wait()
        if ws is not None:
            with trio.move_on_after(1.0):
                await ws.aclose()

    async def run(self) -> ClientClosed | None:
        """Connect and reconnect; returns why the node ended the session for good, or None
        when the owner stopped."""
        attempt = 0
        while True:
            reached_open = await self._connect_once()
            if reached_open:
                self._token_fresh = False
            if self._stopped():
                return None
            code, reason = self._close_code, self._close_reason
            if self._session.state in _CONNECTED:
                self._session.connection_lost(code, reason)
            await self._dispatch()
            if code == CloseCode.UNAUTHENTICATED and self._can_renew():
                failure = await self._renew_token()
                if failure is not None:
                    return failure
                attempt = 0
                continue
            if code in FATAL_CLOSE_CODES:
                return ClientClosed(
                    f"the node closed the session for good ({code}: {reason})", code
                )
            attempt = 1 if reached_open else attempt + 1
            delay = self._backoff(attempt)
            await self._publish(
                Reconnecting(attempt=attempt, delay_s=delay, close_code=code, reason=reason)
            )
            await trio.sleep(delay)

    def _can_renew(self) -> bool:
        """A refused token is worth replacing: there is a provider and it was not the
        provider's latest token that was refused before any welcome."""
        return self._token_provider is not None and not self._token_fresh

    async def _renew_token(self) -> ClientClosed | None:
        """Get a fresh token from the provider; why the client must stop if that fails."""
        assert self._token_provider is not None
        try:
            token = await self._token_provider()
        except Exception as exc:
            return ClientClosed(f"could not get a fresh token: {exc}", CloseCode.UNAUTHENTICATED)
        self._session.renew_token(token)
        self._token_fresh = True
        return None

    def _backoff(self, attempt: int) -> float:
        return jittered_backoff(
            attempt, base_s=self._backoff_base_s, max_s=self._backoff_max_s, rng=self._rng
        )

    async def _connect_once(self) -> bool:
        """One connection from dial to drop; returns whether it got a ``welcome``."""
        self._close_code, self._close_reason = None, ""
        self._conn_open = trio.Event()
        try:
            async with self._transport() as ws:
                self._ws = ws
                self._session.connect()
                await self._dispatch()
                async with trio.open_nursery() as nursery:
                    for task in (self._reader, self._writer, self._keepalive):
                        nursery.start_soon(self._guard, task, ws, nursery.cancel_scope)
        except _CONNECTION_ERRORS as exc:
            self._note_close(exc)
        finally:
            self._ws = None
        return self._conn_open.is_set()

    async def _guard(self, task: _ConnTask, ws: WebSocketLike, scope: trio.CancelScope) -> None:
        """Run a per-connection task; when it fails the connection is over for all three."""
        try:
            await task(ws)
        except _CONNECTION_ERRORS as exc:
            self._note_close(exc)
        scope.cancel()

    def _note_close(self, exc: BaseException) -> None:
        if self._close_code is not None or self._close_reason:
            return
        if isinstance(exc, trio_websocket.ConnectionClosed) and exc.reason is not None:
            self._close_code, self._close_reason = exc.reason.code, exc.reason.reason or ""
        elif isinstance(exc, TransportError):
            self._close_code, self._close_reason = exc.code, str(exc)
        else:
            cause = exc.__cause__ or exc
            self._close_reason = str(cause) or type(cause).__name__

    async def _reader(self, ws: WebSocketLike) -> None:
        while True:
            message = await ws.get_message()
            if not isinstance(message, str):
                _log.warning("ignoring a binary frame from the node")
                continue
            try:
                self._session.receive_text(message, trio.current_time())
            except RemoteProtocolError as exc:
                _log.warning("the node broke the protocol: %s", exc)
            await self._dispatch()
            self.kick()

    async def _writer(self, ws: WebSocketLike) -> None:
        while True:
            self._wakeup = trio.Event()
            self._session.tick(trio.current_time())
            await self._dispatch()
            for text in self._session.data_to_send():
                await ws.send_message(text)
            self._idle.set()
            deadline = self._session.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wakeup.wait()

    async def _keepalive(self, ws: WebSocketLike) -> None:
        with trio.move_on_after(self._welcome_timeout_s):
            await self._conn_open.wait()
        welcome = self._session.welcome
        if not self._conn_open.is_set() or welcome is None:
            raise TransportError(f"no welcome within {self._welcome_timeout_s} s")
        heartbeat = welcome.heartbeat_s
        count = 0
        while True:
            await trio.sleep(heartbeat / 2)
            count += 1
            with trio.move_on_after(heartbeat):
                await ws.ping(b"ka%d" % count)
                continue
            raise TransportError(f"no pong within {heartbeat} s")
